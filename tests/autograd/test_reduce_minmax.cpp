// amax/amin, max()/min() of all, max/min(dim) with indices, argmax/argmin, logsumexp,
// any/all: values, ties, NaN, strided inputs, size-0 and 0-D inputs, gradients, errors.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

std::vector<std::int64_t> ints(const Tensor& t) {
  REQUIRE(t.dtype() == kInt64);
  return t.to_vector<std::int64_t>();
}
std::vector<bool> bools(const Tensor& t) {
  REQUIRE(t.dtype() == kBool);
  return t.to_vector<bool>();
}

// Host argmax/argmin along `dim` of a row-major (v, shape): first index on ties, NaN wins.
std::vector<std::int64_t> host_arg(const Vec& v, const Shape& shape, std::int64_t dim, bool is_max) {
  std::int64_t nd = static_cast<std::int64_t>(shape.size());
  if (dim < 0) dim += nd;
  std::int64_t inner = 1;
  for (std::int64_t d = dim + 1; d < nd; ++d) inner *= shape[d];
  std::int64_t outer = 1;
  for (std::int64_t d = 0; d < dim; ++d) outer *= shape[d];
  std::int64_t n = shape[dim];
  std::vector<std::int64_t> out;
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = 0; i < inner; ++i) {
      std::int64_t best = 0;
      double bv = v[o * n * inner + i];
      for (std::int64_t k = 1; k < n; ++k) {
        double x = v[(o * n + k) * inner + i];
        if (std::isnan(bv)) break;
        if (std::isnan(x) || (is_max ? x > bv : x < bv)) {
          bv = x;
          best = k;
        }
      }
      out.push_back(best);
    }
  return out;
}

}  // namespace

TEST_CASE("amax/amin: large and transposed inputs / dtypes / infinities") {
  Shape s = {2, 3, 4};
  Vec v = ew::randvals(s, 401);
  // larger inputs through the vectorized and threaded paths
  Shape sb = {300, 257};
  Vec vb = ew::randvals(sb, 402);
  Tensor xb = ew::make(vb, sb);
  for (const Dims& dims : std::vector<Dims>{{0}, {1}, {}}) {
    ew::expect_values(amax(xb, dims), ew::host_reduce(vb, sb, dims, ew::r_max), 0, 0);
    ew::expect_values(amin(xb.t(), dims),
                      ew::host_reduce(xb.t().contiguous().to_vector<double>(), {257, 300}, dims, ew::r_min), 0, 0);
  }
  // dtypes are kept
  Tensor i = tensor({3, -7, 5, 2}).reshape({2, 2});
  CHECK(ints(amax(i, {1})) == std::vector<std::int64_t>{3, 5});
  CHECK(ints(amin(i)) == std::vector<std::int64_t>{-7});
  CHECK(amax(ew::make(v, s, kFloat32)).dtype() == kFloat32);
  ew::expect_values(amax(ew::make(v, s, kFloat32), {1}), ew::host_reduce(ew::as_f32(v), s, {1}, ew::r_max), 0, 0);
  CHECK(bools(amax(tensor({false, true, false}))) == std::vector<bool>{true});
  CHECK(bools(amin(tensor({false, true, true}))) == std::vector<bool>{false});
  // infinities
  ew::expect_values(amax(ew::make({-ew::kInf, -ew::kInf}, {2})), {-ew::kInf});
  ew::expect_values(amin(ew::make({ew::kInf, 1.0}, {2})), {1});
  CHECK(ints(amin(tensor({std::numeric_limits<std::int64_t>::max()}))) ==
        std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::max()});
}

