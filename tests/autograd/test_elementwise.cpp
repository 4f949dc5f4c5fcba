// Binary elementwise ops beyond the op registry (tests/opinfo: values, gradchecks, layouts and
// broadcasting of add / sub / mul / div / pow / maximum / minimum and their operators):
// analytic gradients, integer paths, type promotion, mixed-dtype gradients and error messages.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

using BinFn = std::function<Tensor(const Tensor&, const Tensor&)>;

}  // namespace

TEST_CASE("binary ops: analytic gradients at a point") {
  Vec av = {1.5, -2.0, 0.5}, bv = {0.25, 3.0, -4.0};
  auto run = [&](const BinFn& op, const Vec& ga, const Vec& gb) {
    Tensor a = ew::leaf_of(av, {3}), b = ew::leaf_of(bv, {3});
    sum(op(a, b)).backward();
    ew::expect_values(a.grad(), ga, 1e-12, 1e-12);
    ew::expect_values(b.grad(), gb, 1e-12, 1e-12);
  };
  run([](const Tensor& a, const Tensor& b) { return add(a, b, 2); }, {1, 1, 1}, {2, 2, 2});
  run([](const Tensor& a, const Tensor& b) { return sub(a, b, 0.5); }, {1, 1, 1}, {-0.5, -0.5, -0.5});
  run([](const Tensor& a, const Tensor& b) { return mul(a, b); }, bv, av);
  run([](const Tensor& a, const Tensor& b) { return div(a, b); }, ew::map(bv, [](double b) { return 1 / b; }),
      {-1.5 / (0.25 * 0.25), 2.0 / 9.0, -0.5 / 16.0});
  // pow with positive base: d/da = b a^(b-1), d/db = a^b ln a
  Vec pa = {1.5, 2.0, 0.5};
  Tensor a = ew::leaf_of(pa, {3}), b = ew::leaf_of(bv, {3});
  sum(pow(a, b)).backward();
  Vec ga, gb;
  for (int i = 0; i < 3; ++i) {
    ga.push_back(bv[i] * std::pow(pa[i], bv[i] - 1));
    gb.push_back(std::pow(pa[i], bv[i]) * std::log(pa[i]));
  }
  ew::expect_values(a.grad(), ga, 1e-12, 1e-10);
  ew::expect_values(b.grad(), gb, 1e-12, 1e-10);
}

TEST_CASE("pow: zero base gives a finite exponent gradient") {
  Tensor a = ew::leaf_of({0.0, 2.0}, {2}), b = ew::leaf_of({2.0, 3.0}, {2});
  Tensor y = pow(a, b);
  ew::expect_values(y, {0, 8});
  sum(y).backward();
  ew::expect_values(a.grad(), {0, 12});
  ew::expect_values(b.grad(), {0, 8 * std::log(2.0)});
}

TEST_CASE("pow with a scalar exponent: integer exponents on negative bases are exact") {
  Vec nv = {-2.0, -0.5, 3.0};
  ew::expect_values(pow(ew::make(nv, {3}), 3), {-8, -0.125, 27}, 1e-12);
  ew::expect_values(pow(ew::make(nv, {3}), 2), {4, 0.25, 9}, 1e-12);
  kt::grad_ok([](const std::vector<Tensor>& in) { return pow(in[0], 3); }, {ew::leaf_of(nv, {3})});
}

TEST_CASE("pow on int64: integer exponents stay exact int64 / others promote") {
  Tensor x = tensor({2, -3, 0, 1, 5});
  Tensor y = pow(x, 3);
  CHECK(y.dtype() == kInt64);
  CHECK(y.to_vector<std::int64_t>() == std::vector<std::int64_t>{8, -27, 0, 1, 125});
  // 3^20 does not fit float32's mantissa: checks the integer path
  Tensor big = pow(tensor({3}), 20);
  CHECK(big.dtype() == kInt64);
  CHECK(big.item<std::int64_t>() == 3486784401LL);
  Tensor tt = pow(tensor({2, 3, -2}), tensor({10, 0, 3}));
  CHECK(tt.dtype() == kInt64);
  CHECK(tt.to_vector<std::int64_t>() == std::vector<std::int64_t>{1024, 1, -8});
  Tensor h = pow(tensor({4, 9}), 0.5);
  CHECK(h.dtype() == kFloat32);
  ew::expect_values(h, {2, 3});
  // A negative integer exponent of an integer tensor is an error (as PyTorch); a floating one is float32.
  CHECK_KILN_ERROR(pow(tensor({4, 8}), -1), "[pow] integers to negative integer powers are not allowed");
  Tensor r = pow(tensor({4, 8}), -1.0);
  CHECK(r.dtype() == kFloat32);
  ew::expect_values(r, {0.25, 0.125});
  Tensor b = pow(tensor({true, false}), 2);
  CHECK(b.dtype() == kInt64);
  ew::expect_values(b, {1, 0});
}

