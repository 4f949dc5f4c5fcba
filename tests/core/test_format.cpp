// fmt::format("{}", tensor): values, shape, dtype, device; NumPy-style elision.
#include <algorithm>
#include <cmath>
#include <limits>

#include "test_util.hpp"

using namespace kiln;

TEST_CASE("format: small int64 matrix prints every value") {
  auto x = arange(6).reshape({2, 3});
  CHECK(fmt::format("{}", x) == "tensor([[0, 1, 2],\n        [3, 4, 5]], shape=(2, 3), dtype=int64, device=cpu)");
  CHECK(x.str() == fmt::format("{}", x));
  // A transposed view prints its logical (row-major) order.
  CHECK(fmt::format("{}", x.t()) ==
        "tensor([[0, 3],\n        [1, 4],\n        [2, 5]], shape=(3, 2), dtype=int64, device=cpu)");
  // Columns are right-aligned to the widest printed value.
  CHECK(fmt::format("{}", tensor({-10, 5, 100})) == "tensor([-10,   5, 100], shape=(3,), dtype=int64, device=cpu)");
}

TEST_CASE("format: 3-D tensors separate blocks by a blank line") {
  auto x = arange(8).reshape({2, 2, 2});
  CHECK(fmt::format("{}", x) ==
        "tensor([[[0, 1],\n         [2, 3]],\n\n        [[4, 5],\n         [6, 7]]], shape=(2, 2, 2), dtype=int64, "
        "device=cpu)");
}

TEST_CASE("format: floats and bools and special values") {
  CHECK(fmt::format("{}", tensor({1.5f, -2.0f, 0.25f})) ==
        "tensor([ 1.5000, -2.0000,  0.2500], shape=(3,), dtype=float32, device=cpu)");
  CHECK(fmt::format("{}", tensor({1.0, 2.5}, kFloat64)) ==
        "tensor([1.0000, 2.5000], shape=(2,), dtype=float64, device=cpu)");
  CHECK(fmt::format("{}", tensor({true, false})) == "tensor([ True, False], shape=(2,), dtype=bool, device=cpu)");
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK(fmt::format("{}", tensor({nan, inf, -1.0f})) ==
        "tensor([    nan,     inf, -1.0000], shape=(3,), dtype=float32, device=cpu)");
  CHECK(fmt::format("{}", tensor({-inf})) == "tensor([-inf], shape=(1,), dtype=float32, device=cpu)");
  // Very small or very large magnitudes switch to scientific notation.
  CHECK(fmt::format("{}", tensor({1e-5, 1.0}, kFloat64)) ==
        "tensor([1.0000e-05, 1.0000e+00], shape=(2,), dtype=float64, device=cpu)");
  CHECK(fmt::format("{}", tensor({1e9f, 2.0f})) ==
        "tensor([1.0000e+09, 2.0000e+00], shape=(2,), dtype=float32, device=cpu)");
  CHECK(fmt::format("{}", zeros({2})) == "tensor([0.0000, 0.0000], shape=(2,), dtype=float32, device=cpu)");
}

TEST_CASE("format: 0-D and empty and undefined tensors") {
  CHECK(fmt::format("{}", scalar_tensor(3.5)) == "tensor(3.5000, shape=(), dtype=float32, device=cpu)");
  CHECK(fmt::format("{}", scalar_tensor(7, kInt64)) == "tensor(7, shape=(), dtype=int64, device=cpu)");
  CHECK(fmt::format("{}", scalar_tensor(false, kBool)) == "tensor(False, shape=(), dtype=bool, device=cpu)");
  CHECK(fmt::format("{}", zeros({0})) == "tensor([], shape=(0,), dtype=float32, device=cpu)");
  CHECK(fmt::format("{}", zeros({2, 0}, kInt64)) == "tensor([], shape=(2, 0), dtype=int64, device=cpu)");
  CHECK(fmt::format("{}", Tensor()) == "tensor(undefined)");
}

TEST_CASE("format: requires_grad is shown") {
  auto x = ones({2}).requires_grad_();
  CHECK(fmt::format("{}", x) == "tensor([1.0000, 1.0000], shape=(2,), dtype=float32, device=cpu, requires_grad=true)");
}

TEST_CASE("format: large tensors are elided with '...'") {
  // 1000 elements print in full; more are summarized with 3 edge items.
  auto full1000 = fmt::format("{}", arange(1000));
  CHECK(full1000.find("...") == std::string::npos);
  CHECK(full1000.find("500,") != std::string::npos);
  CHECK(fmt::format("{}", arange(2000)) ==
        "tensor([   0,    1,    2, ..., 1997, 1998, 1999], shape=(2000,), dtype=int64, device=cpu)");

  auto big = arange(1000000).reshape({1000, 1000});
  auto s = fmt::format("{}", big);
  CHECK(s.size() < 600);
  CHECK(s.find("...") != std::string::npos);
  CHECK(s.find("shape=(1000, 1000), dtype=int64, device=cpu") != std::string::npos);
  CHECK(s.rfind("tensor([[     0,      1,      2, ...,    997,    998,    999],", 0) == 0);
  CHECK(s.find("\n        ...,\n") != std::string::npos);
  CHECK(s.find("[999000, 999001, 999002, ..., 999997, 999998, 999999]]") != std::string::npos);
  CHECK(std::count(s.begin(), s.end(), '\n') == 6);  // 6 rows + the ellipsis row

  auto fz = fmt::format("{}", zeros({1000, 1000}));
  CHECK(fz.size() < 600);
  CHECK(fz.find("...") != std::string::npos);
  CHECK(fz.find("dtype=float32") != std::string::npos);
  auto bz = fmt::format("{}", ones({1001}, kBool));
  CHECK(bz == "tensor([ True,  True,  True, ...,  True,  True,  True], shape=(1001,), dtype=bool, device=cpu)");
}

TEST_CASE("format: dtype and device formatters") {
  CHECK(fmt::format("{}", kFloat32) == "float32");
  CHECK(fmt::format("{}", kInt64) == "int64");
  CHECK(fmt::format("{}", kBool) == "bool");
  CHECK(fmt::format("{}", kFloat64) == "float64");
  CHECK(fmt::format("{}", Device::cpu()) == "cpu");
  CHECK(fmt::format("{}", Device::cuda(1)) == "cuda:1");
  CHECK(fmt::format("{:>8}", kInt64) == "   int64");
  CHECK(fmt::format("[{:<6}]", Device::cpu()) == "[cpu   ]");
}
