// where, masked_fill, comparisons and their operators, logical ops, isnan/isfinite,
// allclose and equal.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

std::vector<bool> bools(const Tensor& t) {
  REQUIRE(t.dtype() == kBool);
  return t.to_vector<bool>();
}

// A bool tensor of `shape` with a fixed pattern (never all true or all false for numel > 1).
Tensor mask_of(const Shape& shape, int phase = 0) {
  std::int64_t n = numel_of(shape);
  Vec v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[i] = ((i + phase) % 3) != 1 ? 1.0 : 0.0;
  return ew::make(v, shape, kBool);
}

}  // namespace

TEST_CASE("where: values with broadcast condition and operands") {
  struct C {
    Shape c, a, b;
  };
  for (const C& s : {C{{2, 3}, {2, 3}, {2, 3}}, C{{2, 1, 3}, {4, 1}, {3}}, C{{3}, {2, 3}, {}}, C{{}, {2}, {2}},
                     C{{}, {}, {}}, C{{0, 3}, {3}, {1, 3}}}) {
    INFO(shape_str(s.c) << " " << shape_str(s.a) << " " << shape_str(s.b));
    Tensor cond = mask_of(s.c);
    Vec cv = cond.to_vector<double>();
    Vec av = ew::randvals(s.a, 201), bv = ew::randvals(s.b, 202);
    Tensor y = where(cond, ew::make(av, s.a), ew::make(bv, s.b));
    Shape so = ew::bshape(ew::bshape(s.c, s.a), s.b);
    kt::expect_shape(y, so);
    Vec expect;
    for (std::int64_t i = 0; i < numel_of(so); ++i)
      expect.push_back(cv[ew::bindex(i, so, s.c)] != 0 ? av[ew::bindex(i, so, s.a)] : bv[ew::bindex(i, so, s.b)]);
    ew::expect_values(y, expect, 0, 0);
  }
  // non-contiguous condition and operands
  Tensor cond = mask_of({3, 2}).t();
  Tensor a = ew::make(ew::randvals({2, 6}, 203), {2, 6}).slice(1, 0, 6, 2);
  Tensor b = ew::make(ew::randvals({3, 2}, 204), {3, 2}).t();
  Vec cv = cond.contiguous().to_vector<double>(), av = a.contiguous().to_vector<double>(),
      bv = b.contiguous().to_vector<double>();
  Vec expect;
  for (int i = 0; i < 6; ++i) expect.push_back(cv[i] != 0 ? av[i] : bv[i]);
  ew::expect_values(where(cond, a, b), expect, 0, 0);
}

TEST_CASE("where: scalar forms and dtype promotion") {
  Tensor cond = tensor({true, false, true});
  Tensor a = ew::make({1.5, 2.5, 3.5}, {3}, kFloat32);
  Tensor y = where(cond, a, 0.0);
  CHECK(y.dtype() == kFloat32);
  ew::expect_values(y, {1.5, 0, 3.5});
  Tensor z = where(cond, -1, a);
  CHECK(z.dtype() == kFloat32);
  ew::expect_values(z, {-1, 2.5, -1});
  Tensor i = tensor({1, 2, 3});
  Tensor wi = where(cond, i, 7);
  CHECK(wi.dtype() == kInt64);
  CHECK(wi.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 7, 3});
  Tensor wf = where(cond, i, 0.5);
  CHECK(wf.dtype() == kFloat32);
  ew::expect_values(wf, {1, 0.5, 3});
  Tensor m = where(cond, i, a);
  CHECK(m.dtype() == kFloat32);
  ew::expect_values(m, {1, 2.5, 3});
  Tensor m64 = where(cond, a, ew::make({9.0, 8.0, 7.0}, {3}));
  CHECK(m64.dtype() == kFloat64);
  ew::expect_values(m64, {1.5, 8, 3.5});
  Tensor bb = where(cond, tensor({false, false, false}), tensor({true, true, true}));
  CHECK(bool(bb.dtype() == kBool));
  CHECK(bools(bb) == std::vector<bool>{false, true, false});
}