TEST_CASE("pow with a scalar base") {
  Vec ev = ew::randvals({2, 3}, 61);
  Tensor y = pow(2.0, ew::make(ev, {2, 3}));
  CHECK(y.dtype() == kFloat64);
  ew::expect_values(y, ew::map(ev, [](double e) { return std::pow(2.0, e); }), 1e-12, 1e-12);
  kt::grad_ok([](const std::vector<Tensor>& in) { return pow(3, in[0]); }, {ew::leaf_of(ev, {2, 3}, true)});
  kt::grad_ok([](const std::vector<Tensor>& in) { return pow(0.5, in[0]); }, {ew::leaf_of({0.3}, {})});
  Tensor yi = pow(2, tensor({0, 3, 10}));
  CHECK(yi.dtype() == kInt64);
  CHECK(yi.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 8, 1024});
}

TEST_CASE("scalar operators: tensor op number and number op tensor") {
  Vec xv = {1.5, -2.0, 4.0};
  Tensor x = ew::make(xv, {3});
  ew::expect_values(x + 2, {3.5, 0, 6});
  ew::expect_values(x - 0.5, {1, -2.5, 3.5});
  ew::expect_values(x * 3, {4.5, -6, 12});
  ew::expect_values(x / 4, {0.375, -0.5, 1});
  ew::expect_values(1 + x, {2.5, -1, 5});
  ew::expect_values(1 - x, {-0.5, 3, -3});
  ew::expect_values(2 * x, {3, -4, 8});
  ew::expect_values(6 / x, {4, -3, 1.5});
  ew::expect_values(-x, {-1.5, 2, -4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return (2.0 - in[0]) * 3 + 1.0 / in[0] - in[0] / 2; },
              {ew::leaf_of(xv, {3}, true)});
}

TEST_CASE("integer and bool arithmetic") {
  Tensor a = tensor({7, -7, 6, 0}), b = tensor({2, 2, -4, 5});
  auto iv = [](const Tensor& t) { return t.to_vector<std::int64_t>(); };
  Tensor s = a + b;
  CHECK(s.dtype() == kInt64);
  CHECK(iv(s) == std::vector<std::int64_t>{9, -5, 2, 5});
  CHECK(iv(a - b) == std::vector<std::int64_t>{5, -9, 10, -5});
  CHECK(iv(a * b) == std::vector<std::int64_t>{14, -14, -24, 0});
  CHECK(iv(add(a, b, 3)) == std::vector<std::int64_t>{13, -1, -6, 15});
  // int / int is true division into float32
  Tensor q = a / b;
  CHECK(q.dtype() == kFloat32);
  ew::expect_values(q, {3.5, -3.5, -1.5, 0});
  Tensor q0 = div(tensor({1, -1}), tensor({0, 0}));
  CHECK(q0.dtype() == kFloat32);
  ew::expect_values(q0, {ew::kInf, -ew::kInf});
  CHECK(div(tensor({1}), tensor({3})).item<float>() == doctest::Approx(1.0 / 3.0).epsilon(1e-7));
  Tensor x = tensor({1, -2, 3});
  CHECK(iv(x + 1) == std::vector<std::int64_t>{2, -1, 4});
  CHECK((x + 1).dtype() == kInt64);
  CHECK((x * 2).dtype() == kInt64);
  CHECK((x * 2.5).dtype() == kFloat32);
  ew::expect_values(x * 2.5, {2.5, -5, 7.5});
  CHECK((x / 2).dtype() == kFloat32);
  ew::expect_values(x / 2, {0.5, -1, 1.5});
  CHECK(iv(-x) == std::vector<std::int64_t>{-1, 2, -3});
  CHECK(iv(maximum(a, b)) == std::vector<std::int64_t>{7, 2, 6, 5});
  CHECK(iv(minimum(a, b)) == std::vector<std::int64_t>{2, -7, -4, 0});

  // bool + bool stays bool (logical or); bool * bool is logical and
  Tensor t = tensor({true, true, false, false}), f = tensor({true, false, true, false});
  Tensor bs = t + f;
  CHECK(bs.dtype() == kBool);
  CHECK(bs.to_vector<bool>() == std::vector<bool>{true, true, true, false});
  Tensor bm = t * f;
  CHECK(bm.dtype() == kBool);
  CHECK(bm.to_vector<bool>() == std::vector<bool>{true, false, false, false});
  Tensor bi = t + tensor({1, 2, 3, 4});
  CHECK(bi.dtype() == kInt64);
  CHECK(iv(bi) == std::vector<std::int64_t>{2, 3, 3, 4});
  CHECK((t + 1).dtype() == kInt64);
  CHECK(iv(t + 1) == std::vector<std::int64_t>{2, 2, 1, 1});
  Tensor bd = t / f;
  CHECK(bd.dtype() == kFloat32);
  ew::expect_values(bd, {1, ew::kInf, 0, ew::kNaN});
}

