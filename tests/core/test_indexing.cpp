// x.index({...}): basic indexing (views), advanced indexing (copies) with PyTorch's placement
// rule, bool masks, their gradients and bad indices. References are computed by hand from the
// row-major positions of arange.
#include <limits>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::indexing;
using kt::expect_shape;
using kt::expect_values;

namespace {
std::vector<double> iota(std::int64_t from, std::int64_t to, std::int64_t step = 1) {
  std::vector<double> v;
  for (std::int64_t i = from; i < to; i += step) v.push_back(static_cast<double>(i));
  return v;
}
Tensor ints(const std::vector<std::int64_t>& v, const Shape& shape = {}) {
  return kiln::tensor(v, shape.empty() ? Shape{static_cast<std::int64_t>(v.size())} : shape);
}
}  // namespace

TEST_CASE("index: integers, slices, None and Ellipsis give views as in Python") {
  Tensor x = arange(24).reshape({2, 3, 4});
  Tensor r = x.index({0});
  expect_shape(r, {3, 4});
  expect_values(r, iota(0, 12));
  CHECK(r.storage() == x.storage());
  // x[-1, 1:, ::2]
  Tensor s = x.index({-1, Slice(1, None), Slice(None, None, 2)});
  expect_shape(s, {2, 2});
  expect_values(s, {16, 18, 20, 22});
  CHECK(s.storage() == x.storage());
  // x[1, ..., 2] and x[None, ..., 0]
  expect_values(x.index({1, Ellipsis, 2}), {14, 18, 22});
  Tensor n = x.index({None, Ellipsis, 0});
  expect_shape(n, {1, 2, 3});
  expect_values(n, {0, 4, 8, 12, 16, 20});
  expect_shape(x.index({Ellipsis, None}), {2, 3, 4, 1});
  expect_shape(x.index({Slice(0, 2), 1, None, Ellipsis}), {2, 1, 4});
  expect_values(x.index({Slice(0, 2), 1, None, Ellipsis}), {4, 5, 6, 7, 16, 17, 18, 19});
  expect_shape(x.index({}), {2, 3, 4});
  // All integers: a 0-D view.
  Tensor e = x.index({1, 2, 3});
  expect_shape(e, {});
  CHECK(e.item<std::int64_t>() == 23);
  // Writes through a basic index reach x.
  x.index({0, Slice(), 0}).fill_(-1);
  CHECK(x.to_vector<std::int64_t>()[4] == -1);
  CHECK(x.to_vector<std::int64_t>()[8] == -1);
}

TEST_CASE("index: slices clamp like Python's and long steps take the first element") {
  Tensor x = arange(5);
  expect_values(x.index({Slice(-100, 100)}), iota(0, 5));
  expect_shape(x.index({Slice(4, 2)}), {0});
  expect_values(x.index({Slice(-2)}), {3, 4});
  expect_values(x.index({Slice(None, -1)}), {0, 1, 2, 3});
  expect_values(x.index({Slice(1, None, 3)}), {1, 4});
  expect_values(x.index({Slice(0, None, std::numeric_limits<std::int64_t>::max())}), {0});
  expect_shape(x.index({Slice(7)}), {0});
}

TEST_CASE("index: bool scalars add a dim of size 1 (true) or 0 (false)") {
  Tensor x = arange(6).reshape({2, 3});
  expect_shape(x.index({true}), {1, 2, 3});
  expect_values(x.index({true}), iota(0, 6));
  expect_shape(x.index({false}), {0, 2, 3});
  expect_shape(x.index({Slice(), false}), {2, 0, 3});
  expect_shape(x.index({full({}, true, kBool)}), {1, 2, 3});
}

