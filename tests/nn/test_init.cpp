// nn::init: fans, gains, and every initializer's distribution on large tensors, bounds,
// orthogonality, seeded determinism and argument errors.
#include "test_util.hpp"

#include <algorithm>
#include <numbers>

using namespace kiln;
namespace init = kiln::nn::init;

namespace {

struct Moments {
  double mean = 0, var = 0, min = 0, max = 0;
};

Moments moments(const Tensor& t) {
  auto v = t.to_vector<double>();
  Moments m;
  m.min = *std::min_element(v.begin(), v.end());
  m.max = *std::max_element(v.begin(), v.end());
  for (double x : v) m.mean += x;
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= static_cast<double>(v.size() - 1);
  return m;
}

// Sample mean within 6 standard errors of `mean`, sample variance within `rel` of `var`.
void expect_moments(const Tensor& t, double mean, double var, double rel = 0.03) {
  Moments m = moments(t);
  double se = std::sqrt(var / static_cast<double>(t.numel()));
  INFO("mean " << m.mean << " (expected " << mean << "), var " << m.var << " (expected " << var << ")");
  CHECK(std::abs(m.mean - mean) <= 6 * se);
  CHECK(std::abs(m.var - var) <= rel * var);
}

double phi(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2 * std::numbers::pi); }
double Phi(double x) { return 0.5 * std::erfc(-x / std::numbers::sqrt2); }

// Mean and variance of N(mu, s^2) truncated to [a, b].
std::pair<double, double> truncated_moments(double mu, double s, double a, double b) {
  double al = (a - mu) / s, be = (b - mu) / s, z = Phi(be) - Phi(al);
  double d = (phi(al) - phi(be)) / z;
  double mean = mu + s * d;
  double var = s * s * (1 + (al * phi(al) - be * phi(be)) / z - d * d);
  return {mean, var};
}

// max |W W^T - gain^2 I| (rows orthonormal) for a 2-D float tensor.
double orthonormal_rows_error(const Tensor& w, double gain = 1.0) {
  Tensor w64 = w.to(kFloat64);
  Tensor g = matmul(w64, w64.t()) - eye(w.size(0), -1, kFloat64) * (gain * gain);
  return max(g.abs()).item<double>();
}

}  // namespace

TEST_CASE("calculate_fan_in_and_fan_out: 2-D, 3-D and 4-D weights in (out, in, *receptive) layout") {
  CHECK(init::calculate_fan_in_and_fan_out(empty({5, 3})) == std::pair<std::int64_t, std::int64_t>{3, 5});
  CHECK(init::calculate_fan_in_and_fan_out(empty({4, 5, 7})) == std::pair<std::int64_t, std::int64_t>{35, 28});
  CHECK(init::calculate_fan_in_and_fan_out(empty({64, 32, 3, 3})) == std::pair<std::int64_t, std::int64_t>{288, 576});
  CHECK(init::calculate_fan_in_and_fan_out(empty({0, 4})) == std::pair<std::int64_t, std::int64_t>{4, 0});
  CHECK_KILN_ERROR(init::calculate_fan_in_and_fan_out(empty({3})),
                   "[calculate_fan_in_and_fan_out] fan in and fan out need a tensor with at least 2 dims (out, in, "
                   "*receptive), got shape (3,)");
  CHECK_KILN_ERROR(init::calculate_fan_in_and_fan_out(scalar_tensor(1.0)), "got shape ()");
  CHECK_KILN_ERROR(init::xavier_uniform_(empty({7})), "[calculate_fan_in_and_fan_out]");
  CHECK_KILN_ERROR(init::kaiming_normal_(empty({7})), "[calculate_fan_in_and_fan_out]");
}

TEST_CASE("calculate_gain: PyTorch's table") {
  for (const char* f : {"linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"})
    CHECK(init::calculate_gain(f) == 1.0);
  CHECK(init::calculate_gain("tanh") == doctest::Approx(5.0 / 3.0));
  CHECK(init::calculate_gain("relu") == doctest::Approx(std::sqrt(2.0)));
  CHECK(init::calculate_gain("leaky_relu") == doctest::Approx(std::sqrt(2.0 / (1 + 0.01 * 0.01))));
  CHECK(init::calculate_gain("leaky_relu", 0.2) == doctest::Approx(std::sqrt(2.0 / 1.04)));
  CHECK(init::calculate_gain("leaky_relu", std::sqrt(5.0)) == doctest::Approx(std::sqrt(1.0 / 3.0)));
  CHECK(init::calculate_gain("selu") == 0.75);
  CHECK_KILN_ERROR(init::calculate_gain("swish"), "[calculate_gain] unsupported nonlinearity 'swish'; expected one of");
}