TEST_CASE("type promotion of mixed dtypes") {
  Tensor f32 = ew::make({1.5, 2.5}, {2}, kFloat32), f64 = ew::make({0.25, 4.0}, {2}), i64 = tensor({3, -1}),
         b = tensor({true, false});
  struct P {
    const char* what;
    Tensor r;
    DType dt;
    Vec v;
  };
  std::vector<P> cases = {
      {"f32+f64", f32 + f64, kFloat64, {1.75, 6.5}},
      {"f64*f32", f64 * f32, kFloat64, {0.375, 10}},
      {"i64+f32", i64 + f32, kFloat32, {4.5, 1.5}},
      {"f32-i64", f32 - i64, kFloat32, {-1.5, 3.5}},
      {"i64*f64", i64 * f64, kFloat64, {0.75, -4}},
      {"b+f32", b + f32, kFloat32, {2.5, 2.5}},
      {"b*i64", b * i64, kInt64, {3, 0}},
      {"i64/f64", i64 / f64, kFloat64, {12, -0.25}},
      {"pow f32^f64", pow(f32, f64), kFloat64, {std::pow(1.5, 0.25), std::pow(2.5, 4.0)}},
      {"pow i64^f32", pow(i64, f32), kFloat32, {std::pow(3.0, 1.5), std::pow(-1.0, 2.5)}},
      {"maximum f32,i64", maximum(f32, i64), kFloat32, {3, 2.5}},
      {"minimum b,f64", minimum(b, f64), kFloat64, {0.25, 0}},
      {"f32*2.0", f32 * 2.0, kFloat32, {3, 5}},
      {"f64+1", f64 + 1, kFloat64, {1.25, 5}},
      {"sub alpha f32", sub(f32, f64, 2), kFloat64, {1.0, -5.5}},
  };
  for (auto& c : cases) {
    INFO(std::string(c.what));
    CHECK(c.r.dtype() == c.dt);
    ew::expect_values(c.r, c.v, 1e-6, 1e-6);
  }
}

TEST_CASE("gradients keep each input's dtype and shape (float32 with float64)") {
  using Op = std::function<Tensor(const Tensor&, const Tensor&)>;
  std::vector<std::pair<const char*, Op>> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return a + b; }},
      {"add_alpha", [](const Tensor& a, const Tensor& b) { return add(a, b, 3); }},
      {"sub", [](const Tensor& a, const Tensor& b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return a / b; }},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }},
      {"where",
       [](const Tensor& a, const Tensor& b) {
         return where(tensor({true, false, true}), a, b);
       }},
  };
  Vec av = {1.5, 0.5, 2.0, 0.75, 1.25, 3.0}, bv = {0.6, 1.1, 1.9};
  for (auto& [name, op] : ops) {
    INFO(std::string(name));
    Tensor a = ew::make(av, {2, 3}, kFloat32).requires_grad_();
    Tensor b = ew::make(bv, {3}).requires_grad_();
    Tensor y = op(a, b);
    CHECK(y.dtype() == kFloat64);
    sum(y).backward();
    REQUIRE(a.grad().defined());
    REQUIRE(b.grad().defined());
    CHECK(a.grad().dtype() == kFloat32);
    CHECK(b.grad().dtype() == kFloat64);
    kt::expect_shape(a.grad(), {2, 3});
    kt::expect_shape(b.grad(), {3});
  }
  // The values, for mul: a.grad = b broadcast, b.grad = column sums of a (in float32 precision).
  Tensor a = ew::make(av, {2, 3}, kFloat32).requires_grad_();
  Tensor b = ew::make(bv, {3}).requires_grad_();
  sum(a * b).backward();
  ew::expect_values(a.grad(), ew::as_f32({0.6, 1.1, 1.9, 0.6, 1.1, 1.9}), 1e-7);
  ew::expect_values(b.grad(), {2.25, 1.75, 5.0}, 1e-6);
  // an int64 operand gets no gradient, the float one gets its own dtype
  Tensor c = ew::make({1.0, 2.0}, {2}, kFloat32).requires_grad_();
  sum(c * tensor({3, 4})).backward();
  CHECK(c.grad().dtype() == kFloat32);
  ew::expect_values(c.grad(), {3, 4});
}

