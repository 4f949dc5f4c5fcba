// In-place ops: values, broadcasting, dtype rules, version counter, grad-mode guard.
#include "test_util.hpp"

using namespace kiln;

namespace {
using IV = std::vector<std::int64_t>;
}

TEST_CASE("fill_ / zero_") {
  auto x = zeros({2, 3});
  x.fill_(2.5);
  kt::expect_values(x, {2.5, 2.5, 2.5, 2.5, 2.5, 2.5}, 0, 0);
  x.zero_();
  kt::expect_values(x, {0, 0, 0, 0, 0, 0}, 0, 0);
  auto i = zeros({3}, kInt64);
  i.fill_(-7);
  CHECK(i.to_vector<std::int64_t>() == IV{-7, -7, -7});
  i.fill_(3.9);  // truncated like a conversion
  CHECK(i.to_vector<std::int64_t>() == IV{3, 3, 3});
  auto b = zeros({2}, kBool);
  b.fill_(true);
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, true});
  auto s = scalar_tensor(0.0, kFloat64);
  s.fill_(4);
  CHECK(s.item<double>() == 4.0);
  auto e = zeros({0, 3});
  e.fill_(1);  // no-op on an empty tensor
  CHECK(e.numel() == 0);
  // fill_ returns *this for chaining.
  CHECK(&x.fill_(1) == &x);
}

TEST_CASE("copy_ broadcasts and converts dtype") {
  auto x = zeros({2, 3});
  x.copy_(tensor({1, 2, 3}));  // int64 row broadcast into float32
  kt::expect_values(x, {1, 2, 3, 1, 2, 3}, 0, 0);
  x.copy_(tensor({10.5, 20.5}, kFloat64).view({2, 1}));  // column broadcast
  kt::expect_values(x, {10.5, 10.5, 10.5, 20.5, 20.5, 20.5}, 0, 0);
  x.copy_(scalar_tensor(true, kBool));
  kt::expect_values(x, {1, 1, 1, 1, 1, 1}, 0, 0);

  auto i = zeros({4}, kInt64);
  i.copy_(tensor({1.9f, -1.9f, 0.5f, 7.0f}));
  CHECK(i.to_vector<std::int64_t>() == IV{1, -1, 0, 7});
  auto b = zeros({3}, kBool);
  b.copy_(tensor({0.0f, -0.5f, 2.0f}));
  CHECK(b.to_vector<bool>() == std::vector<bool>{false, true, true});

  // From a non-contiguous source into a non-contiguous destination.
  auto src = arange(6).reshape({2, 3}).t();  // (3, 2)
  auto dst = zeros({2, 3}, kFloat64).t();    // (3, 2), strides (1, 3)
  dst.copy_(src);
  kt::expect_values(dst, {0, 3, 1, 4, 2, 5}, 0, 0);
  kt::expect_values(dst.t(), {0, 1, 2, 3, 4, 5}, 0, 0);

  CHECK_KILN_ERROR(zeros({3}).copy_(zeros({4})), "[copy_] cannot broadcast shape (4,) to (3,)");
  CHECK_KILN_ERROR(zeros({3}).copy_(zeros({2, 3})), "[copy_] cannot broadcast shape (2, 3) to (3,)");
}

