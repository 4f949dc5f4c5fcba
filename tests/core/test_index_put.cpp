// x.index_put_({...}, value) and kiln::index_put: writes through basic and advanced indices,
// broadcasting, accumulate with duplicates, autograd to the value (and to a non-leaf x), and
// the refusals (a leaf that requires grad, storage shared with views, bad values).
#include "test_util.hpp"

using namespace kiln;
using namespace kiln::indexing;
using kt::expect_shape;
using kt::expect_values;

namespace {
Tensor ints(const std::vector<std::int64_t>& v, const Shape& shape = {}) {
  return kiln::tensor(v, shape.empty() ? Shape{static_cast<std::int64_t>(v.size())} : shape);
}
}  // namespace

TEST_CASE("index_put_: basic indices write through views, values broadcast and convert") {
  Tensor x = zeros({3, 4}, kInt64);
  const auto v0 = x.version();
  x.index_put_({0}, 7);
  CHECK(x.version() > v0);
  x.index_put_({Slice(1, None), 1}, ints({1, 2}));
  x.index_put_({2, Slice(2, None)}, kiln::tensor({{5, 6}}));  // a leading 1 is dropped, as PyTorch does
  x.index_put_({1, -1}, 2.7);                                 // converted like an assignment: 2
  expect_values(x, {7, 7, 7, 7, 0, 1, 0, 2, 0, 2, 5, 6});
  x.index_put_({Slice(), 0}, 10, /*accumulate=*/true);
  expect_values(x, {17, 7, 7, 7, 10, 1, 0, 2, 10, 2, 5, 6});
}

TEST_CASE("index_put_: tensor indices and masks, duplicates with and without accumulate") {
  Tensor x = arange(12).reshape({3, 4}).to(kFloat32);
  x.index_put_({ints({0, 2})}, kiln::tensor({{1.f, 2.f, 3.f, 4.f}}));
  expect_values(x, {1, 2, 3, 4, 4, 5, 6, 7, 1, 2, 3, 4});
  x.index_put_({x > 4}, 0.f);
  expect_values(x, {1, 2, 3, 4, 4, 0, 0, 0, 1, 2, 3, 4});
  // Accumulate adds every duplicate; plain assignment keeps the last write.
  Tensor z = zeros({4});
  z.index_put_({ints({0, 0, 2, -4})}, kiln::tensor({1.f, 2.f, 3.f, 4.f}), true);
  expect_values(z, {7, 0, 3, 0});
  z.index_put_({ints({1, 1})}, kiln::tensor({5.f, 6.f}));
  expect_values(z, {7, 6, 3, 0});
  // Indices apart: y[[0, 1], :, [1, 3]] = v of shape (2, 3) writes y[0, :, 1] and y[1, :, 3].
  Tensor y = zeros({2, 3, 4}, kInt64);
  y.index_put_({ints({0, 1}), Slice(), ints({1, 3})}, ints({1, 2, 3, 4, 5, 6}, {2, 3}));
  expect_values(y.index({0, Slice(), 1}), {1, 2, 3});
  expect_values(y.index({1, Slice(), 3}), {4, 5, 6});
  CHECK(y.sum().item<std::int64_t>() == 21);
  // Through a transposed view: the write lands in the base tensor.
  Tensor base = zeros({2, 3});
  base.t().index_put_({ints({2})}, kiln::tensor({8.f, 9.f}));
  expect_values(base, {0, 0, 8, 0, 0, 9});
  base.index_put_({kiln::tensor({true, false}), ints({0, 2})}, 1.f, true);
  expect_values(base, {1, 0, 9, 0, 0, 9});
}