TEST_CASE("gradients accumulate across uses and backward calls") {
  Tensor x = ew::leaf_of({1.0, -2.0, 3.0}, {3});
  sum(x * x + x).backward();
  ew::expect_values(x.grad(), {3, -3, 7});
  sum(x * 2).backward();
  ew::expect_values(x.grad(), {5, -1, 9});
}

TEST_CASE("maximum/minimum: ties split the gradient evenly / NaN propagates") {
  Tensor a = ew::leaf_of({1.0, 2.0, 3.0, -1.0}, {4}), b = ew::leaf_of({1.0, 0.0, 5.0, -1.0}, {4});
  Tensor y = maximum(a, b);
  ew::expect_values(y, {1, 2, 5, -1});
  sum(y).backward();
  ew::expect_values(a.grad(), {0.5, 1, 0, 0.5});
  ew::expect_values(b.grad(), {0.5, 0, 1, 0.5});
  Tensor c = ew::leaf_of({1.0, 2.0, 3.0, -1.0}, {4}), d = ew::leaf_of({1.0, 0.0, 5.0, -1.0}, {4});
  Tensor z = minimum(c, d);
  ew::expect_values(z, {1, 0, 3, -1});
  sum(z).backward();
  ew::expect_values(c.grad(), {0.5, 0, 1, 0.5});
  ew::expect_values(d.grad(), {0.5, 1, 0, 0.5});
  // broadcast tie: a 0-D operand equal to two elements collects half of each
  Tensor s = ew::leaf_of({2.0}, {}), v = ew::leaf_of({2.0, 2.0, 1.0}, {3});
  sum(maximum(s, v)).backward();
  ew::expect_values(s.grad(), {2.0});
  ew::expect_values(v.grad(), {0.5, 0.5, 0});

  for (DType dt : {kFloat32, kFloat64}) {
    Tensor p = ew::make({ew::kNaN, 1.0, ew::kNaN, 2.0}, {4}, dt), q = ew::make({0.0, ew::kNaN, ew::kNaN, 1.0}, {4}, dt);
    ew::expect_values(maximum(p, q), {ew::kNaN, ew::kNaN, ew::kNaN, 2});
    ew::expect_values(minimum(p, q), {ew::kNaN, ew::kNaN, ew::kNaN, 1});
    ew::expect_values(maximum(q, p), {ew::kNaN, ew::kNaN, ew::kNaN, 2});
    ew::expect_values(minimum(q, p), {ew::kNaN, ew::kNaN, ew::kNaN, 1});
  }
}

TEST_CASE("binary ops name themselves and the shapes on broadcast mismatch") {
  Tensor a = zeros({2, 3}), b = zeros({4});
  CHECK_KILN_ERROR(add(a, b), "[add] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(a + b, "[add] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(add(a, b, 2), "shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(sub(a, b), "[sub] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(mul(a, b), "[mul] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(div(a, b), "[div] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(pow(a, b), "[pow] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(maximum(a, b), "[maximum] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(minimum(a, b), "[minimum] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(add(zeros({2, 3, 4}), zeros({3, 1, 5})), "[add] shapes (2, 3, 4) and (3, 1, 5) cannot be broadcast");
  CHECK_KILN_ERROR(add(zeros({0, 3}), zeros({2, 3})), "[add] shapes (0, 3) and (2, 3) cannot be broadcast");
  CHECK_KILN_ERROR(sub(tensor({true}), tensor({false})), "[sub] subtraction with a bool tensor (bool - bool)");
  CHECK_KILN_ERROR(add(Tensor(), a), "[add] input tensor is undefined");
  CHECK_KILN_ERROR(mul(a, Tensor()), "[mul] input tensor is undefined");
}