TEST_CASE("where: gradcheck on broadcast / non-contiguous / scalar-form / 0-D and size-0 inputs") {
  Tensor c1 = mask_of({2, 1, 3});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c1, in[0], in[1]); },
              {ew::leaf_of(ew::randvals({4, 1}, 211), {4, 1}), ew::leaf_of(ew::randvals({3}, 212), {3})});
  Tensor c2 = mask_of({2, 3});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c2, in[0], in[1]); },
              {ew::leaf_of(ew::randvals({2, 3}, 213), {2, 3}, true),
               ew::leaf_of(ew::randvals({2, 3}, 214), {2, 3}, true)});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c2, in[0], 0.25); },
              {ew::leaf_of(ew::randvals({2, 3}, 215), {2, 3}, true)});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c2, -2, in[0]); },
              {ew::leaf_of(ew::randvals({3}, 216), {3})});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c2, in[0], in[1]); },
              {ew::leaf_of({0.5}, {}), ew::leaf_of({-1.5}, {})});
  Tensor c0 = tensor({true}).reshape({});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return where(c0, in[0], in[1]); },
              {ew::leaf_of({0.5}, {}), ew::leaf_of({-1.5}, {})});
  // gradients route by the condition
  Tensor a = ew::leaf_of({1, 2, 3, 4, 5, 6}, {2, 3}), b = ew::leaf_of({1, 1, 1}, {3});
  sum(where(c2, a, b)).backward();
  Vec cv = c2.to_vector<double>();
  ew::expect_values(a.grad(), cv);
  ew::expect_values(b.grad(), {(1 - cv[0]) + (1 - cv[3]), (1 - cv[1]) + (1 - cv[4]), (1 - cv[2]) + (1 - cv[5])});
  // size-0
  Tensor ce = mask_of({0, 3});
  Tensor ea = ew::leaf_of({}, {0, 3}), eb = ew::leaf_of({1, 2, 3}, {3});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return sum(where(ce, in[0], in[1])); }, {ea, eb});
  sum(where(ce, ea, eb)).backward();
  kt::expect_shape(ea.grad(), {0, 3});
  ew::expect_values(eb.grad(), {0, 0, 0});
}

TEST_CASE("where and masked_fill: errors") {
  Tensor x = zeros({2, 3});
  CHECK_KILN_ERROR(where(zeros({2, 3}), x, x), "[where] condition must be a bool tensor, got float32");
  CHECK_KILN_ERROR(where(tensor({1, 0, 1}), x, x), "[where] condition must be a bool tensor, got int64");
  CHECK_KILN_ERROR(where(tensor({true, false}), x, x), "[where] shapes (2,) and (2, 3) cannot be broadcast");
  CHECK_KILN_ERROR(where(mask_of({2, 3}), x, zeros({4})), "[where] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(where(Tensor(), x, x), "[where] condition tensor is undefined");
  CHECK_KILN_ERROR(masked_fill(zeros({3}), mask_of({2, 3}), 0.0),
                   "[masked_fill] mask of shape (2, 3) cannot be broadcast to the input's shape (3,)");
  CHECK_KILN_ERROR(masked_fill(zeros({2, 1}), mask_of({2, 3}), 0.0),
                   "[masked_fill] mask of shape (2, 3) cannot be broadcast to the input's shape (2, 1)");
  CHECK_KILN_ERROR(masked_fill(x, zeros({2, 3}), 0.0), "[masked_fill] mask must be a bool tensor, got float32");
  CHECK_KILN_ERROR(masked_fill(x, mask_of({4}), 0.0), "[masked_fill] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(masked_fill(tensor({1, 2}), tensor({true, false}), 0.5), "[masked_fill] cannot fill a int64 tensor");
}

TEST_CASE("masked_fill: values / broadcast mask / -inf fill / dtype kept and gradient") {
  Vec xv = ew::randvals({2, 3}, 221);
  Tensor m = tensor({true, false, true});  // broadcasts over rows
  Tensor y = masked_fill(ew::make(xv, {2, 3}, kFloat32), m, -ew::kInf);
  CHECK(y.dtype() == kFloat32);
  kt::expect_shape(y, {2, 3});
  ew::expect_values(y, ew::as_f32({-ew::kInf, xv[1], -ew::kInf, -ew::kInf, xv[4], -ew::kInf}));
  Tensor yi = masked_fill(tensor({1, 2, 3}), m, 9);
  CHECK(yi.dtype() == kInt64);
  CHECK(yi.to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 2, 9});
  Tensor yb = masked_fill(tensor({false, false, true}), tensor({true, false, false}), true);
  CHECK(bools(yb) == std::vector<bool>{true, false, true});
  // 0-D mask and 0-D input
  ew::expect_values(masked_fill(ew::make(xv, {2, 3}), tensor({true}).reshape({}), 2.0), Vec(6, 2.0));
  ew::expect_values(masked_fill(ew::make({3.0}, {}), tensor({false}).reshape({}), 2.0), {3.0});
  // non-contiguous input
  Tensor xt = ew::make(xv, {3, 2}).t();
  Vec xl = xt.contiguous().to_vector<double>();
  ew::expect_values(masked_fill(xt, m, 0.0), {0, xl[1], 0, 0, xl[4], 0});

  // gradient: zero where filled, one elsewhere
  Tensor x = ew::leaf_of(xv, {2, 3});
  sum(masked_fill(x, m, 5.0)).backward();
  ew::expect_values(x.grad(), {0, 1, 0, 0, 1, 0});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return masked_fill(in[0], m, -3.0); },
              {ew::leaf_of(xv, {2, 3}, true)});
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        return masked_fill(in[0], mask_of({2, 3}), 0.0);
      },
      {ew::leaf_of(xv, {3, 2}).t()});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return masked_fill(in[0], tensor({false}).reshape({}), 1.0); },
              {ew::leaf_of({0.5}, {})});
  Tensor e = ew::leaf_of({}, {0, 3});
  sum(masked_fill(e, m, 1.0)).backward();
  kt::expect_shape(e.grad(), {0, 3});
  // float32 leaf keeps a float32 grad
  Tensor x32 = ew::make(xv, {2, 3}, kFloat32).requires_grad_();
  sum(masked_fill(x32, m, 0.0)).backward();
  CHECK(x32.grad().dtype() == kFloat32);
}

