// Factories: empty/zeros/ones/full, arange, linspace, eye, tensor(...), *_like, scalar_tensor.
#include <limits>

#include "test_util.hpp"

using namespace kiln;

namespace {
using IV = std::vector<std::int64_t>;
}

TEST_CASE("empty / zeros / ones / full") {
  auto e = empty({2, 3});
  CHECK(e.shape() == Shape{2, 3});
  CHECK(e.dtype() == kFloat32);
  CHECK(e.device() == Device::cpu());
  CHECK(e.is_contiguous());
  CHECK_FALSE(e.requires_grad());
  CHECK(empty({4}, kInt64).dtype() == kInt64);

  auto z = zeros({2, 2}, kFloat64);
  CHECK(z.dtype() == kFloat64);
  kt::expect_values(z, {0, 0, 0, 0}, 0, 0);
  auto zi = zeros({3}, kInt64);
  CHECK(zi.to_vector<std::int64_t>() == IV{0, 0, 0});
  auto zb = zeros({2}, kBool);
  CHECK(zb.to_vector<bool>() == std::vector<bool>{false, false});

  auto o = ones({3});
  CHECK(o.dtype() == kFloat32);
  kt::expect_values(o, {1, 1, 1}, 0, 0);
  CHECK(ones({2}, kBool).to_vector<bool>() == std::vector<bool>{true, true});
  CHECK(ones({2}, kInt64).to_vector<std::int64_t>() == IV{1, 1});

  auto f = full({2, 1}, 2.5);
  CHECK(f.dtype() == kFloat32);
  CHECK(f.shape() == Shape{2, 1});
  kt::expect_values(f, {2.5, 2.5}, 0, 0);
  CHECK(full({2}, 7, kInt64).to_vector<std::int64_t>() == IV{7, 7});
  CHECK(full({2}, 2.9, kInt64).to_vector<std::int64_t>() == IV{2, 2});  // truncation
  CHECK(full({2}, -2.9, kInt64).to_vector<std::int64_t>() == IV{-2, -2});
  CHECK(full({1}, 0.5, kBool).item<bool>() == true);
  CHECK(full({1}, true, kFloat64).item<double>() == 1.0);
  const std::int64_t big = (std::int64_t{1} << 53) + 1;  // not representable as a double
  CHECK(full({1}, big, kInt64).item<std::int64_t>() == big);
  CHECK(full({1}, 0.1, kFloat64).item<double>() == 0.1);

  // Shapes with zeros and 0-D.
  CHECK(zeros({0}).numel() == 0);
  CHECK(zeros({3, 0}).shape() == Shape{3, 0});
  CHECK(zeros({}).dim() == 0);
  CHECK(ones({}).item<float>() == 1.0f);

  // Fresh tensors start at version 0.
  CHECK(zeros({2}).version() == 0);
  CHECK(tensor({1, 2}).version() == 0);
  CHECK(arange(3).version() == 0);

  // requires_grad through options.
  auto g = ones({2}, TensorOptions().requires_grad(true));
  CHECK(g.requires_grad());
  CHECK(g.is_leaf());
}

TEST_CASE("negative dimensions are rejected naming the factory") {
  CHECK_KILN_ERROR(empty({2, -1}), "[empty] negative dimension -1 in shape (2, -1)");
  CHECK_KILN_ERROR(zeros({-3}), "[zeros] negative dimension -3 in shape (-3,)");
  CHECK_KILN_ERROR(ones({1, -2}), "[ones] negative dimension -2 in shape (1, -2)");
  CHECK_KILN_ERROR(full({-1}, 3.0), "[full] negative dimension -1 in shape (-1,)");
  CHECK_KILN_ERROR(rand({-1}), "[rand] negative dimension -1");
  CHECK_KILN_ERROR(randn({2, -5}), "[randn] negative dimension -5");
  CHECK_KILN_ERROR(randint(0, 2, {-1}), "[randint] negative dimension -1");
  CHECK_KILN_ERROR(Tensor::empty({-1}, kFloat32, Device::cpu()), "[empty] negative dimension -1 in shape (-1,)");
  CHECK_KILN_ERROR(tensor(std::vector<float>{}, {-1, 0}), "[tensor] negative dimension -1 in shape (-1, 0)");
}