TEST_CASE("amax/amin/max/min: NaN propagates") {
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    Tensor x = ew::make({1.0, ew::kNaN, 3.0, 4.0, 5.0, 6.0}, {2, 3}, dt);
    ew::expect_values(amax(x), {ew::kNaN});
    ew::expect_values(amin(x), {ew::kNaN});
    ew::expect_values(max(x), {ew::kNaN});
    ew::expect_values(min(x), {ew::kNaN});
    ew::expect_values(amax(x, {1}), {ew::kNaN, 6});
    ew::expect_values(amin(x, {0}), {1, ew::kNaN, 3});
    ew::expect_values(amax(x, {0}), {4, ew::kNaN, 6});
    // NaN after the running max, at the end of a long vectorized run, and first
    Vec lv(100, 1.0);
    lv[99] = ew::kNaN;
    ew::expect_values(amax(ew::make(lv, {100}, dt)), {ew::kNaN});
    ew::expect_values(amin(ew::make(lv, {100}, dt)), {ew::kNaN});
    lv[99] = 1.0;
    lv[0] = ew::kNaN;
    ew::expect_values(amax(ew::make(lv, {100}, dt)), {ew::kNaN});
    ew::expect_values(amax(ew::make(lv, {4, 25}, dt), {0}), [] {
      Vec e(25, 1.0);
      e[0] = ew::kNaN;
      return e;
    }());
    // max/min along a dim: the NaN and its index
    auto [mv, mi] = max(x, 1);
    ew::expect_values(mv, {ew::kNaN, 6});
    CHECK(ints(mi) == std::vector<std::int64_t>{1, 2});
    auto [nv, ni] = min(x, 1);
    ew::expect_values(nv, {ew::kNaN, 4});
    CHECK(ints(ni) == std::vector<std::int64_t>{1, 0});
    CHECK(ints(argmax(x)) == std::vector<std::int64_t>{1});
    CHECK(ints(argmin(x, 1)) == std::vector<std::int64_t>{1, 0});
  }
}

TEST_CASE("amax/amin/max/min: ties share the gradient evenly") {
  Tensor x = ew::leaf_of({1.0, 3.0, 3.0, 2.0, 2.0, 0.0}, {2, 3});
  sum(amax(x, {1})).backward();
  ew::expect_values(x.grad(), {0, 0.5, 0.5, 0.5, 0.5, 0});
  Tensor y = ew::leaf_of({1.0, 3.0, 3.0, 2.0, 2.0, 0.0}, {2, 3});
  sum(amin(y, {0}, true)).backward();
  ew::expect_values(y.grad(), {1, 0, 0, 0, 1, 1});
  Tensor z = ew::leaf_of({1.0, 3.0, 3.0, 2.0, 3.0, 0.0}, {2, 3});
  max(z).backward();
  ew::expect_values(z.grad(), {0, 1.0 / 3, 1.0 / 3, 0, 1.0 / 3, 0});
  Tensor w = ew::leaf_of({1.0, 0.0, 3.0, 0.0, 2.0, 5.0}, {2, 3});
  (min(w) * 4).backward();
  ew::expect_values(w.grad(), {0, 2, 0, 2, 0, 0});
  // all equal
  Tensor u = ew::leaf_of(Vec(4, 7.0), {4});
  amax(u).backward();
  ew::expect_values(u.grad(), Vec(4, 0.25));
}

TEST_CASE("amax/amin/max/min: gradcheck on 0-D / size-0 inputs / float32 gradients") {
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  // 0-D
  for (auto op : std::vector<Fn>{
           [](const std::vector<Tensor>& in) { return amax(in[0]); },
           [](const std::vector<Tensor>& in) { return amin(in[0], {0}); },
           [](const std::vector<Tensor>& in) { return max(in[0]); },
           [](const std::vector<Tensor>& in) { return min(in[0], 0).values; },
           [](const std::vector<Tensor>& in) { return max(in[0], -1, true).values; },
       })
    kt::grad_ok(op, {ew::leaf_of({1.25}, {})});
  // size-0 input reduced over a non-empty dim
  Tensor e = ew::leaf_of({}, {0, 3});
  Tensor m = amax(e, {1});
  kt::expect_shape(m, {0});
  sum(m).backward();
  kt::expect_shape(e.grad(), {0, 3});
  Tensor e2 = ew::leaf_of({}, {0, 3});
  auto [vals, idx] = max(e2, 1, true);
  kt::expect_shape(vals, {0, 1});
  kt::expect_shape(idx, {0, 1});
  sum(vals).backward();
  kt::expect_shape(e2.grad(), {0, 3});
  // float32 keeps float32 grads
  Tensor f = ew::make({1.0, 5.0, 2.0}, {3}, kFloat32).requires_grad_();
  (amax(f) + max(f, 0).values).backward();
  CHECK(f.grad().dtype() == kFloat32);
  ew::expect_values(f.grad(), {0, 2, 0});
}

