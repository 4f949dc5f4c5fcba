// Unary elementwise ops beyond the op registry (tests/opinfo: values, gradchecks, dtypes and
// layouts of every op): analytic gradients, special values and range edges on every kernel
// path, integer and bool inputs, errors.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

const double kPi = 3.14159265358979323846;

double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }

}  // namespace

TEST_CASE("unary ops: analytic gradients at chosen points") {
  Vec xv = {-1.3, -0.4, 0.6, 2.1};
  auto grad_at = [&](const std::function<Tensor(const Tensor&)>& op) {
    Tensor x = ew::leaf_of(xv, {4});
    sum(op(x)).backward();
    return x.grad();
  };
  ew::expect_values(grad_at([](const Tensor& x) { return tanh(x); }),
                    ew::map(xv, [](double x) { return 1 - std::tanh(x) * std::tanh(x); }), 1e-12, 1e-10);
  ew::expect_values(grad_at([](const Tensor& x) { return sigmoid(x); }),
                    ew::map(xv, [](double x) { return sigmoid_ref(x) * (1 - sigmoid_ref(x)); }), 1e-12, 1e-10);
  ew::expect_values(grad_at([](const Tensor& x) { return erf(x); }),
                    ew::map(xv, [](double x) { return 2 / std::sqrt(kPi) * std::exp(-x * x); }), 1e-12, 1e-10);
  ew::expect_values(grad_at([](const Tensor& x) { return silu(x); }),
                    ew::map(xv,
                            [](double x) {
                              double s = sigmoid_ref(x);
                              return s * (1 + x * (1 - s));
                            }),
                    1e-12, 1e-10);
  ew::expect_values(grad_at([](const Tensor& x) { return gelu(x); }),
                    ew::map(xv,
                            [](double x) {
                              return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) +
                                     x * std::exp(-x * x / 2) / std::sqrt(2 * kPi);
                            }),
                    1e-12, 1e-10);
  ew::expect_values(grad_at([](const Tensor& x) { return abs(x); }), {-1, -1, 1, 1});
  ew::expect_values(grad_at([](const Tensor& x) { return relu(x); }), {0, 0, 1, 1});
  ew::expect_values(grad_at([](const Tensor& x) { return sign(x); }), {0, 0, 0, 0});
  ew::expect_values(grad_at([](const Tensor& x) { return square(x); }), {-2.6, -0.8, 1.2, 4.2}, 1e-12);
  ew::expect_values(grad_at([](const Tensor& x) { return sin(x); }), ew::map(xv, [](double x) { return std::cos(x); }),
                    1e-12);
  ew::expect_values(grad_at([](const Tensor& x) { return cos(x); }), ew::map(xv, [](double x) { return -std::sin(x); }),
                    1e-12);
  // clamp: gradient passes where min <= x <= max (bounds included), else 0
  ew::expect_values(grad_at([](const Tensor& x) { return clamp(x, -0.4, 0.6); }), {0, 1, 1, 0});
  ew::expect_values(grad_at([](const Tensor& x) { return clamp_min(x, 0.0); }), {0, 0, 1, 1});
  ew::expect_values(grad_at([](const Tensor& x) { return clamp_max(x, 0.0); }), {1, 1, 0, 0});
  // kinks: abs and relu at 0 get 0, as PyTorch
  Tensor z = ew::leaf_of({0.0, 0.0}, {2});
  sum(abs(z) + relu(z)).backward();
  ew::expect_values(z.grad(), {0, 0});
}