TEST_CASE("arange: integer forms") {
  auto a = arange(5);
  CHECK(a.dtype() == kInt64);
  CHECK(a.shape() == Shape{5});
  CHECK(a.to_vector<std::int64_t>() == IV{0, 1, 2, 3, 4});
  CHECK(arange(2, 7).to_vector<std::int64_t>() == IV{2, 3, 4, 5, 6});
  CHECK(arange(0, 10, 3).to_vector<std::int64_t>() == IV{0, 3, 6, 9});
  CHECK(arange(0, 9, 3).to_vector<std::int64_t>() == IV{0, 3, 6});
  CHECK(arange(5, 0, -1).to_vector<std::int64_t>() == IV{5, 4, 3, 2, 1});
  CHECK(arange(10, -3, -4).to_vector<std::int64_t>() == IV{10, 6, 2, -2});
  CHECK(arange(-3, 0).to_vector<std::int64_t>() == IV{-3, -2, -1});
  CHECK(arange(3, 3).numel() == 0);
  CHECK(arange(0).shape() == Shape{0});
  // Integer forms are exact beyond 2^53.
  const std::int64_t big = (std::int64_t{1} << 53) + 1;
  CHECK(arange(big, big + 3).to_vector<std::int64_t>() == IV{big, big + 1, big + 2});
  CHECK(arange(big + 3, big, -1).to_vector<std::int64_t>() == IV{big + 3, big + 2, big + 1});
  const std::int64_t hi = std::numeric_limits<std::int64_t>::max(), lo = std::numeric_limits<std::int64_t>::min();
  CHECK(arange(hi - 2, hi).to_vector<std::int64_t>() == IV{hi - 2, hi - 1});
  CHECK(arange(lo + 2, lo, -1).to_vector<std::int64_t>() == IV{lo + 2, lo + 1});
  // The direction check is exact too (both bounds round to the same double).
  CHECK_KILN_ERROR(arange(big, big - 1),
                   "[arange] start 9007199254740993 cannot reach end 9007199254740992 with step 1");
  // Integer arguments with a float dtype.
  auto af = arange(0, 4, 1, kFloat64);
  CHECK(af.dtype() == kFloat64);
  kt::expect_values(af, {0, 1, 2, 3}, 0, 0);
}

TEST_CASE("arange: floating forms") {
  auto a = arange(0.0, 1.0, 0.25);
  CHECK(a.dtype() == kFloat32);
  kt::expect_values(a, {0, 0.25, 0.5, 0.75}, 0, 0);
  auto b = arange(1, 2.5, 0.5);  // mixed int/float arguments -> float
  CHECK(b.dtype() == kFloat32);
  kt::expect_values(b, {1, 1.5, 2}, 0, 0);
  auto c = arange(2.5);
  CHECK(c.dtype() == kFloat32);
  kt::expect_values(c, {0, 1, 2}, 0, 0);
  auto d = arange(1.0, -1.0, -0.5, kFloat64);
  CHECK(d.dtype() == kFloat64);
  kt::expect_values(d, {1, 0.5, 0, -0.5}, 0, 0);
  // Number of elements is ceil((end - start) / step), as in NumPy / PyTorch.
  CHECK(arange(0.0, 1.0, 0.1).numel() == 10);
  CHECK(arange(0.0, 0.3, 0.1).numel() == 3);
  auto x = arange(0.0, 1.0, 0.1, kFloat64).to_vector<double>();
  CHECK(x[7] == 0.0 + 7 * 0.1);  // start + i*step, no accumulated error
}

TEST_CASE("arange: bad steps") {
  CHECK_KILN_ERROR(arange(0, 5, 0), "[arange] step must be finite and nonzero, got 0");
  CHECK_KILN_ERROR(arange(0.0, 1.0, 0.0), "[arange] step must be finite and nonzero, got 0");
  CHECK_KILN_ERROR(arange(0.0, 1.0, std::numeric_limits<double>::infinity()),
                   "[arange] step must be finite and nonzero, got inf");
  CHECK_KILN_ERROR(arange(0, 5, -1), "[arange] start 0 cannot reach end 5 with step -1");
  CHECK_KILN_ERROR(arange(5, 0, 2), "[arange] start 5 cannot reach end 0 with step 2");
  CHECK_KILN_ERROR(arange(0.0, std::numeric_limits<double>::infinity()), "[arange] start 0 and end inf must be finite");
}