TEST_CASE("constant initializers fill in place, on parameters too, any dtype") {
  Tensor w = empty({3, 4}).requires_grad_();  // no NoGradGuard needed by the caller
  init::zeros_(w);
  kt::expect_values(w, std::vector<double>(12, 0.0));
  init::ones_(w);
  kt::expect_values(w, std::vector<double>(12, 1.0));
  Tensor r = init::constant_(w, 0.25);
  CHECK(r.is_same(w));
  kt::expect_values(w, std::vector<double>(12, 0.25));
  CHECK(w.requires_grad());
  CHECK(w.is_leaf());
  Tensor i = empty({3}, kInt64);
  init::constant_(i, 7);
  kt::expect_values(i, {7, 7, 7});
  Tensor e = empty({2, 3});
  init::eye_(e);
  kt::expect_values(e, {1, 0, 0, 0, 1, 0});
  // on a view: only the view's elements change
  Tensor base = zeros({4, 4});
  init::ones_(base.narrow(1, 1, 2));
  kt::expect_values(base.sum({0}), {0, 4, 4, 0});
}

TEST_CASE("uniform_ and normal_: moments and bounds on a large tensor") {
  Generator g(1);
  Tensor t = empty({200000});
  init::uniform_(t, -1.0, 3.0, &g);
  Moments m = moments(t);
  CHECK(m.min >= -1.0);
  CHECK(m.max <= 3.0);
  expect_moments(t, 1.0, 16.0 / 12.0);
  init::normal_(t, 0.5, 2.0, &g);
  expect_moments(t, 0.5, 4.0);
  Tensor d = empty({100000}, kFloat64);
  init::normal_(d, -1.0, 0.1, &g);
  expect_moments(d, -1.0, 0.01);
  // a non-contiguous target
  Tensor wide = zeros({200, 400});
  init::normal_(wide.t(), 0.0, 1.0, &g);
  expect_moments(wide, 0.0, 1.0);
}

TEST_CASE("truncated_normal_: every value in [a, b], moments of the truncated distribution") {
  Generator g(2);
  Tensor t = empty({200000}, kFloat64);
  struct Case {
    double mean, std, a, b;
  };
  for (Case c : {Case{0, 1, -2, 2}, Case{1, 2, -1, 2}, Case{0, 1, 3, 4}, Case{0, 1, -4.5, -3.5},
                 Case{0, 0.02, -0.04, 0.04}, Case{5, 1, -1e9, 1e9}}) {
    INFO("mean " << c.mean << " std " << c.std << " [" << c.a << ", " << c.b << "]");
    init::truncated_normal_(t, c.mean, c.std, c.a, c.b, &g);
    Moments m = moments(t);
    CHECK(m.min >= c.a);
    CHECK(m.max <= c.b);
    auto [mean, var] = truncated_moments(c.mean, c.std, c.a, c.b);
    expect_moments(t, mean, var);
  }
  Tensor f = empty({100000});
  init::trunc_normal_(f, 0.0, 1.0, -1.0, 1.0, &g);
  CHECK(moments(f).min >= -1.0);
  CHECK(moments(f).max <= 1.0);
  init::truncated_normal_(f, 0.0, 0.0, -1.0, 1.0, &g);  // std 0: the mean
  CHECK(moments(f).max == 0.0);
  CHECK_KILN_ERROR(init::truncated_normal_(f, 0.0, 1.0, 1.0, 1.0),
                   "[truncated_normal_] bounds must satisfy a < b, got a=1 b=1");
  CHECK_KILN_ERROR(init::truncated_normal_(f, 0.0, -1.0),
                   "[truncated_normal_] mean must be finite and std finite and >= 0");
}

TEST_CASE("xavier / glorot: variance 2 / (fan_in + fan_out) times gain^2") {
  Generator g(3);
  Tensor w = empty({300, 500});
  init::xavier_uniform_(w, 1.0, &g);
  double r = std::sqrt(6.0 / 800.0);
  CHECK(moments(w).max <= r);
  CHECK(moments(w).min >= -r);
  CHECK(moments(w).max > 0.99 * r);
  expect_moments(w, 0.0, 2.0 / 800.0);
  init::xavier_normal_(w, 2.0, &g);
  expect_moments(w, 0.0, 4.0 * 2.0 / 800.0);
  init::glorot_uniform_(w, 1.0, &g);
  expect_moments(w, 0.0, 2.0 / 800.0);
  init::glorot_normal_(w, 1.0, &g);
  expect_moments(w, 0.0, 2.0 / 800.0);
  Tensor conv = empty({64, 32, 3, 3});  // fan_in 288, fan_out 576
  init::xavier_normal_(conv, 1.0, &g);
  expect_moments(conv, 0.0, 2.0 / (288 + 576));
}