TEST_CASE("comparisons: values / broadcasting / mixed dtypes / NaN and operators") {
  Vec av = {1.0, 2.0, 3.0, ew::kNaN, -1.0, 2.0}, bv = {2.0, 2.0, ew::kNaN};
  Tensor a = ew::make(av, {2, 3}), b = ew::make(bv, {3});
  using Cmp = std::function<Tensor(const Tensor&, const Tensor&)>;
  std::vector<std::tuple<const char*, Cmp, Cmp, std::function<bool(double, double)>>> cases = {
      {"eq", [](auto& x, auto& y) { return eq(x, y); }, [](auto& x, auto& y) { return x == y; },
       [](double x, double y) { return x == y; }},
      {"ne", [](auto& x, auto& y) { return ne(x, y); }, [](auto& x, auto& y) { return x != y; },
       [](double x, double y) { return x != y; }},
      {"lt", [](auto& x, auto& y) { return lt(x, y); }, [](auto& x, auto& y) { return x < y; },
       [](double x, double y) { return x < y; }},
      {"le", [](auto& x, auto& y) { return le(x, y); }, [](auto& x, auto& y) { return x <= y; },
       [](double x, double y) { return x <= y; }},
      {"gt", [](auto& x, auto& y) { return gt(x, y); }, [](auto& x, auto& y) { return x > y; },
       [](double x, double y) { return x > y; }},
      {"ge", [](auto& x, auto& y) { return ge(x, y); }, [](auto& x, auto& y) { return x >= y; },
       [](double x, double y) { return x >= y; }},
  };
  for (auto& [name, fn, opr, ref] : cases) {
    INFO(std::string(name));
    std::vector<bool> expect;
    for (int i = 0; i < 6; ++i) expect.push_back(ref(av[i], bv[i % 3]));
    Tensor r = fn(a, b);
    kt::expect_shape(r, {2, 3});
    CHECK(bools(r) == expect);
    CHECK(bools(opr(a, b)) == expect);
    // float32 against float64 (promotion), and against a non-contiguous view
    CHECK(bools(fn(a.to(kFloat32), b)) == expect);
    Vec tv(6);  // (3, 2) buffer whose transpose holds av
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 3; ++c) tv[c * 2 + r] = av[r * 3 + c];
    Tensor at = ew::make(tv, {3, 2}).t();
    REQUIRE_FALSE(at.is_contiguous());
    CHECK(bools(fn(at, b)) == expect);
    // the comparison never records a graph
    Tensor g = ew::leaf_of({1, 2, 3}, {3});
    Tensor rg = fn(g, b);
    CHECK_FALSE(rg.requires_grad());
  }
  // int64 against float: 2 < 2.5, 3 > 2.5
  Tensor i = tensor({2, 3});
  Tensor f = ew::make({2.5, 2.5}, {2}, kFloat32);
  CHECK(bools(lt(i, f)) == std::vector<bool>{true, false});
  CHECK(bools(i > 2.5) == std::vector<bool>{false, true});
  CHECK(bools(i == 2) == std::vector<bool>{true, false});
  CHECK(bools(i != 2) == std::vector<bool>{false, true});
  CHECK(bools(i <= 2) == std::vector<bool>{true, false});
  CHECK(bools(i >= 3) == std::vector<bool>{false, true});
  CHECK(bools(i < 3) == std::vector<bool>{true, false});
  // a float32 tensor against a number it cannot hold exactly: the number is rounded to float32
  CHECK(bools(ew::make({0.1}, {1}, kFloat32) == 0.1) == std::vector<bool>{true});
  // large int64 values compare exactly
  Tensor big = tensor({std::int64_t{9007199254740993}});
  CHECK(bools(big == tensor({std::int64_t{9007199254740992}})) == std::vector<bool>{false});
  CHECK(bools(big > tensor({std::int64_t{9007199254740992}})) == std::vector<bool>{true});
  // bool comparisons
  CHECK(bools(tensor({true, false}) == tensor({true, true})) == std::vector<bool>{true, false});
  CHECK(bools(tensor({true, false}) > tensor({false, false})) == std::vector<bool>{true, false});
  // 0-D and size-0
  CHECK(eq(ew::make({1.0}, {}), ew::make({1.0}, {})).dim() == 0);
  kt::expect_shape(lt(zeros({0, 3}), zeros({3})), {0, 3});
  CHECK_KILN_ERROR(eq(zeros({2, 3}), zeros({4})), "[eq] shapes (2, 3) and (4,) cannot be broadcast");
  CHECK_KILN_ERROR(ge(zeros({2}), zeros({3})), "[ge] shapes (2,) and (3,) cannot be broadcast");
  CHECK_KILN_ERROR(zeros({2}) < zeros({3}), "[lt]");
}