TEST_CASE("add_ / sub_ / mul_ / div_ values") {
  auto x = tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({2, 2});
  x.add_(tensor({10.0f, 20.0f}));
  kt::expect_values(x, {11, 22, 13, 24}, 0, 0);
  x.add_(ones({2, 2}), 2);  // alpha
  kt::expect_values(x, {13, 24, 15, 26}, 0, 0);
  x.add_(ones({2}), -0.5);
  kt::expect_values(x, {12.5, 23.5, 14.5, 25.5}, 0, 0);
  x.sub_(tensor({0.5f, 1.5f}));
  kt::expect_values(x, {12, 22, 14, 24}, 0, 0);
  x.mul_(tensor({2.0f}).view({1, 1}));
  kt::expect_values(x, {24, 44, 28, 48}, 0, 0);
  x.mul_(0.5);
  kt::expect_values(x, {12, 22, 14, 24}, 0, 0);
  x.div_(4);
  kt::expect_values(x, {3, 5.5, 3.5, 6}, 0, 0);
  x.add_(1.5);
  kt::expect_values(x, {4.5, 7, 5, 7.5}, 0, 0);

  // A float64 tensor accepts lower types.
  auto d = zeros({3}, kFloat64);
  d.add_(tensor({1, 2, 3}));
  d.add_(tensor({true, false, true}));
  d.mul_(tensor({0.5f, 0.5f, 0.5f}));
  kt::expect_values(d, {1, 1, 2}, 0, 0);

  // Integer tensors with integer operands stay exact.
  auto i = tensor({1, 2, 3});
  i.add_(tensor({10, 20, 30}), 3);
  CHECK(i.to_vector<std::int64_t>() == IV{31, 62, 93});
  i.mul_(2);
  i.add_(-1);
  CHECK(i.to_vector<std::int64_t>() == IV{61, 123, 185});
  i.sub_(tensor({1, 3, 5}));
  CHECK(i.to_vector<std::int64_t>() == IV{60, 120, 180});
}

TEST_CASE("in-place ops reject results that do not fit the target") {
  auto i = tensor({1, 2, 3});
  CHECK_KILN_ERROR(i.add_(tensor({0.5f, 0.5f, 0.5f})),
                   "[add_] result type float32 cannot be stored in a int64 tensor in place");
  CHECK_KILN_ERROR(i.mul_(tensor({2.0f})), "[mul_] result type float32 cannot be stored in a int64 tensor in place");
  // The alpha form must apply the same rule (no silent conversion of `other` first).
  CHECK_KILN_ERROR(i.add_(tensor({0.5f, 0.5f, 0.5f}), 2),
                   "[add_] result type float32 cannot be stored in a int64 tensor in place");
  // Float scalars cannot be stored in an integer tensor (no silent truncation).
  CHECK_KILN_ERROR(i.mul_(2.5), "[mul_] result type float32 cannot be stored in a int64 tensor in place");
  CHECK_KILN_ERROR(i.add_(0.5), "[add_] result type float32 cannot be stored in a int64 tensor in place");
  CHECK_KILN_ERROR(i.add_(tensor({1, 1, 1}), 0.5),
                   "[add_] result type float32 cannot be stored in a int64 tensor in place");
  // True division of an integer tensor gives floats.
  CHECK_KILN_ERROR(i.div_(2), "[div_] result type float32 cannot be stored in a int64 tensor in place");
  auto b = tensor({true, false});
  CHECK_KILN_ERROR(b.add_(1), "[add_] result type int64 cannot be stored in a bool tensor in place");
  CHECK_KILN_ERROR(b.mul_(tensor({2, 2})), "[mul_] result type int64 cannot be stored in a bool tensor in place");
  // Nothing was modified by the failed calls, and the version did not move.
  CHECK(i.to_vector<std::int64_t>() == IV{1, 2, 3});
  CHECK(i.version() == 0);
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, false});
  // A bool tensor may be multiplied by bools.
  b.mul_(tensor({true, true}));
  CHECK(b.to_vector<bool>() == std::vector<bool>{true, false});
  b.mul_(false);
  CHECK(b.to_vector<bool>() == std::vector<bool>{false, false});

  CHECK_KILN_ERROR(zeros({3}).add_(zeros({2, 3})),
                   "[add_] cannot broadcast (2, 3) into the in-place target of shape (3,)");
  CHECK_KILN_ERROR(zeros({3}).mul_(zeros({2})), "[mul_] shapes (3,) and (2,) cannot be broadcast: 3 != 2 at dim 0");
  CHECK_KILN_ERROR(zeros({3}).add_(zeros({2, 3}), 2),
                   "[add_] cannot broadcast (2, 3) into the in-place target of shape (3,)");
}