TEST_CASE("linspace keeps both end points exact") {
  auto a = linspace(0, 1, 5);
  CHECK(a.dtype() == kFloat32);
  kt::expect_values(a, {0, 0.25, 0.5, 0.75, 1}, 0, 0);
  auto b = linspace(0.1, 0.7, 7, kFloat64).to_vector<double>();
  REQUIRE(b.size() == 7);
  CHECK(b.front() == 0.1);
  CHECK(b.back() == 0.7);
  for (int i = 0; i < 7; ++i) CHECK(b[i] == doctest::Approx(0.1 + 0.1 * i).epsilon(1e-14));
  auto c = linspace(-3.3, 7.7, 101, kFloat64).to_vector<double>();
  CHECK(c.front() == -3.3);
  CHECK(c.back() == 7.7);
  CHECK(c[50] == doctest::Approx(2.2).epsilon(1e-14));
  auto f = linspace(0.1, 0.7, 4).to_vector<float>();
  CHECK(f.front() == 0.1f);
  CHECK(f.back() == 0.7f);
  auto desc = linspace(2, -2, 5);
  kt::expect_values(desc, {2, 1, 0, -1, -2}, 0, 0);
  CHECK(linspace(3, 9, 1).to_vector<float>() == std::vector<float>{3});
  CHECK(linspace(3, 9, 2).to_vector<float>() == std::vector<float>{3, 9});
  CHECK(linspace(3, 9, 0).shape() == Shape{0});
  CHECK(linspace(0, 10, 3, kInt64).to_vector<std::int64_t>() == IV{0, 5, 10});
  CHECK_KILN_ERROR(linspace(0, 1, -1), "[linspace] number of steps must be >= 0, got -1");
}

TEST_CASE("eye") {
  auto e = eye(3);
  CHECK(e.shape() == Shape{3, 3});
  CHECK(e.dtype() == kFloat32);
  kt::expect_values(e, {1, 0, 0, 0, 1, 0, 0, 0, 1}, 0, 0);
  auto r = eye(2, 3, kInt64);
  CHECK(r.dtype() == kInt64);
  CHECK(r.to_vector<std::int64_t>() == IV{1, 0, 0, 0, 1, 0});
  auto t = eye(3, 2, kBool);
  CHECK(t.to_vector<bool>() == std::vector<bool>{true, false, false, true, false, false});
  CHECK(eye(0).shape() == Shape{0, 0});
  CHECK(eye(2, 0).shape() == Shape{2, 0});
  CHECK_KILN_ERROR(eye(-1), "[eye] n must be >= 0, got -1");
  CHECK_KILN_ERROR(eye(2, -3), "[eye] m must be >= 0, got -3");
}

TEST_CASE("tensor(...) from initializer lists") {
  auto i = tensor({1, 2, 3});
  CHECK(i.dtype() == kInt64);
  CHECK(i.shape() == Shape{3});
  CHECK(i.to_vector<std::int64_t>() == IV{1, 2, 3});
  auto i64 = tensor({std::int64_t{-5}, std::int64_t{6}});
  CHECK(i64.dtype() == kInt64);
  CHECK(i64.to_vector<std::int64_t>() == IV{-5, 6});
  auto f = tensor({1.5f, -2.0f});
  CHECK(f.dtype() == kFloat32);
  CHECK(f.to_vector<float>() == std::vector<float>{1.5f, -2.0f});
  auto d = tensor({0.1, 0.2});  // double literals default to float32, as in PyTorch
  CHECK(d.dtype() == kFloat32);
  CHECK(d.to_vector<float>() == std::vector<float>{0.1f, 0.2f});
  auto d64 = tensor({0.1, 0.2}, kFloat64);
  CHECK(d64.to_vector<double>() == std::vector<double>{0.1, 0.2});
  auto b = tensor({true, false, true});
  CHECK(b.dtype() == kBool);
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, false, true});
  auto conv = tensor({1, 0, 2}, kFloat64);
  CHECK(conv.dtype() == kFloat64);
  kt::expect_values(conv, {1, 0, 2}, 0, 0);
  auto tob = tensor({1.5f, 0.0f}, kBool);
  CHECK(tob.to_vector<bool>() == std::vector<bool>{true, false});
  auto one = tensor({5});
  CHECK(one.shape() == Shape{1});
  auto rg = tensor({1.0f, 2.0f}, TensorOptions().requires_grad(true));
  CHECK(rg.requires_grad());
}