TEST_CASE("unary ops: special values (scalar and vectorized paths)") {
  // Each case is tiled to 40 elements so Eigen's packet code sees the values too.
  auto tile = [](const Vec& v) {
    Vec out;
    for (int k = 0; k < 10; ++k) out.insert(out.end(), v.begin(), v.end());
    return out;
  };
  using Op = std::function<Tensor(const Tensor&)>;
  struct S {
    const char* name;
    Op op;
    Vec in, out;
  };
  const Vec x = {0.0, ew::kInf, -ew::kInf, ew::kNaN};
  std::vector<S> cases = {
      {"exp", [](const Tensor& t) { return exp(t); }, x, {1, ew::kInf, 0, ew::kNaN}},
      {"log", [](const Tensor& t) { return log(t); }, {0.0, -1.0, ew::kInf, 1.0}, {-ew::kInf, ew::kNaN, ew::kInf, 0}},
      {"sqrt", [](const Tensor& t) { return sqrt(t); }, {0.0, -1.0, ew::kInf, 4.0}, {0, ew::kNaN, ew::kInf, 2}},
      {"rsqrt", [](const Tensor& t) { return rsqrt(t); }, {0.0, ew::kInf, 0.25, ew::kNaN}, {ew::kInf, 0, 2, ew::kNaN}},
      {"reciprocal",
       [](const Tensor& t) { return reciprocal(t); },
       {0.0, ew::kInf, -4.0, ew::kNaN},
       {ew::kInf, 0, -0.25, ew::kNaN}},
      {"tanh", [](const Tensor& t) { return tanh(t); }, x, {0, 1, -1, ew::kNaN}},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, {0.0, 1000.0, -1000.0, ew::kNaN}, {0.5, 1, 0, ew::kNaN}},
      {"silu", [](const Tensor& t) { return silu(t); }, {0.0, 1000.0, -1000.0, ew::kNaN}, {0, 1000, 0, ew::kNaN}},
      {"relu", [](const Tensor& t) { return relu(t); }, x, {0, ew::kInf, 0, ew::kNaN}},
      {"abs", [](const Tensor& t) { return abs(t); }, x, {0, ew::kInf, ew::kInf, ew::kNaN}},
      {"sign", [](const Tensor& t) { return sign(t); }, x, {0, 1, -1, ew::kNaN}},
      {"erf", [](const Tensor& t) { return erf(t); }, x, {0, 1, -1, ew::kNaN}},
      {"gelu", [](const Tensor& t) { return gelu(t); }, {0.0, 100.0, -100.0, ew::kNaN}, {0, 100, 0, ew::kNaN}},
      {"gelu_tanh",
       [](const Tensor& t) { return gelu(t, "tanh"); },
       {0.0, 100.0, -100.0, ew::kNaN},
       {0, 100, 0, ew::kNaN}},
      {"clamp", [](const Tensor& t) { return clamp(t, -1.0, 1.0); }, x, {0, 1, -1, ew::kNaN}},
      {"square", [](const Tensor& t) { return square(t); }, x, {0, ew::kInf, ew::kInf, ew::kNaN}},
  };
  for (DType dt : {kFloat32, kFloat64})
    for (auto& c : cases) {
      INFO(std::string(c.name) << " " << dtype_name(dt));
      ew::expect_values(c.op(ew::make(c.in, {4}, dt)), c.out);
      ew::expect_values(c.op(ew::make(tile(c.in), {40}, dt)), tile(c.out));
    }
}

TEST_CASE("unary ops: exact zeros / infinities and subnormals on the vectorized path") {
  // 48 elements: whole packets for float32 and float64.
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    auto exact_impl = [](const char* what, const Tensor& t, double want) {
      std::size_t bad = 0;
      double first = 0;
      for (double v : t.to_vector<double>())
        if (!(v == want) && bad++ == 0) first = v;
      INFO(std::string(what) << ": " << bad << " of " << t.numel() << " wrong, e.g. " << first << " (want " << want
                             << ")");
      CHECK(bad == 0);
    };
#define exact(expr, want) exact_impl(#expr, expr, want)
    // exp underflows to exactly 0 (attention masks and logsumexp rely on exp(-inf) == 0)
    exact(exp(full({48}, -ew::kInf, dt)), 0.0);
    exact(exp(full({48}, -1000.0, dt)), 0.0);
    exact(exp(full({48}, 0.0, dt)), 1.0);
    exact(exp(full({48}, ew::kInf, dt)), ew::kInf);
    exact(sqrt(full({48}, ew::kInf, dt)), ew::kInf);
    exact(sqrt(full({48}, 4.0, dt)), 2.0);
    exact(sqrt(full({48}, 0.0, dt)), 0.0);
    exact(sigmoid(full({48}, -ew::kInf, dt)), 0.0);
    exact(sigmoid(full({48}, ew::kInf, dt)), 1.0);
    exact(tanh(full({48}, ew::kInf, dt)), 1.0);
    exact(rsqrt(full({48}, 0.25, dt)), 2.0);
#undef exact
  }
}