TEST_CASE("max/min along a dim: values / first index on ties / keepdim / gradient to that index") {
  Vec v = {1.0, 3.0, 3.0, 2.0, 5.0, 4.0, 5.0, 5.0, 0.0, 0.0, -1.0, -1.0};
  Shape s = {3, 4};
  Tensor x = ew::make(v, s);
  for (std::int64_t dim : {0, 1, -1, -2})
    for (bool keep : {false, true}) {
      INFO("dim " << dim << " keepdim " << keep);
      auto [mv, mi] = max(x, dim, keep);
      auto [nv, ni] = min(x, dim, keep);
      Dims d = {dim};
      Shape rs = ew::reduced_shape(s, d, keep);
      kt::expect_shape(mv, rs);
      kt::expect_shape(mi, rs);
      kt::expect_shape(ni, rs);
      ew::expect_values(mv, ew::host_reduce(v, s, d, ew::r_max), 0, 0);
      ew::expect_values(nv, ew::host_reduce(v, s, d, ew::r_min), 0, 0);
      CHECK(ints(mi) == host_arg(v, s, dim, true));
      CHECK(ints(ni) == host_arg(v, s, dim, false));
      CHECK(ints(argmax(x, dim, keep)) == host_arg(v, s, dim, true));
      CHECK(ints(argmin(x, dim, keep)) == host_arg(v, s, dim, false));
      kt::expect_shape(argmax(x, dim, keep), rs);
    }
  // hand-checked ties: row 0 max 3 at 1 (not 2), row 1 max 5 at 0 (not 2, 3), row 2 max 0 at 0
  CHECK(ints(max(x, 1).indices) == std::vector<std::int64_t>{1, 0, 0});
  CHECK(ints(min(x, 1).indices) == std::vector<std::int64_t>{0, 1, 2});
  // gradient goes only to the first maximal index
  Tensor g = ew::leaf_of(v, s);
  sum(max(g, 1).values).backward();
  ew::expect_values(g.grad(), {0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0});
  // column minima with ties: col 0 rows 0,1 -> 0; col 1 all -> 0; col 2 rows 1,2 -> 1; col 3 rows 0,1 -> 0
  Vec v2 = {2.0, 1.0, 3.0, 0.0, 2.0, 1.0, 0.0, 0.0, 5.0, 1.0, 0.0, 4.0};
  Tensor h = ew::leaf_of(v2, s);
  auto [hv, hi] = min(h, 0, true);
  kt::expect_shape(hi, {1, 4});
  CHECK(ints(hi) == std::vector<std::int64_t>{0, 0, 1, 0});
  Tensor w = ew::make({1.0, 10.0, 100.0, 1000.0}, {1, 4});
  sum(hv * w).backward();
  ew::expect_values(h.grad(), {1, 10, 0, 1000, 0, 0, 100, 0, 0, 0, 0, 0});
  // non-contiguous input: indices are logical positions
  Tensor xt = x.t();  // (4, 3)
  Vec tv = xt.contiguous().to_vector<double>();
  CHECK(ints(max(xt, 1).indices) == host_arg(tv, {4, 3}, 1, true));
  CHECK(ints(argmin(xt, 0)) == host_arg(tv, {4, 3}, 0, false));
  ew::expect_values(max(xt, 0).values, {3, 5, 0});
  // int64 input keeps its dtype for values
  auto [iv, ii] = max(tensor({4, 9, 9, 1}), 0);
  CHECK(ints(iv) == std::vector<std::int64_t>{9});
  CHECK(ints(ii) == std::vector<std::int64_t>{1});
  // 0-D input
  auto [sv, si] = max(ew::make({2.0}, {}), 0);
  kt::expect_shape(sv, {});
  ew::expect_values(sv, {2});
  CHECK(ints(si) == std::vector<std::int64_t>{0});
  // no gradient flows into the indices tensor
  CHECK_FALSE(max(ew::leaf_of(v, s), 1).indices.requires_grad());
}