TEST_CASE("index: int64 index tensors select, wrap negatives and broadcast together") {
  Tensor x = arange(12).reshape({3, 4});
  Tensor rows = x.index({ints({2, 0, -1})});
  expect_shape(rows, {3, 4});
  expect_values(rows, {8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  CHECK(rows.storage() != x.storage());  // advanced indexing copies
  // x[[[0], [2]], [1, 3]]: (2, 1) and (2,) broadcast to (2, 2)
  Tensor b = x.index({ints({0, 2}, {2, 1}), ints({1, 3})});
  expect_shape(b, {2, 2});
  expect_values(b, {1, 3, 9, 11});
  // A 2-D index over one dim keeps its shape: x[[[0, 1], [2, 2]]] is (2, 2, 4).
  expect_shape(x.index({ints({0, 1, 2, 2}, {2, 2})}), {2, 2, 4});
  expect_shape(x.index({empty({0}, kInt64)}), {0, 4});
  expect_values(x.index({Slice(), ints({3})}), {3, 7, 11});
}

TEST_CASE("index: advanced dims stay in place when adjacent and go first when apart (PyTorch's rule)") {
  Tensor y = arange(120).reshape({2, 3, 4, 5});  // y[a, b, c, d] = 60a + 20b + 5c + d
  // Adjacent: y[:, [0, 2], [1, 3], :] is (2, 2, 5).
  Tensor adj = y.index({Slice(), ints({0, 2}), ints({1, 3}), Slice()});
  expect_shape(adj, {2, 2, 5});
  std::vector<double> ref;
  const std::int64_t bi[] = {0, 2}, ci[] = {1, 3};
  for (std::int64_t a = 0; a < 2; ++a)
    for (std::int64_t k = 0; k < 2; ++k)
      for (std::int64_t d = 0; d < 5; ++d) ref.push_back(60 * a + 20 * bi[k] + 5 * ci[k] + d);
  expect_values(adj, ref);
  // Apart: y[[[0], [1]], :, [0, 3], 1:3] is (2, 2, 3, 2): index dims first, then b and d.
  Tensor apart = y.index({ints({0, 1}, {2, 1}), Slice(), ints({0, 3}), Slice(1, 3)});
  expect_shape(apart, {2, 2, 3, 2});
  ref.clear();
  const std::int64_t c2[] = {0, 3};
  for (std::int64_t p = 0; p < 2; ++p)
    for (std::int64_t q = 0; q < 2; ++q)
      for (std::int64_t b2 = 0; b2 < 3; ++b2)
        for (std::int64_t s = 0; s < 2; ++s) ref.push_back(60 * p + 20 * b2 + 5 * c2[q] + 1 + s);
  expect_values(apart, ref);
  // An integer is a select first (PyTorch, unlike NumPy): y[:, [0, 2], :, 0] is (2, 2, 4).
  Tensor with_int = y.index({Slice(), ints({0, 2}), Slice(), 0});
  expect_shape(with_int, {2, 2, 4});
  CHECK(with_int.to_vector<std::int64_t>()[5] == 60 * 0 + 20 * 2 + 5 * 1);
}

TEST_CASE("index: bool masks select elements, 1-D over the masked dims") {
  Tensor x = arange(12).reshape({3, 4});
  Tensor m = x.index({x > 5});
  expect_shape(m, {6});
  expect_values(m, iota(6, 12));
  expect_values(x.index({kiln::tensor({true, false, true})}), {0, 1, 2, 3, 8, 9, 10, 11});
  expect_values(x.index({Slice(), kiln::tensor({false, true, true, false})}), {1, 2, 5, 6, 9, 10});
  // A mask over the last two dims of a 3-D tensor, after a slice.
  Tensor y = arange(24).reshape({2, 3, 4});
  std::vector<bool> mv(12, false);
  mv[0] = mv[5] = mv[10] = true;
  Tensor mask = kiln::tensor(mv, {3, 4});
  Tensor ym = y.index({Slice(), mask});
  expect_shape(ym, {2, 3});
  expect_values(ym, {0, 5, 10, 12, 17, 22});
  // A mask and an index tensor broadcast together: x[[true, false, true], [1, 3]] is x[[0, 2], [1, 3]].
  expect_values(x.index({kiln::tensor({true, false, true}), ints({1, 3})}), {1, 11});
  expect_shape(x.index({x > 100}), {0});
}

TEST_CASE("index: gradients through basic, advanced and masked indexing (float64 finite differences)") {
  Tensor x = kt::leaf({3, 4, 5});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].index({Slice(0, 2), 1, None, Ellipsis}); }, {x});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].index({Slice(None, None, 2), -1, Slice(1, 4)}); }, {x});
  // Duplicates accumulate their gradients.
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].index({ints({0, 2, 0, -1})}); }, {x});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].index({ints({0, 2}), Slice(), ints({4, 4})}); }, {x});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return in[0].index({Slice(), ints({1, 1, 3}), ints({0, 2, 0})});
      },
      {x});
  Tensor mask = kiln::tensor(std::vector<bool>{true, false, false, true, true}, {5});
  kt::grad_ok([mask](const std::vector<Tensor>& in) { return in[0].index({Ellipsis, mask}); }, {x});
  Tensor nc = kt::noncontig_leaf({4, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].t().index({ints({2, 0}), ints({1, 3})}); }, {nc});
  // The duplicated row's gradient is the sum of both uses.
  Tensor w = kt::leaf({3, 2});
  w.index({ints({1, 1, 0})}).sum().backward();
  expect_values(w.grad(), {1, 1, 2, 2, 0, 0});
}

TEST_CASE("index: bad indices throw kiln::Error naming the dim, index and size") {
  Tensor x = arange(6).reshape({2, 3});
  CHECK_KILN_ERROR(x.index({0, 3}), "[index] index 3 is out of range for dim 1 of size 3");
  CHECK_KILN_ERROR(x.index({-3}), "index -3 is out of range for dim 0 of size 2");
  CHECK_KILN_ERROR(x.index({Ellipsis, 5}), "index 5 is out of range for dim 1 of size 3");
  CHECK_KILN_ERROR(x.index({ints({0, 2})}), "index 2 is out of range for dim 0 of size 2");
  CHECK_KILN_ERROR(x.index({Slice(), ints({-4})}), "index -4 is out of range for dim 1 of size 3");
  CHECK_KILN_ERROR(x.index({0, 0, 0}), "too many indices for a tensor of shape (2, 3): the indices cover 3 dims");
  CHECK_KILN_ERROR(x.index({Ellipsis, 0, Ellipsis}), "one Ellipsis, got 2");
  CHECK_KILN_ERROR(x.index({Slice(None, None, 0)}), "slice step must be positive, got 0");
  CHECK_KILN_ERROR(x.index({Slice(None, None, -1)}), "slice step must be positive, got -1");
  CHECK_KILN_ERROR(x.index({arange(2).to(kFloat32)}), "must be int64 or bool, got float32");
  CHECK_KILN_ERROR(x.index({kiln::tensor({true, false, true})}),
                   "the bool mask of shape (3,) does not match the indexed shape (2, 3) at dim 0: 3 != 2");
  CHECK_KILN_ERROR(x.index({ints({0, 1}), ints({0, 1, 2})}),
                   "cannot be broadcast together: shape (3,) does not fit (2,)");
  CHECK_KILN_ERROR(x.index({Tensor()}), "an index tensor is undefined");
  CHECK_KILN_ERROR(Tensor().index({0}), "[index] input tensor is undefined");
}