TEST_CASE("every in-place write bumps the storage version once") {
  auto x = zeros({2, 3});
  CHECK(x.version() == 0);
  x.fill_(1);
  CHECK(x.version() == 1);
  x.copy_(ones({3}));
  CHECK(x.version() == 2);
  x.add_(ones({2, 3}));
  CHECK(x.version() == 3);
  x.add_(ones({2, 3}), 3);
  CHECK(x.version() == 4);
  x.add_(1);
  CHECK(x.version() == 5);
  x.sub_(ones({3}));
  CHECK(x.version() == 6);
  x.mul_(ones({2, 3}));
  CHECK(x.version() == 7);
  x.mul_(2);
  CHECK(x.version() == 8);
  x.div_(2);
  CHECK(x.version() == 9);
  x.zero_();
  CHECK(x.version() == 10);
  // Views share the counter with their base.
  auto v = x.select(0, 1);
  v.fill_(3);
  CHECK(x.version() == 11);
  CHECK(v.version() == 11);
  x.t().add_(1.0);
  CHECK(v.version() == 12);
  // Out-of-place ops do not touch it.
  auto y = x * 2.0 + x;
  CHECK(x.version() == 12);
  CHECK(y.version() == 0);
  // A clone has its own counter.
  auto c = x.clone();
  c.fill_(0);
  CHECK(x.version() == 12);
  CHECK(c.version() == 1);
}

TEST_CASE("in-place on a tensor that requires grad: error in grad mode but allowed under NoGradGuard") {
  auto w = tensor({1.0f, 2.0f}).requires_grad_();
  REQUIRE(autograd::grad_enabled());
  CHECK_KILN_ERROR(w.fill_(0), "[fill_] in-place operation on a tensor of shape (2,) that requires grad");
  CHECK_KILN_ERROR(w.zero_(), "[fill_] in-place operation");
  CHECK_KILN_ERROR(w.copy_(ones({2})), "[copy_] in-place operation on a tensor of shape (2,) that requires grad");
  CHECK_KILN_ERROR(w.add_(ones({2})), "[add_] in-place operation");
  CHECK_KILN_ERROR(w.add_(ones({2}), 2), "[add_] in-place operation");
  CHECK_KILN_ERROR(w.add_(1), "[add_] in-place operation");
  CHECK_KILN_ERROR(w.sub_(ones({2})), "[add_] in-place operation");
  CHECK_KILN_ERROR(w.mul_(ones({2})), "[mul_] in-place operation");
  CHECK_KILN_ERROR(w.mul_(3), "[mul_] in-place operation");
  CHECK_KILN_ERROR(w.div_(3), "[div_] in-place operation");
  CHECK_KILN_ERROR(w.fill_(0), "NoGradGuard");
  // Nothing changed.
  kt::expect_values(w, {1, 2}, 0, 0);
  CHECK(w.version() == 0);
  // A view made in grad mode requires grad too.
  auto row = w.slice(0, 0, 1);
  CHECK(row.requires_grad());
  CHECK_KILN_ERROR(row.fill_(5), "[fill_] in-place operation on a tensor of shape (1,) that requires grad");

  {
    NoGradGuard ng;
    CHECK_FALSE(autograd::grad_enabled());
    w.sub_(tensor({0.5f, 0.5f}));
    w.mul_(2);
    w.add_(ones({2}), 0.25);
    w.div_(0.5);
    kt::expect_values(w, {2.5, 6.5}, 0, 0);
    w.fill_(3);
    w.copy_(tensor({7, 8}));
    kt::expect_values(w, {7, 8}, 0, 0);
  }
  CHECK(autograd::grad_enabled());
  CHECK(w.requires_grad());
  CHECK(w.version() == 6);
  {
    GradModeGuard off(false);
    w.zero_();
  }
  kt::expect_values(w, {0, 0}, 0, 0);
  // detach() shares storage: writes through it are allowed and visible.
  auto d = w.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.storage() == w.storage());
  d.fill_(4);
  kt::expect_values(w, {4, 4}, 0, 0);
  CHECK(w.version() == 8);
}