TEST_CASE("sqrt is correctly rounded (IEEE) / as std::sqrt") {
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    Vec x = ew::randvals({4096}, 133, [](double v) { return std::abs(v) * 10; });
    if (dt == kFloat32) x = ew::as_f32(x);
    Vec got = sqrt(ew::make(x, {4096}, dt)).to_vector<double>();
    int bad = 0;
    for (std::size_t k = 0; k < x.size(); ++k) {
      double want = dt == kFloat32 ? double(std::sqrt(float(x[k]))) : std::sqrt(x[k]);
      bad += got[k] != want;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("unary ops: range edges (overflow / underflow / subnormals / large arguments) on every path") {
  // Each value is checked alone on the scalar path and tiled to 48 elements on the packet path.
  auto run = [](const char* name, const std::function<Tensor(const Tensor&)>& op, double (*f)(double), DType dt,
                const Vec& xs) {
    for (double x0 : xs) {
      double x = dt == kFloat32 ? double(float(x0)) : x0;
      double want = f(x);
      if (dt == kFloat32) want = double(float(want));  // what float32 can hold
      for (std::int64_t n : {1, 48}) {
        Vec got = op(full({n}, x, dt)).to_vector<double>();
        INFO(std::string(name) << " " << dtype_name(dt) << " x=" << x << " n=" << n << " got " << got[0] << " want "
                               << want);
        if (std::isinf(want) || want == 0) CHECK(got[n - 1] == want);
        else CHECK(std::abs(got[n - 1] - want) <= std::abs(want) * (dt == kFloat32 ? 1e-6 : 1e-14));
      }
    }
  };
  auto exp_op = [](const Tensor& t) { return exp(t); };
  auto log_op = [](const Tensor& t) { return log(t); };
  auto sqrt_op = [](const Tensor& t) { return sqrt(t); };
  auto rsqrt_op = [](const Tensor& t) { return rsqrt(t); };
  auto sin_op = [](const Tensor& t) { return sin(t); };
  auto cos_op = [](const Tensor& t) { return cos(t); };
  double (*fexp)(double) = std::exp;
  double (*flog)(double) = std::log;
  double (*fsqrt)(double) = std::sqrt;
  double (*frsqrt)(double) = [](double x) { return 1 / std::sqrt(x); };
  double (*fsin)(double) = std::sin;
  double (*fcos)(double) = std::cos;
  run("exp", exp_op, fexp, kFloat64, {-ew::kInf, -1000, -745.5, -740, -720, -708, 700, 709.7, 710, 1000});
  run("exp", exp_op, fexp, kFloat32, {-ew::kInf, -1000, -104, -100, -90, -87, 88, 88.5, 89, 1000});
  run("log", log_op, flog, kFloat64, {1e-310, 4.9e-324, 2.5e-308, 1e308});
  run("log", log_op, flog, kFloat32, {1e-40, 1.4e-45, 1.2e-38, 3e38});
  run("sqrt", sqrt_op, fsqrt, kFloat64, {ew::kInf, 4e-310, 4.9e-324, 2.0, 1e308});
  run("sqrt", sqrt_op, fsqrt, kFloat32, {ew::kInf, 4e-40, 1.4e-45, 2.0, 3e38});
  run("rsqrt", rsqrt_op, frsqrt, kFloat64, {ew::kInf, 0.0, 2.0, 1e300});
  run("rsqrt", rsqrt_op, frsqrt, kFloat32, {ew::kInf, 0.0, 2.0, 1e30});
  run("sin", sin_op, fsin, kFloat64, {1e4, 1e6, 123456.789});
  run("cos", cos_op, fcos, kFloat64, {1e4, 1e6, 123456.789});
  run("sin", sin_op, fsin, kFloat32, {1e4, 1e6, 123456.789});
  run("cos", cos_op, fcos, kFloat32, {1e4, 1e6, 123456.789});
}

TEST_CASE("unary ops on int64 and bool inputs: result dtypes") {
  Tensor i = tensor({-2, 0, 3});
  auto iv = [](const Tensor& t) { return t.to_vector<std::int64_t>(); };
  CHECK(neg(i).dtype() == kInt64);
  CHECK(iv(neg(i)) == std::vector<std::int64_t>{2, 0, -3});
  CHECK(iv(abs(i)) == std::vector<std::int64_t>{2, 0, 3});
  CHECK(abs(i).dtype() == kInt64);
  CHECK(iv(sign(i)) == std::vector<std::int64_t>{-1, 0, 1});
  CHECK(iv(square(i)) == std::vector<std::int64_t>{4, 0, 9});
  CHECK(square(i).dtype() == kInt64);
  CHECK(iv(relu(i)) == std::vector<std::int64_t>{0, 0, 3});
  CHECK(relu(i).dtype() == kInt64);
  // float-valued functions promote integers to float32
  Tensor e = exp(i);
  CHECK(e.dtype() == kFloat32);
  ew::expect_values(e, {std::exp(-2.0), 1, std::exp(3.0)}, 1e-6, 1e-6);
  Tensor s = sqrt(tensor({4, 9}));
  CHECK(s.dtype() == kFloat32);
  ew::expect_values(s, {2, 3});
  CHECK(sigmoid(i).dtype() == kFloat32);
  CHECK(tanh(i).dtype() == kFloat32);
  CHECK(gelu(i).dtype() == kFloat32);
  CHECK(reciprocal(tensor({2, 4})).dtype() == kFloat32);
  ew::expect_values(reciprocal(tensor({2, 4})), {0.5, 0.25});
  CHECK(log(tensor({true, false})).dtype() == kFloat32);
  ew::expect_values(log(tensor({true, false})), {0, -ew::kInf});
  Tensor sq = square(tensor({true, false}));
  CHECK(sq.dtype() == kInt64);
  ew::expect_values(sq, {1, 0});
}

TEST_CASE("clamp on integers and NaN") {
  Tensor i = tensor({-5, 0, 2, 9});
  Tensor ci = clamp(i, -1.0, 3.0);
  CHECK(ci.dtype() == kInt64);
  CHECK(ci.to_vector<std::int64_t>() == std::vector<std::int64_t>{-1, 0, 2, 3});
  Tensor cf = clamp(i, -1.5, 3.5);
  CHECK(cf.dtype() == kFloat32);
  ew::expect_values(cf, {-1.5, 0, 2, 3.5});
  CHECK(clamp_min(i, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 1, 2, 9});
  CHECK(clamp_max(i, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{-5, 0, 1, 1});
  // equal bounds are allowed
  ew::expect_values(clamp(ew::make({-1.0, 2.0}, {2}), 1.0, 1.0), {1, 1});
  ew::expect_values(clamp(ew::make({ew::kNaN, 5.0}, {2}, kFloat32), 0.0, 1.0), {ew::kNaN, 1});
}

TEST_CASE("unary ops: errors name the op and the offending value") {
  Tensor x = zeros({2, 3});
  CHECK_KILN_ERROR(gelu(x, "fast"), "[gelu] approximate must be \"none\" or \"tanh\", got \"fast\"");
  CHECK_KILN_ERROR(gelu(x, ""), "[gelu]");
  CHECK_KILN_ERROR(clamp(x, 2.0, 1.0), "[clamp] min (2) must not exceed max (1)");
  CHECK_KILN_ERROR(clamp(x, 0.5, -0.25), "[clamp] min (0.5) must not exceed max (-0.25)");
  CHECK_KILN_ERROR(clamp(x, std::nullopt, std::nullopt), "[clamp] at least one of min and max");
  CHECK_KILN_ERROR(clamp(tensor({true}), 0.0, 1.0), "[clamp]");
  CHECK_KILN_ERROR(neg(tensor({true, false})), "[neg] negation of a bool tensor");
  CHECK_KILN_ERROR(-tensor({true}), "[neg]");
  CHECK_KILN_ERROR(relu(tensor({true})), "[relu]");
  CHECK_KILN_ERROR(exp(Tensor()), "[exp] input tensor is undefined");
  CHECK_KILN_ERROR(tanh(Tensor()), "[tanh]");
  CHECK_KILN_ERROR(abs(Tensor()), "[abs]");
  CHECK_KILN_ERROR(gelu(Tensor()), "[gelu]");
  CHECK_KILN_ERROR(clamp(Tensor(), 0.0, 1.0), "[clamp]");
}

TEST_CASE("unary ops: second derivatives through create_graph") {
  // d2/dx2 tanh = -2 tanh (1 - tanh^2); d2/dx2 exp = exp; d2/dx2 sigmoid = s(1-s)(1-2s)
  Vec xv = {-0.7, 0.3, 1.1};
  auto second = [&](const std::function<Tensor(const Tensor&)>& op) {
    Tensor x = ew::leaf_of(xv, {3});
    auto g = autograd::grad({sum(op(x))}, {x}, {}, true, true);
    sum(g[0]).backward();
    return x.grad();
  };
  ew::expect_values(second([](const Tensor& x) { return tanh(x); }),
                    ew::map(xv,
                            [](double x) {
                              double t = std::tanh(x);
                              return -2 * t * (1 - t * t);
                            }),
                    1e-12, 1e-10);
  ew::expect_values(second([](const Tensor& x) { return exp(x); }), ew::map(xv, [](double x) { return std::exp(x); }),
                    1e-12, 1e-10);
  ew::expect_values(second([](const Tensor& x) { return sigmoid(x); }),
                    ew::map(xv,
                            [](double x) {
                              double s = sigmoid_ref(x);
                              return s * (1 - s) * (1 - 2 * s);
                            }),
                    1e-12, 1e-10);
}

TEST_CASE("hardswish values and gradient at the kinks follow PyTorch") {
  using namespace kiln;
  Tensor x = tensor(std::vector<double>{-4, -3, -1, 0, 3, 4}).requires_grad_(true);
  Tensor y = hardswish(x);
  std::vector<double> want_y{0, 0, -1.0 / 3, 0, 3, 4};
  auto got_y = y.to_vector<double>();
  for (std::size_t i = 0; i < want_y.size(); ++i) CHECK(got_y[i] == doctest::Approx(want_y[i]).epsilon(1e-15));
  y.sum().backward();
  std::vector<double> want_g{0, -0.5, 1.0 / 6, 0.5, 1.5, 1};
  auto got_g = x.grad().to_vector<double>();
  for (std::size_t i = 0; i < want_g.size(); ++i) CHECK(got_g[i] == doctest::Approx(want_g[i]).epsilon(1e-15));
}