TEST_CASE("kaiming / he: variance gain^2 / fan for each mode and nonlinearity") {
  Generator g(4);
  Tensor w = empty({400, 300});  // fan_in 300, fan_out 400
  init::kaiming_uniform_(w, 0.0, "fan_in", "leaky_relu", &g);
  double bound = std::sqrt(3.0) * std::sqrt(2.0) / std::sqrt(300.0);
  CHECK(moments(w).max <= bound);
  CHECK(moments(w).min >= -bound);
  expect_moments(w, 0.0, 2.0 / 300.0);
  init::kaiming_uniform_(w, std::sqrt(5.0), "fan_in", "leaky_relu", &g);  // nn.Linear's default
  CHECK(moments(w).max <= 1.0 / std::sqrt(300.0));
  expect_moments(w, 0.0, 1.0 / 900.0);
  init::kaiming_normal_(w, 0.0, "fan_out", "relu", &g);
  expect_moments(w, 0.0, 2.0 / 400.0);
  init::kaiming_normal_(w, 0.0, "fan_in", "tanh", &g);
  expect_moments(w, 0.0, 25.0 / 9.0 / 300.0);
  Tensor conv = empty({64, 32, 3, 3});
  init::kaiming_normal_(conv, 0.0, "fan_out", "relu", &g);
  expect_moments(conv, 0.0, 2.0 / 576.0);
  init::kaiming_uniform_(conv, 0.0, "fan_in", "linear", &g);
  expect_moments(conv, 0.0, 1.0 / 288.0);
  CHECK_KILN_ERROR(init::kaiming_uniform_(w, 0.0, "fan_avg"),
                   "[kaiming_uniform_] mode must be 'fan_in' or 'fan_out', got 'fan_avg'");
  CHECK_KILN_ERROR(init::kaiming_normal_(w, 0.0, "in"),
                   "[kaiming_normal_] mode must be 'fan_in' or 'fan_out', got 'in'");
  CHECK_KILN_ERROR(init::kaiming_normal_(w, 0.0, "fan_in", "mish"), "[calculate_gain] unsupported nonlinearity 'mish'");
}

TEST_CASE("lecun and variance_scaling: Flax/Keras variances, truncation within 2 std") {
  Generator g(5);
  Tensor w = empty({300, 500});  // fan_in 500, fan_out 300
  init::lecun_normal_(w, &g);
  expect_moments(w, 0.0, 1.0 / 500.0);
  double lim = 2.0 * std::sqrt(1.0 / 500.0) / 0.87962566103423978;
  CHECK(moments(w).max <= lim);
  CHECK(moments(w).min >= -lim);
  init::lecun_uniform_(w, &g);
  expect_moments(w, 0.0, 1.0 / 500.0);
  CHECK(moments(w).max <= std::sqrt(3.0 / 500.0));
  init::variance_scaling_(w, 2.0, "fan_avg", "untruncated_normal", &g);
  expect_moments(w, 0.0, 2.0 / 400.0);
  init::variance_scaling_(w, 2.0, "fan_avg", "normal", &g);
  expect_moments(w, 0.0, 2.0 / 400.0);
  init::variance_scaling_(w, 0.5, "fan_out", "uniform", &g);
  expect_moments(w, 0.0, 0.5 / 300.0);
  init::variance_scaling_(w, 3.0, "fan_out", "truncated_normal", &g);
  expect_moments(w, 0.0, 3.0 / 300.0);
  Tensor conv = empty({64, 32, 3, 3});
  init::variance_scaling_(conv, 1.0, "fan_in", "truncated_normal", &g);
  expect_moments(conv, 0.0, 1.0 / 288.0);
  CHECK_KILN_ERROR(init::variance_scaling_(w, 1.0, "fan_sum"),
                   "[variance_scaling_] mode must be 'fan_in', 'fan_out' or 'fan_avg', got 'fan_sum'");
  CHECK_KILN_ERROR(init::variance_scaling_(w, 1.0, "fan_in", "cauchy"), "[variance_scaling_] distribution must be");
  CHECK_KILN_ERROR(init::variance_scaling_(w, 0.0), "[variance_scaling_] scale must be positive, got 0");
}