TEST_CASE("in-place writes into a broadcast view are rejected") {
  // Several elements of the target share one memory location: the result would depend on loop order.
  auto base = zeros({1});
  auto e = base.expand({3});
  CHECK_KILN_ERROR(
      e.add_(ones({3})),
      "[add_] the in-place target of shape (3,) and strides (0,) has several elements at one memory location");
  CHECK_KILN_ERROR(e.mul_(2), "[mul_] the in-place target of shape (3,) and strides (0,)");
  CHECK_KILN_ERROR(e.div_(2), "[div_] the in-place target");
  CHECK_KILN_ERROR(e.copy_(tensor({1.0f, 2.0f, 3.0f})), "[copy_] the in-place target of shape (3,) and strides (0,)");
  CHECK_KILN_ERROR(zeros({2, 1}).expand({2, 4}).add_(ones({2, 4}), 2),
                   "[add_] the in-place target of shape (2, 4) and strides (1, 0)");
  CHECK(base.item<float>() == 0.0f);
  // fill_ writes one value, so aliasing is harmless.
  e.fill_(5);
  CHECK(base.item<float>() == 5.0f);
  // A size-1 expanded dim is fine.
  auto one = zeros({1, 3}).expand({1, 3});
  one.add_(ones({3}));
  kt::expect_values(one, {1, 1, 1}, 0, 0);
}

TEST_CASE("in-place ops whose operand aliases the target read the operand's old values") {
  SUBCASE("copy_ of a shifted slice") {
    auto x = arange(6);
    x.slice(0, 1, 6).copy_(x.slice(0, 0, 5));
    CHECK(x.to_vector<std::int64_t>() == IV{0, 0, 1, 2, 3, 4});
    auto y = arange(6);
    y.slice(0, 0, 5).copy_(y.slice(0, 1, 6));
    CHECK(y.to_vector<std::int64_t>() == IV{1, 2, 3, 4, 5, 5});
  }
  SUBCASE("copy_ of the transpose (in-place transposition)") {
    auto m = arange(9).reshape({3, 3});
    m.copy_(m.t());
    CHECK(m.to_vector<std::int64_t>() == IV{0, 3, 6, 1, 4, 7, 2, 5, 8});
    auto big = arange(200 * 200).reshape({200, 200}).to(kFloat64);  // large enough for the parallel path
    auto expect = big.t().contiguous();
    big.copy_(big.t());
    CHECK(equal(big, expect));
  }
  SUBCASE("copy_ broadcasting a row of the target itself") {
    auto m = arange(6).reshape({3, 2});
    m.copy_(m.select(0, 2));
    CHECK(m.to_vector<std::int64_t>() == IV{4, 5, 4, 5, 4, 5});
  }
  SUBCASE("add_ / mul_ with the transpose") {
    auto a = arange(4).reshape({2, 2}).to(kFloat32);
    a.add_(a.t());  // [[0, 1], [2, 3]] + [[0, 2], [1, 3]]
    kt::expect_values(a, {0, 3, 3, 6}, 0, 0);
    auto b = arange(4).reshape({2, 2});
    b.mul_(b.t());
    CHECK(b.to_vector<std::int64_t>() == IV{0, 2, 2, 9});
    auto c = arange(5).to(kFloat64);
    c.slice(0, 1, 5).add_(c.slice(0, 0, 4));  // each element plus its old left neighbour
    kt::expect_values(c, {0, 1, 3, 5, 7}, 0, 0);
  }
  SUBCASE("an operand identical to the target needs no copy") {
    auto x = tensor({1.0f, 2.0f, 3.0f});
    x.add_(x);
    kt::expect_values(x, {2, 4, 6}, 0, 0);
    x.mul_(x);
    kt::expect_values(x, {4, 16, 36}, 0, 0);
    x.copy_(x);
    kt::expect_values(x, {4, 16, 36}, 0, 0);
  }
}