TEST_CASE("logical ops and operators") {
  Tensor p = tensor({true, true, false, false}), q = tensor({true, false, true, false});
  CHECK(bools(logical_and(p, q)) == std::vector<bool>{true, false, false, false});
  CHECK(bools(logical_or(p, q)) == std::vector<bool>{true, true, true, false});
  CHECK(bools(logical_not(p)) == std::vector<bool>{false, false, true, true});
  CHECK(bools(p & q) == std::vector<bool>{true, false, false, false});
  CHECK(bools(p | q) == std::vector<bool>{true, true, true, false});
  CHECK(bools(~q) == std::vector<bool>{false, true, false, true});
  // non-bool inputs: nonzero is true (NaN is nonzero)
  Tensor f = ew::make({0.0, 0.5, ew::kNaN, -0.0}, {4});
  Tensor i = tensor({0, 3, 0, -2});
  CHECK(bools(logical_and(f, i)) == std::vector<bool>{false, true, false, false});
  CHECK(bools(logical_or(f, i)) == std::vector<bool>{false, true, true, true});
  CHECK(bools(logical_not(f)) == std::vector<bool>{true, false, false, true});
  CHECK(bools(logical_not(i)) == std::vector<bool>{true, false, true, false});
  CHECK(bools(~i) == std::vector<bool>{true, false, true, false});
  CHECK(bools(logical_and(ew::make({0.0, 0.25}, {2}, kFloat32), tensor({true, true}))) ==
        std::vector<bool>{false, true});
  // broadcasting, non-contiguous, 0-D, size-0
  Tensor col = tensor({true, false}).reshape({2, 1});
  Tensor r = logical_and(col, tensor({true, false, true}));
  kt::expect_shape(r, {2, 3});
  CHECK(bools(r) == std::vector<bool>{true, false, true, false, false, false});
  Tensor nt = mask_of({3, 2}).t();
  Vec nv = nt.contiguous().to_vector<double>();
  std::vector<bool> nexp;
  for (double v : nv) nexp.push_back(v == 0);
  CHECK(bools(logical_not(nt)) == nexp);
  CHECK(logical_or(tensor({false}).reshape({}), tensor({true}).reshape({})).item<bool>());
  kt::expect_shape(logical_or(zeros({0, 2}, kBool), tensor({true, false})), {0, 2});
  CHECK_KILN_ERROR(logical_and(tensor({true, false}), tensor({true, false, true})),
                   "[logical_and] shapes (2,) and (3,) cannot be broadcast");
  CHECK_KILN_ERROR(p | tensor({true, false, true}), "[logical_or]");
  CHECK_KILN_ERROR(logical_not(Tensor()), "[logical_not]");
}