TEST_CASE("index_put: out of place, differentiable for x and the value") {
  Tensor x = kt::leaf({4, 3}, 1), v = kt::leaf({2, 3}, 2), b = kt::leaf({3}, 3);
  Tensor idx = ints({3, 1});
  kt::grad_ok([idx](const std::vector<Tensor>& in) { return index_put(in[0], {idx}, in[1]); }, {x, v});
  kt::grad_ok([idx](const std::vector<Tensor>& in) { return index_put(in[0], {idx}, in[1]); }, {x, b});  // broadcast
  // Accumulate with duplicates: each copy of the value gets its own gradient.
  Tensor dup = ints({1, 1, 2});
  Tensor v3 = kt::leaf({3, 3}, 4);
  kt::grad_ok([dup](const std::vector<Tensor>& in) { return index_put(in[0], {dup}, in[1], true); }, {x, v3});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return index_put(in[0], {Slice(), ints({0, 2})}, in[1].index({0, Slice(0, 2)}));
      },
      {x, v});
  // x itself is unchanged.
  Tensor before = x.detach().clone();
  index_put(x, {idx}, v);
  CHECK(equal(x.detach(), before));
}

TEST_CASE("index_put_: recorded by autograd on a fresh tensor and on a non-leaf") {
  Tensor w = kiln::tensor({1.0, 2.0}, kFloat64).requires_grad_();
  Tensor z = zeros({5}, kFloat64);
  z.index_put_({ints({1, 3})}, w);
  CHECK(z.requires_grad());
  CHECK(z.str().find("grad_fn=<index_put_>") != std::string::npos);
  (z * kiln::tensor({1.0, 10.0, 100.0, 1000.0, 10000.0}, kFloat64)).sum().backward();
  expect_values(w.grad(), {10.0, 1000.0});
  // A non-leaf keeps its history: overwritten elements get no gradient.
  Tensor a = kiln::tensor({1.0, 2.0, 3.0}, kFloat64).requires_grad_();
  Tensor s = kiln::tensor({5.0}, kFloat64).requires_grad_();
  Tensor h = a * 2.0;
  h.index_put_({0}, s);
  h.index_put_({2}, s, true);
  (h * h).sum().backward();  // h = (s, 4, 6 + s)
  expect_values(a.grad(), {0.0, 16.0, 44.0});
  expect_values(s.grad(), {2 * 5.0 + 2 * 11.0});
  // The gradient of the recorded write, checked by finite differences.
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor t = in[0] * 1.0;
        t.index_put_({Slice(), ints({0, 0, 2})}, in[1], true);
        t.index_put_({ints({1})}, in[1].index({0}));
        return t;
      },
      {kt::leaf({2, 3}, 5), kt::leaf({2, 3}, 6)});
}

TEST_CASE("index_put_: refusals and bad values") {
  Tensor leaf = zeros({3}).requires_grad_();
  CHECK_KILN_ERROR(leaf.index_put_({0}, 1.f),
                   "[index_put_] in-place operation on a tensor of shape (3,) that requires grad");
  {
    NoGradGuard ng;  // as optimizers do
    leaf.index_put_({0}, 1.f);
  }
  expect_values(leaf.detach(), {1, 0, 0});
  Tensor w = ones({1}).requires_grad_();
  Tensor base = zeros({4});
  Tensor view = base.index({Slice(0, 2)});
  CHECK_KILN_ERROR(view.index_put_({0}, w), "the storage is shared with 1 other tensor(s)");
  Tensor h = exp(kt::leaf({3}));  // exp saves its output for backward: the same storage
  CHECK_KILN_ERROR(h.index_put_({0}, w), "kiln does not track views, so their autograd history would miss the write");
  Tensor x = zeros({2, 3});
  CHECK_KILN_ERROR(x.index_put_({0}, ones({2})),
                   "[index_put_] a value of shape (2,) cannot be broadcast to the indexed shape (3,)");
  CHECK_KILN_ERROR(x.index_put_({ints({0, 1})}, ones({3, 3})), "cannot be broadcast to the indexed shape (2, 3)");
  CHECK_KILN_ERROR(x.index_put_({ints({2})}, 1.f), "[index_put_] index 2 is out of range for dim 0 of size 2");
  CHECK_KILN_ERROR(x.index_put_({0}, Tensor()), "value tensor is undefined");
  CHECK_KILN_ERROR(x.expand({2, 2, 3}).index_put_({0}, 1.f), "[index_put_] the in-place target of shape (2, 2, 3)");
  expect_values(x, {0, 0, 0, 0, 0, 0});
}