TEST_CASE("argmax/argmin without dim / with keepdim / strided / 0-D") {
  Vec v = {1.0, 7.0, 3.0, 7.0, -2.0, -2.0};
  Tensor x = ew::make(v, {2, 3});
  Tensor a = argmax(x);
  CHECK(a.dim() == 0);
  CHECK(ints(a) == std::vector<std::int64_t>{1});  // first of the tied 7s, in flat order
  CHECK(ints(argmin(x)) == std::vector<std::int64_t>{4});
  Tensor ak = argmax(x, std::nullopt, true);
  kt::expect_shape(ak, {1, 1});
  CHECK(ints(ak) == std::vector<std::int64_t>{1});
  kt::expect_shape(argmin(x, std::nullopt, true), {1, 1});
  // transposed: flat order of the logical (3, 2) view is 1, 7, 7, -2, 3, -2
  CHECK(ints(argmax(x.t())) == std::vector<std::int64_t>{1});
  CHECK(ints(argmin(x.t())) == std::vector<std::int64_t>{3});
  CHECK(ints(argmax(x.t(), 0)) == std::vector<std::int64_t>{1, 0});
  CHECK(ints(argmin(ew::make(ew::randvals({6, 4}, 421), {6, 4}).slice(0, 1, 6, 2), 0)) ==
        host_arg(ew::make(ew::randvals({6, 4}, 421), {6, 4}).slice(0, 1, 6, 2).contiguous().to_vector<double>(), {3, 4},
                 0, false));
  // int64 and bool inputs
  CHECK(ints(argmax(tensor({3, 9, 2}))) == std::vector<std::int64_t>{1});
  CHECK(ints(argmin(tensor({3, 9, 2}))) == std::vector<std::int64_t>{2});
  CHECK(ints(argmax(tensor({false, true, true}))) == std::vector<std::int64_t>{1});
  // 0-D
  Tensor s = ew::make({5.0}, {});
  CHECK(ints(argmax(s)) == std::vector<std::int64_t>{0});
  CHECK(ints(argmax(s, 0)) == std::vector<std::int64_t>{0});
  kt::expect_shape(argmin(s, std::nullopt, true), {});
  // large input, threaded
  Vec big = ew::randvals({300, 257}, 422);
  Tensor xb = ew::make(big, {300, 257});
  CHECK(ints(argmax(xb, 0)) == host_arg(big, {300, 257}, 0, true));
  CHECK(ints(argmin(xb, 1)) == host_arg(big, {300, 257}, 1, false));
  // argmax of a tensor requiring grad is fine and has no grad
  CHECK_FALSE(argmax(ew::leaf_of(v, {2, 3})).requires_grad());
}

