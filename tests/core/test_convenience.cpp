// kiln::tensor from nested braced lists, accessor<T, N>() and std::ostream << Tensor.
#include <sstream>

#include "test_util.hpp"

using namespace kiln;
using kt::expect_shape;
using kt::expect_values;

TEST_CASE("tensor: nested lists give the shape, and the dtype as torch.tensor infers it") {
  Tensor a = kiln::tensor({{1, 2}, {3, 4}});
  CHECK(a.dtype() == kInt64);
  expect_shape(a, {2, 2});
  expect_values(a, {1, 2, 3, 4});
  Tensor b = kiln::tensor({{{1, 2, 3}, {4, 5, 6}}, {{7, 8, 9}, {10, 11, 12}}});
  expect_shape(b, {2, 2, 3});
  expect_values(b, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  Tensor f = kiln::tensor({{1, 2.5}, {3, 4}});  // any floating value: float32
  CHECK(f.dtype() == kFloat32);
  expect_values(f, {1, 2.5, 3, 4});
  CHECK(kiln::tensor({{true, false}}).dtype() == kBool);
  CHECK(kiln::tensor({{true, 2}}).dtype() == kInt64);
  CHECK(kiln::tensor({{1.5f}}).dtype() == kFloat32);
  Tensor big = kiln::tensor({{std::int64_t{1} << 60, 1}});  // int64 values stay exact
  CHECK(big.to_vector<std::int64_t>()[0] == std::int64_t{1} << 60);
  // Options choose the dtype (float values truncate into integers, as torch.tensor does).
  Tensor d = kiln::tensor({{1, 2}, {3, 4}}, TensorOptions(kFloat64).requires_grad(true));
  CHECK(d.dtype() == kFloat64);
  CHECK(d.requires_grad());
  expect_values(kiln::tensor({{1.7, -2.7}}, kInt64), {1, -2});
  expect_values(kiln::tensor({{0, 3}}, kBool), {0, 1});
  expect_shape(kiln::tensor({{1}, {2}, {3}}), {3, 1});  // inner lists of one element stay lists
  expect_shape(kiln::tensor({{{2.5}}}), {1, 1, 1});
  expect_shape(kiln::tensor({{}, {}}), {2, 0});
  CHECK(kiln::tensor({{}, {}}).dtype() == kFloat32);
  expect_shape(kiln::tensor({}), {0});
  expect_values(kiln::tensor({1, 2.5}), {1, 2.5});  // mixed flat lists work too
  // The flat overloads are unchanged: tensor({1, 2}) is 1-D int64.
  expect_shape(kiln::tensor({1, 2}), {2});
  CHECK(kiln::tensor({1, 2}).dtype() == kInt64);
}

TEST_CASE("tensor: ragged nested lists throw naming the position") {
  CHECK_KILN_ERROR(kiln::tensor({{1, 2}, {3}}),
                   "[tensor] ragged nested list: element [1] has length 1, but the elements before it have length 2");
  CHECK_KILN_ERROR(kiln::tensor({{{1, 2}, {3, 4}}, {{5, 6}, {7}}}), "element [1][1] has length 1");
  CHECK_KILN_ERROR(kiln::tensor({{1, 2}, 3}), "element [1] is a number, but a list of length 2 is expected");
  CHECK_KILN_ERROR(kiln::tensor({{1, 2}, {3, {4}}}), "element [1][1] is a list");
}

TEST_CASE("accessor: reads and writes through strides with dtype and dims checked") {
  Tensor x = arange(6).reshape({2, 3}).to(kFloat32);
  auto a = x.accessor<float, 2>();
  CHECK(a.size(0) == 2);
  CHECK(a.size(1) == 3);
  CHECK(a[1][2] == 5.f);
  a[0][1] = 10.f;
  CHECK(x.to_vector<float>()[1] == 10.f);
  // A transposed view: a[i][j] follows its strides.
  auto t = x.t().accessor<const float, 2>();
  CHECK(t[2][1] == 5.f);
  CHECK(t[1][0] == 10.f);
  Tensor y = arange(24).reshape({2, 3, 4});
  auto c = y.accessor<std::int64_t, 3>();
  std::int64_t sum = 0;
  for (std::int64_t i = 0; i < c.size(0); ++i)
    for (std::int64_t j = 0; j < c.size(1); ++j)
      for (std::int64_t k = 0; k < c.size(2); ++k) sum += c[i][j][k] * (i == 1 && j == 2 ? 1 : 0);
  CHECK(sum == 20 + 21 + 22 + 23);
  auto row = c[1];
  CHECK(row[2][3] == 23);
  CHECK_KILN_ERROR((x.accessor<double, 2>()), "[accessor] requested float64 elements from a float32 tensor");
  CHECK_KILN_ERROR((x.accessor<float, 3>()), "requested 3 dims from a tensor of shape (2, 3) (2 dims)");
  float host[4] = {};
  Tensor on_gpu = Tensor::from_blob(host, {4}, kFloat32, Device::cuda(0));  // only wraps: nothing is read
  CHECK_KILN_ERROR((on_gpu.accessor<float, 1>()), "accessor reads host memory, but the tensor is on cuda:0");
}

TEST_CASE("accessor: a writable one bumps the version, so a tensor saved for backward notices the edit") {
  Tensor w = kt::leaf({3});
  Tensor b = kiln::tensor({1.0, 2.0, 3.0}).to(kFloat64);
  Tensor loss = (w * b).sum();  // saves b for w's gradient
  const auto v = b.version();
  {
    auto r = b.accessor<const double, 1>();  // reading changes nothing
    CHECK(r[2] == 3.0);
  }
  CHECK(b.version() == v);
  auto a = b.accessor<double, 1>();
  CHECK(b.version() == v + 1);
  a[0] = 5.0;
  CHECK_KILN_ERROR(loss.backward(), "saved for backward was modified by an in-place operation");
  // A graph made after the edit saves the new values: d/dw sum(w * b) = b.
  Tensor loss2 = (w * b).sum();
  loss2.backward();
  kt::expect_values(w.grad(), {5.0, 2.0, 3.0});
}

TEST_CASE("operator<<: prints as str(), with grad_fn or requires_grad") {
  std::ostringstream os;
  Tensor x = arange(6).reshape({2, 3});
  os << x;
  CHECK(os.str() == x.str());
  CHECK(os.str() == "tensor([[0, 1, 2],\n        [3, 4, 5]], shape=(2, 3), dtype=int64, device=cpu)");
  Tensor w = ones({2}).requires_grad_();
  std::ostringstream g;
  g << w << "|" << w * 2.0;
  CHECK(g.str() ==
        "tensor([1.0000, 1.0000], shape=(2,), dtype=float32, device=cpu, requires_grad=true)|"
        "tensor([2.0000, 2.0000], shape=(2,), dtype=float32, device=cpu, grad_fn=<mul>)");
  std::ostringstream big;
  big << arange(2000);
  CHECK(big.str() == "tensor([   0,    1,    2, ..., 1997, 1998, 1999], shape=(2000,), dtype=int64, device=cpu)");
}