TEST_CASE("orthogonal_: orthonormal rows or columns, N-D flattened, gain") {
  Generator g(6);
  Tensor wide = empty({6, 10});
  init::orthogonal_(wide, 1.0, &g);
  CHECK(orthonormal_rows_error(wide) < 1e-5);
  Tensor tall = empty({10, 6}, kFloat64);
  init::orthogonal_(tall, 1.0, &g);
  CHECK(orthonormal_rows_error(tall.t()) < 1e-12);  // W^T W = I
  Tensor sq = empty({8, 8});
  init::orthogonal_(sq, 2.0, &g);
  CHECK(orthonormal_rows_error(sq, 2.0) < 1e-5);
  CHECK(orthonormal_rows_error(sq.t(), 2.0) < 1e-5);
  Tensor conv = empty({4, 2, 3, 3});
  init::orthogonal_(conv, 1.0, &g);
  CHECK(orthonormal_rows_error(conv.reshape({4, 18})) < 1e-5);
  // the sign correction makes the entries symmetric around 0 (Haar measure): mean ~ 0
  Tensor big = empty({256, 256}, kFloat64);
  init::orthogonal_(big, 1.0, &g);
  expect_moments(big, 0.0, 1.0 / 256.0, 0.05);
  CHECK_KILN_ERROR(init::orthogonal_(empty({5})),
                   "[orthogonal_] only tensors with 2 or more dims are supported, got shape (5,)");
}

TEST_CASE("random initializers: same seed, same values / default generator follows manual_seed") {
  using Init = std::function<void(Tensor, Generator*)>;
  std::vector<std::pair<const char*, Init>> inits = {
      {"uniform_", [](Tensor t, Generator* g) { init::uniform_(t, -1, 1, g); }},
      {"normal_", [](Tensor t, Generator* g) { init::normal_(t, 0, 1, g); }},
      {"truncated_normal_", [](Tensor t, Generator* g) { init::truncated_normal_(t, 0, 1, -2, 2, g); }},
      {"xavier_uniform_", [](Tensor t, Generator* g) { init::xavier_uniform_(t, 1, g); }},
      {"xavier_normal_", [](Tensor t, Generator* g) { init::xavier_normal_(t, 1, g); }},
      {"kaiming_uniform_", [](Tensor t, Generator* g) { init::kaiming_uniform_(t, 0, "fan_in", "relu", g); }},
      {"kaiming_normal_", [](Tensor t, Generator* g) { init::kaiming_normal_(t, 0, "fan_in", "relu", g); }},
      {"lecun_uniform_", [](Tensor t, Generator* g) { init::lecun_uniform_(t, g); }},
      {"lecun_normal_", [](Tensor t, Generator* g) { init::lecun_normal_(t, g); }},
      {"orthogonal_", [](Tensor t, Generator* g) { init::orthogonal_(t, 1, g); }},
      {"variance_scaling_", [](Tensor t, Generator* g) { init::variance_scaling_(t, 1, "fan_avg", "uniform", g); }},
  };
  for (auto& [name, fn] : inits) {
    INFO(name);
    Tensor a = empty({5, 7}), b = empty({5, 7}), c = empty({5, 7});
    Generator g1(42), g2(42), g3(43);
    fn(a, &g1);
    fn(b, &g2);
    fn(c, &g3);
    CHECK(equal(a, b));
    CHECK_FALSE(equal(a, c));
    fn(b, &g2);  // the generator advanced: new values
    CHECK_FALSE(equal(a, b));
    manual_seed(9);
    fn(b, nullptr);
    manual_seed(9);
    fn(c, nullptr);
    CHECK(equal(b, c));
  }
}

TEST_CASE("initializers: argument errors and empty tensors") {
  Tensor i = empty({3, 3}, kInt64);
  CHECK_KILN_ERROR(init::uniform_(i), "[uniform_] expected a floating point tensor, got int64 of shape (3, 3)");
  CHECK_KILN_ERROR(init::normal_(i), "[normal_] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(init::xavier_uniform_(i), "[xavier_uniform_] expected a floating point tensor");
  CHECK_KILN_ERROR(init::orthogonal_(i), "[orthogonal_] expected a floating point tensor");
  CHECK_KILN_ERROR(init::uniform_(empty({2}), 1.0, 0.0), "[uniform_] bounds must be finite with a <= b, got a=1 b=0");
  CHECK_KILN_ERROR(init::normal_(empty({2}), 0.0, -1.0),
                   "[normal_] mean must be finite and std finite and >= 0, got mean=0 std=-1");
  CHECK_KILN_ERROR(init::zeros_(Tensor()), "[zeros_] tensor is undefined");
  CHECK_KILN_ERROR(init::eye_(empty({2, 2, 2})), "[eye_] expected a 2-D tensor, got shape (2, 2, 2)");
  // empty tensors are left alone (no fan errors for (0, 5))
  for (Tensor e : {empty({0, 5}), empty({5, 0, 3})}) {
    CHECK_NOTHROW(init::xavier_uniform_(e));
    CHECK_NOTHROW(init::kaiming_normal_(e));
    CHECK_NOTHROW(init::orthogonal_(e));
    CHECK_NOTHROW(init::variance_scaling_(e));
    CHECK_NOTHROW(init::truncated_normal_(e));
  }
  CHECK_KILN_ERROR(init::kaiming_normal_(empty({0, 5}), 0.0, "bad"), "mode must be");
}