TEST_CASE("tensor(...) from std::vector with a shape") {
  auto a = tensor(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(a.dtype() == kFloat64);  // from the element type
  CHECK(a.shape() == Shape{2, 3});
  CHECK(a.is_contiguous());
  CHECK(a.select(0, 1).to_vector<double>() == std::vector<double>{4, 5, 6});
  auto f = tensor(std::vector<float>{1, 2, 3, 4}, {2, 1, 2}, kInt64);
  CHECK(f.dtype() == kInt64);
  CHECK(f.shape() == Shape{2, 1, 2});
  CHECK(f.to_vector<std::int64_t>() == IV{1, 2, 3, 4});
  auto i = tensor(std::vector<std::int64_t>{7, 8});
  CHECK(i.dtype() == kInt64);
  CHECK(i.shape() == Shape{2});
  auto b = tensor(std::vector<bool>{true, false, false, true}, {2, 2});
  CHECK(b.dtype() == kBool);
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, false, false, true});
  auto e = tensor(std::vector<float>{}, {0, 3});
  CHECK(e.shape() == Shape{0, 3});
  CHECK(tensor(std::vector<float>{}).shape() == Shape{0});
  // The tensor owns a copy of the values.
  std::vector<float> src{1, 2};
  auto c = tensor(src);
  src[0] = 100;
  CHECK(c.to_vector<float>() == std::vector<float>{1, 2});

  CHECK_KILN_ERROR(tensor(std::vector<float>{1, 2, 3, 4, 5, 6}, {4}),
                   "[tensor] 6 values cannot fill shape (4,) (4 elements)");
  CHECK_KILN_ERROR(tensor(std::vector<double>{1, 2, 3}, {2, 2}),
                   "[tensor] 3 values cannot fill shape (2, 2) (4 elements)");
  CHECK_KILN_ERROR(tensor(std::vector<bool>{true}, {2}), "[tensor] 1 values cannot fill shape (2,) (2 elements)");
}

TEST_CASE("zeros_like and the other _like factories") {
  auto base = tensor({1, 2, 3, 4, 5, 6}).reshape({2, 3}).t();  // non-contiguous int64
  auto z = zeros_like(base);
  CHECK(z.shape() == Shape{3, 2});
  CHECK(z.dtype() == kInt64);
  CHECK(z.is_contiguous());
  CHECK(z.to_vector<std::int64_t>() == IV(6, 0));
  auto o = ones_like(base, kFloat64);
  CHECK(o.dtype() == kFloat64);
  kt::expect_values(o, {1, 1, 1, 1, 1, 1}, 0, 0);
  auto f = full_like(base, 9);
  CHECK(f.dtype() == kInt64);
  CHECK(f.to_vector<std::int64_t>() == IV(6, 9));
  auto ff = full_like(base, 0.5, kFloat32);
  CHECK(ff.dtype() == kFloat32);
  kt::expect_values(ff, {0.5, 0.5, 0.5, 0.5, 0.5, 0.5}, 0, 0);
  auto e = empty_like(base);
  CHECK(e.shape() == Shape{3, 2});
  CHECK(e.dtype() == kInt64);
  CHECK(e.storage() != base.storage());
  CHECK(empty_like(base, kBool).dtype() == kBool);
  CHECK(zeros_like(base, TensorOptions(kFloat32).requires_grad(true)).requires_grad());

  auto fl = ones({4, 5}, kFloat64);
  auto r = rand_like(fl);
  CHECK(r.shape() == Shape{4, 5});
  CHECK(r.dtype() == kFloat64);
  auto rn = randn_like(fl);
  CHECK(rn.dtype() == kFloat64);
  auto ri = randint_like(base, 0, 3);
  CHECK(ri.dtype() == kInt64);
  CHECK(ri.shape() == Shape{3, 2});
  for (auto v : ri.to_vector<std::int64_t>()) CHECK((v >= 0 && v < 3));
  // The result does not inherit requires_grad.
  auto leaf = ones({2}).requires_grad_();
  CHECK_FALSE(zeros_like(leaf).requires_grad());
}

TEST_CASE("scalar_tensor") {
  auto s = scalar_tensor(3);
  CHECK(s.dim() == 0);
  CHECK(s.shape() == Shape{});
  CHECK(s.dtype() == kFloat32);
  CHECK(s.item<float>() == 3.0f);
  auto i = scalar_tensor(-4, kInt64);
  CHECK(i.item<std::int64_t>() == -4);
  auto d = scalar_tensor(0.1, kFloat64);
  CHECK(d.item<double>() == 0.1);
  auto b = scalar_tensor(true, kBool);
  CHECK(b.item<bool>());
}