TEST_CASE("isnan and isfinite") {
  Vec v = {0.0, -1.5, ew::kNaN, ew::kInf, -ew::kInf, 1e300};
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    Tensor x = ew::make(v, {2, 3}, dt);
    Tensor n = isnan(x);
    kt::expect_shape(n, {2, 3});
    CHECK(bools(n) == std::vector<bool>{false, false, true, false, false, false});
    // 1e300 overflows to inf in float32
    bool big_finite = dt == kFloat64;
    CHECK(bools(isfinite(x)) == std::vector<bool>{true, true, false, false, false, big_finite});
    CHECK(bools(isnan(x.t())) == std::vector<bool>{false, false, false, false, true, false});
  }
  Tensor i = tensor({1, 2});
  CHECK(bools(isnan(i)) == std::vector<bool>{false, false});
  CHECK(bools(isfinite(i)) == std::vector<bool>{true, true});
  CHECK(bools(isfinite(tensor({true}))) == std::vector<bool>{true});
  CHECK(isnan(ew::make({ew::kNaN}, {})).item<bool>());
  kt::expect_shape(isfinite(zeros({0, 3})), {0, 3});
  Tensor l = ew::leaf_of({1.0, ew::kNaN}, {2});
  CHECK_FALSE(isnan(l).requires_grad());
  CHECK_FALSE(isfinite(l).requires_grad());
}

TEST_CASE("allclose and equal") {
  Tensor a = ew::make({1.0, 2.0, 1000.0}, {3});
  CHECK(allclose(a, a));
  CHECK(allclose(a, ew::make({1.0, 2.0, 1000.005}, {3})));       // within rtol 1e-5 * 1000
  CHECK_FALSE(allclose(a, ew::make({1.0, 2.0, 1000.02}, {3})));  // beyond it
  CHECK(allclose(a, ew::make({1.0, 2.0, 1000.02}, {3}), 1e-4));
  CHECK_FALSE(allclose(ew::make({0.0}, {1}), ew::make({1e-7}, {1})));
  CHECK(allclose(ew::make({0.0}, {1}), ew::make({1e-7}, {1}), 1e-5, 1e-6));
  // |a - b| <= atol + rtol * |b|: asymmetric in b
  CHECK(allclose(ew::make({1.0}, {1}), ew::make({2.0}, {1}), 0.5, 0.0));
  CHECK_FALSE(allclose(ew::make({2.0}, {1}), ew::make({1.0}, {1}), 0.5, 0.0));
  Tensor n = ew::make({1.0, ew::kNaN}, {2});
  CHECK_FALSE(allclose(n, n));
  CHECK(allclose(n, n, 1e-5, 1e-8, true));
  CHECK_FALSE(allclose(n, ew::make({1.0, 2.0}, {2}), 1e-5, 1e-8, true));
  Tensor inf = ew::make({ew::kInf, -ew::kInf}, {2});
  CHECK(allclose(inf, inf));
  CHECK_FALSE(allclose(inf, ew::make({ew::kInf, ew::kInf}, {2})));
  // broadcasting, mixed dtypes, non-contiguous
  CHECK(allclose(ew::make({2.0, 2.0, 2.0, 2.0}, {2, 2}), ew::make({2.0}, {})));
  CHECK(allclose(ew::make({0.1, 0.2}, {2}, kFloat32), ew::make({0.1, 0.2}, {2}), 1e-6));
  CHECK(allclose(tensor({1, 2}), ew::make({1.0, 2.0}, {2})));
  Tensor m = ew::make({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(allclose(m.t(), ew::make({1, 4, 2, 5, 3, 6}, {3, 2})));
  CHECK_FALSE(allclose(m.t(), ew::make({1, 2, 3, 4, 5, 6}, {3, 2})));
  CHECK(allclose(zeros({0, 3}), zeros({3})));
  CHECK_KILN_ERROR(allclose(zeros({2, 3}), zeros({4})), "[allclose] shapes (2, 3) and (4,) cannot be broadcast");

  CHECK(equal(m, ew::make({1, 2, 3, 4, 5, 6}, {2, 3})));
  CHECK_FALSE(equal(m, ew::make({1, 2, 3, 4, 5, 7}, {2, 3})));
  CHECK_FALSE(equal(m, ew::make({1, 2, 3, 4, 5, 6}, {3, 2})));  // same values, other shape
  CHECK_FALSE(equal(ew::make({1.0}, {1}), ew::make({1.0}, {})));
  CHECK(equal(m.t(), ew::make({1, 4, 2, 5, 3, 6}, {3, 2})));
  CHECK_FALSE(equal(n, n));  // NaN != NaN
  CHECK(equal(zeros({0, 3}), zeros({0, 3})));
  CHECK(equal(ew::make({1.0 + 1e-16}, {1}), ew::make({1.0}, {1})));  // 1 + 1e-16 == 1 in float64
  CHECK_FALSE(equal(ew::make({1.0 + 1e-15}, {1}), ew::make({1.0}, {1})));
}