TEST_CASE("logsumexp: -inf rows / large values / NaN / 0-D and size-0") {
  Shape s = {2, 3, 4};
  Vec v = ew::randvals(s, 431);
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    // large values do not overflow; rows of -inf give -inf; +inf gives +inf
    Tensor l = ew::make({1000.0, 1000.0, 999.0, -ew::kInf, -ew::kInf, -ew::kInf, ew::kInf, 0.0, -1000.0}, {3, 3}, dt);
    Tensor r = logsumexp(l, {1});
    CHECK(r.dtype() == dt);
    ew::expect_values(r, {1000 + std::log(2 + std::exp(-1.0)), -ew::kInf, ew::kInf}, 1e-4, 1e-6);
    ew::expect_values(logsumexp(ew::make({-1000.0, -1000.0}, {2}, dt), {0}), {-1000 + std::log(2.0)}, 1e-4, 1e-6);
    ew::expect_values(logsumexp(ew::make({ew::kNaN, 1.0}, {2}, dt), {0}), {ew::kNaN});
    Vec v32 = ew::as_f32(v);
    ew::expect_values(logsumexp(ew::make(v32, s, dt), {-1}), ew::host_reduce(v32, s, {2}, ew::r_logsumexp), 1e-6, 1e-5);
  }
  // 0-D
  ew::expect_values(logsumexp(ew::make({0.3}, {}), {}), {0.3});
  ew::expect_values(logsumexp(ew::make({0.3}, {}), {0}), {0.3});
  // size-0: a reduced empty dim gives -inf; kept empty dims give empty results
  Tensor e = zeros({0, 3}, kFloat64);
  ew::expect_values(logsumexp(e, {0}), {-ew::kInf, -ew::kInf, -ew::kInf});
  kt::expect_shape(logsumexp(e, {0}, true), {1, 3});
  kt::expect_shape(logsumexp(e, {1}), {0});
  ew::expect_values(logsumexp(e, {}), {-ew::kInf});
}

TEST_CASE("logsumexp: gradients") {
  kt::grad_ok([](const std::vector<Tensor>& in) { return logsumexp(in[0], {0}); },
              {ew::leaf_of(ew::randvals({4, 3}, 443), {3, 4}).t()});
  kt::grad_ok([](const std::vector<Tensor>& in) { return logsumexp(in[0], {}); }, {ew::leaf_of({0.4}, {})});
  // large values: the gradient is the softmax, finite
  Tensor l = ew::leaf_of({1000.0, 1000.0, 999.0}, {3});
  logsumexp(l, {0}).backward();
  double z = 2 + std::exp(-1.0);
  ew::expect_values(l.grad(), {1 / z, 1 / z, std::exp(-1.0) / z}, 1e-12, 1e-10);
  // a -inf entry gets zero gradient
  Tensor m = ew::leaf_of({0.0, -ew::kInf, 0.0}, {3});
  logsumexp(m, {0}).backward();
  ew::expect_values(m.grad(), {0.5, 0, 0.5});
  // size-0 inputs: over a non-empty dim and over the empty dim
  for (const Dims& dims : std::vector<Dims>{{1}, {0}, {}}) {
    INFO("size-0 dims " << shape_str(dims));
    Tensor e = ew::leaf_of({}, {0, 3});
    Tensor y = logsumexp(e, dims);
    REQUIRE(y.requires_grad());
    sum(y).backward();
    REQUIRE(e.grad().defined());
    kt::expect_shape(e.grad(), {0, 3});
  }
  // float32 keeps float32
  Tensor f = ew::make({0.5, 1.5}, {2}, kFloat32).requires_grad_();
  logsumexp(f, {0}).backward();
  CHECK(f.grad().dtype() == kFloat32);
}

TEST_CASE("any/all: values over dims / keepdim / dtypes / NaN / strided / 0-D / size-0") {
  Tensor b = tensor({true, false, false, false, true, true}).reshape({2, 3});
  CHECK(bools(any(b)) == std::vector<bool>{true});
  CHECK(bools(all(b)) == std::vector<bool>{false});
  CHECK(bools(any(b, {0})) == std::vector<bool>{true, true, true});
  CHECK(bools(all(b, {0})) == std::vector<bool>{false, false, false});
  CHECK(bools(any(b, {1})) == std::vector<bool>{true, true});
  CHECK(bools(all(b, {-1})) == std::vector<bool>{false, false});
  kt::expect_shape(any(b, {1}, true), {2, 1});
  kt::expect_shape(all(b, {0, 1}, true), {1, 1});
  CHECK(bools(all(b.slice(1, 1, 3), {1})) == std::vector<bool>{false, true});
  CHECK(bools(any(b.t(), {1})) == std::vector<bool>{true, true, true});
  CHECK(bools(all(b.t(), {0})) == std::vector<bool>{false, false});
  // numbers: nonzero is true, NaN is nonzero
  Tensor f = ew::make({0.0, 0.5, ew::kNaN, -0.0}, {2, 2});
  CHECK(bools(any(f, {1})) == std::vector<bool>{true, true});
  CHECK(bools(all(f, {0})) == std::vector<bool>{false, false});
  CHECK(bools(all(ew::make({1.0, ew::kNaN, -3.0}, {3}, kFloat32))) == std::vector<bool>{true});
  CHECK(bools(any(tensor({0, 0, 0}))) == std::vector<bool>{false});
  CHECK(bools(all(tensor({1, -2, 3}))) == std::vector<bool>{true});
  // long runs through the vectorized paths
  Tensor longb = zeros({1000}, kBool);
  CHECK_FALSE(any(longb).item<bool>());
  CHECK(all(ones({1000}, kBool)).item<bool>());
  Tensor one_true = zeros({40, 30}, kBool);
  one_true.select(0, 37).select(0, 29).fill_(true);
  CHECK(any(one_true).item<bool>());
  CHECK(bools(any(one_true, {0})) == [] {
    std::vector<bool> e(30, false);
    e[29] = true;
    return e;
  }());
  // 0-D and size-0: any(empty) = false, all(empty) = true
  CHECK(any(tensor({true}).reshape({})).item<bool>());
  CHECK_FALSE(all(ew::make({0.0}, {})).item<bool>());
  CHECK_FALSE(any(zeros({0, 3})).item<bool>());
  CHECK(all(zeros({0, 3})).item<bool>());
  CHECK(bools(all(zeros({0, 3}), {0})) == std::vector<bool>{true, true, true});
  kt::expect_shape(any(zeros({0, 3}), {1}), {0});
  // results never require grad
  CHECK_FALSE(any(ew::leaf_of({1.0}, {1})).requires_grad());
  CHECK_KILN_ERROR(any(b, {2}), "[any] dim 2 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(all(b, {-3}), "[all] dim -3 out of range for a 2-D tensor");
}

TEST_CASE("min/max family: errors") {
  Tensor x = zeros({2, 3});
  Tensor e = zeros({0, 3});
  CHECK_KILN_ERROR(amax(e), "[amax]");
  CHECK_KILN_ERROR(amax(e), "(0, 3)");
  CHECK_KILN_ERROR(amax(e, {0}), "[amax] cannot reduce over dim 0 of size 0 (input shape (0, 3))");
  CHECK_KILN_ERROR(amin(e, {-2}), "[amin] cannot reduce over dim 0 of size 0");
  CHECK_KILN_ERROR(max(e), "[max]");
  CHECK_KILN_ERROR(min(zeros({0})), "[min]");
  CHECK_KILN_ERROR(max(e, 0), "[max] cannot reduce over dim 0 of size 0");
  CHECK_KILN_ERROR(min(e, 0), "[min] cannot reduce over dim 0 of size 0");
  CHECK_KILN_ERROR(argmax(e), "[argmax]");
  CHECK_KILN_ERROR(argmin(e, 0), "[argmin] cannot reduce over dim 0 of size 0");
  CHECK_KILN_ERROR(amax(x, {2}), "[amax] dim 2 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(amin(x, {0, -2}), "[amin] dim 0 appears more than once");
  CHECK_KILN_ERROR(max(x, 2), "[max] dim 2 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(min(x, -3), "[min] dim -3 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(argmax(x, 5), "[argmax] dim 5 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(argmin(x, -3), "[argmin] dim -3 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(logsumexp(x, {2}), "[logsumexp] dim 2 out of range for a 2-D tensor");
  CHECK(logsumexp(tensor({1, 2}), {0}).dtype() == kFloat32);  // integers promote, as torch.logsumexp
  CHECK_KILN_ERROR(amax(Tensor()), "[amax] input tensor is undefined");
  CHECK_KILN_ERROR(argmax(Tensor()), "[argmax] input tensor is undefined");
}
