// Type promotion, numbers beside 16-bit tensors, in-place casting and the errors PyTorch raises:
// every expected dtype and value below was checked against PyTorch 2.15 on the same inputs
// (torch.result_type, the ops on CPU tensors; the C++ numbers play Python's scalars).
#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.hpp"

using namespace kiln;

namespace {

const DType kAll[] = {kBool, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64};

// The inputs the expectations were computed on, stored in `dt` (rounded from float32).
Tensor base(DType dt) { return tensor(std::vector<float>{1.0f, -2.5f, 3.1f, 0.1f, 0.0f, -0.3f, 7.7f, 100.03f}).to(dt); }

std::vector<double> values(const Tensor& t) { return t.to(kFloat64).to_vector<double>(); }

float bf16(float v) { return static_cast<float>(BFloat16(v)); }
float f16(float v) { return static_cast<float>(Half(v)); }
float round_to(DType dt, float v) { return dt == kBFloat16 ? bf16(v) : f16(v); }

}  // namespace

TEST_CASE("result_type: a 0-dim tensor promotes an n-dim one only from a higher category (torch.result_type)") {
  // want[i][j] = result_type(n-dim kAll[i], 0-dim kAll[j]); the transposed order gives the same.
  const DType want[6][6] = {
      {kBool, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64},
      {kInt64, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64},
      {kBFloat16, kBFloat16, kBFloat16, kBFloat16, kBFloat16, kBFloat16},
      {kFloat16, kFloat16, kFloat16, kFloat16, kFloat16, kFloat16},
      {kFloat32, kFloat32, kFloat32, kFloat32, kFloat32, kFloat32},
      {kFloat64, kFloat64, kFloat64, kFloat64, kFloat64, kFloat64},
  };
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) {
      INFO(dtype_name(kAll[i]) << " (n-dim) with " << dtype_name(kAll[j]) << " (0-dim)");
      Tensor n = ones({3}, kAll[i]), z = ones({}, kAll[j]);
      CHECK(result_type(n, z) == want[i][j]);
      CHECK(result_type(z, n) == want[i][j]);
      // Both 0-dim, or both n-dim: the plain lattice.
      CHECK(result_type(z, ones({}, kAll[i])) == promote_types(kAll[i], kAll[j]));
      CHECK(result_type(n, ones({3}, kAll[j])) == promote_types(kAll[i], kAll[j]));
      // Through the ops (where's condition takes no part).
      CHECK(maximum(n, z).dtype() == want[i][j]);
      CHECK(where(ones({3}, kBool), z, n).dtype() == want[i][j]);
      if (kAll[i] != kBool && kAll[j] != kBool) CHECK((n - z).dtype() == want[i][j]);
      DType div_want = is_floating(want[i][j]) ? want[i][j] : kFloat32;
      CHECK((n / z).dtype() == div_want);
    }
  // Values: a 0-dim float32 beside bfloat16 is rounded to bfloat16 for a comparison and where, as
  // PyTorch does; float32 (n-dim) + float64 (0-dim) stays float32.
  Tensor x = base(kBFloat16), z32 = base(kFloat32).select(0, 2).clone(), z64 = base(kFloat64).select(0, 2).clone();
  CHECK(lt(x, z32).to_vector<bool>() == std::vector<bool>{true, true, false, true, true, true, false, false});
  CHECK(values(where(tensor({true, false, true, true, false, false, true, false}), x, z32)) ==
        std::vector<double>{1, 3.09375, 3.09375, 0.10009765625, 3.09375, 3.09375, 7.6875, 3.09375});
  Tensor s = base(kFloat32) + z64;
  CHECK(s.dtype() == kFloat32);
  CHECK(s.to_vector<float>() == (base(kFloat32) + z64.to(kFloat32)).to_vector<float>());
  CHECK((base(kInt64) + z64).dtype() == kFloat64);
  // A number keeps the category rule too: int64 + 2.5 is float32, a 0-dim int64 + 2.5 as well.
  CHECK((base(kInt64) + 2.5).dtype() == kFloat32);
  CHECK((ones({}, kInt64) + 2.5).dtype() == kFloat32);
  CHECK((ones({}, kBFloat16) * 2.5).dtype() == kBFloat16);
}

TEST_CASE("in place: a wider result of the same category rounds into the target, a higher category is refused") {
  // allowed[i][j]: kAll[i].add_(kAll[j]) (torch.can_cast of the result into the target)
  const bool allowed[6][6] = {{1, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0}, {1, 1, 1, 1, 1, 1},
                              {1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1}};
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) {
      INFO(dtype_name(kAll[i]) << ".add_(" << dtype_name(kAll[j]) << ")");
      Tensor t = ones({2}, kAll[i]);
      if (allowed[i][j]) {
        CHECK_NOTHROW(t.add_(ones({2}, kAll[j])));
        CHECK(t.dtype() == kAll[i]);
      } else {
        CHECK_KILN_ERROR(t.add_(ones({2}, kAll[j])), "[add_] result type");
      }
      CHECK(can_cast(promote_types(kAll[i], kAll[j]), kAll[i]) == allowed[i][j]);
    }
  // bfloat16 += float32 is formed in float32 and rounded once (PyTorch's values).
  Tensor b = base(kBFloat16);
  b.add_(base(kFloat32));
  CHECK(values(b) == std::vector<double>{2, -5, 6.1875, 0.2001953125, 0, -0.6015625, 15.375, 200});
  Tensor h = base(kFloat16);
  h.add_(base(kBFloat16));  // bfloat16 + float16 is float32, stored in float16
  CHECK(values(h) == std::vector<double>{2, -5, 6.1953125, 0.2000732421875, 0, -0.6005859375, 15.390625, 200});
  Tensor a = base(kBFloat16);
  a.add_(base(kFloat32), 2);
  CHECK(values(a) == std::vector<double>{3, -7.5, 9.3125, 0.30078125, 0, -0.90234375, 23.125, 300});
  Tensor f = base(kFloat32);
  f.mul_(base(kFloat64));
  CHECK(f.to_vector<float>() == (base(kFloat32) * base(kFloat64)).to(kFloat32).to_vector<float>());
  CHECK_KILN_ERROR(base(kInt64).mul_(ones({}, kFloat32)), "[mul_] result type float32 cannot be stored in a int64");
}

TEST_CASE("bfloat16/float16 times or over a number: float32 arithmetic, the number not rounded to 16 bits") {
  for (DType dt : {kBFloat16, kFloat16}) {
    INFO(dtype_name(dt));
    std::vector<double> xv;
    for (int k = 0; k < 200; ++k) xv.push_back((k - 100) * 0.0625 + 0.03);
    Tensor x = tensor(xv).to(dt);
    auto xs = x.to(kFloat32).to_vector<float>();
    auto check_all = [&](const Tensor& y, auto f, const char* what) {
      INFO(what);
      REQUIRE(y.dtype() == dt);
      auto yv = y.to(kFloat32).to_vector<float>();
      int bad = 0;
      for (std::size_t i = 0; i < xs.size(); ++i)
        if (yv[i] != round_to(dt, f(xs[i])) && !(std::isinf(yv[i]) && std::isinf(f(xs[i]))) && ++bad < 4)
          FAIL_CHECK("x = " << xs[i] << ": " << yv[i] << " != " << round_to(dt, f(xs[i])));
      CHECK(bad == 0);
    };
    check_all(
        x * 0.1, [](float v) { return v * 0.1f; }, "x * 0.1");
    check_all(
        0.1 * x, [](float v) { return v * 0.1f; }, "0.1 * x");
    check_all(
        x / 0.1, [](float v) { return v / 0.1f; }, "x / 0.1");
    check_all(
        x * 257, [](float v) { return v * 257.0f; }, "x * 257");  // 257 is not a bfloat16
    check_all(
        x * scalar_tensor(0.1), [](float v) { return v * 0.1f; }, "x * 0-dim float32");
    check_all(
        x / scalar_tensor(0.1, kFloat64), [](float v) { return v / 0.1f; }, "x / 0-dim float64");
    // Python's `s / t` is t.reciprocal() * s.
    check_all(
        0.1 / x, [dt](float v) { return round_to(dt, 1.0f / v) * 0.1f; }, "0.1 / x");
    // alpha is rounded to the dtype, then a + alpha * b is one float32 expression.
    check_all(
        add(x, x, 0.3), [dt](float v) { return v + round_to(dt, 0.3f) * v; }, "add alpha 0.3");
    check_all(
        sub(x, x + 1, 3), [dt](float v) { return v - 3.0f * round_to(dt, v + 1); }, "sub alpha 3");
    Tensor m = x.clone();
    m.mul_(0.1);
    check_all(
        m, [](float v) { return v * 0.1f; }, "mul_(0.1)");
    Tensor d = x.clone();
    d.div_(0.1);
    check_all(
        d, [](float v) { return v / 0.1f; }, "div_(0.1)");
    Tensor dz = x.clone();
    dz.mul_(scalar_tensor(0.1));
    check_all(
        dz, [](float v) { return v * 0.1f; }, "mul_(0-dim float32)");
    // A number the dtype holds takes the 16-bit kernel directly: same values.
    check_all(
        x * 0.5, [](float v) { return v * 0.5f; }, "x * 0.5");
  }
  // PyTorch's values for the probe inputs (bf16(3.1) * 0.1 is 0.30859375; with 0.1 rounded first
  // it would be 0.310546875).
  CHECK(values(base(kBFloat16) * 0.1) ==
        std::vector<double>{0.10009765625, -0.25, 0.30859375, 0.010009765625, 0, -0.030029296875, 0.76953125, 10});
  CHECK(values(base(kBFloat16) / 0.1) == std::vector<double>{10, -25, 31, 1, 0, -3, 77, 1000});
  CHECK(values(2.5 / base(kBFloat16)) ==
        std::vector<double>{2.5, -1, 0.8046875, 25, HUGE_VAL, -8.3125, 0.32421875, 0.0250244140625});
  CHECK(values(3 / base(kInt64))[6] == 0.42857146263122559);  // float32 reciprocal(7) * 3, not 3 / 7
  // The 0-dim operand second is the number: first, it is rounded to the dtype (as PyTorch).
  Tensor z = base(kFloat32).select(0, 2).clone();
  CHECK(values(base(kBFloat16) * z)[5] == -0.93359375);
  CHECK(values(z * base(kBFloat16))[5] == -0.9296875);
  // Gradients still reach both sides through the float32 path.
  Tensor leaf = ones({3}, kBFloat16).requires_grad_();
  Tensor w = scalar_tensor(0.1).requires_grad_();
  sum(leaf * w).backward();
  CHECK(leaf.grad().dtype() == kBFloat16);
  CHECK(values(leaf.grad()) == std::vector<double>(3, bf16(0.1f)));
  CHECK(w.grad().dtype() == kFloat32);
  CHECK(w.grad().item<double>() == 3);
}

TEST_CASE("errors PyTorch raises: bool subtraction, negative integer powers, a floating alpha for integers") {
  Tensor b = tensor({true, false}), i = tensor({1, 2});
  for (const Tensor& other : {i, ones({2}), ones({}, kBFloat16)}) {
    CHECK_KILN_ERROR(sub(b, other), "[sub] subtraction with a bool tensor");
    CHECK_KILN_ERROR(sub(other, b), "[sub] subtraction with a bool tensor");
  }
  CHECK_KILN_ERROR(ones({2}) - true, "[sub] subtraction of a bool value");
  CHECK_KILN_ERROR(false - ones({2}), "[sub] subtraction of a bool value");
  CHECK_KILN_ERROR(pow(i, -1), "[pow] integers to negative integer powers are not allowed");
  CHECK_KILN_ERROR(pow(b, -3), "[pow] integers to negative integer powers are not allowed");
  CHECK(values(pow(i, -1.0)) == std::vector<double>{1, 0.5});  // a floating exponent gives float32
  CHECK_KILN_ERROR(add(i, i, 0.5), "[add] alpha must not be a floating point number (0.5) for a int64 result");
  CHECK(add(i, i, 2).to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 6});
  // logsumexp of integers is float32, as torch.logsumexp.
  Tensor l = logsumexp(tensor({1, 2, 3, -4}), {0});
  CHECK(l.dtype() == kFloat32);
  CHECK(l.item<float>() == 3.408212423324585f);
}

TEST_CASE("sigmoid and silu are accurate to float32 rounding (not Eigen's approximate logistic)") {
  std::vector<float> v;
  for (int k = -400; k <= 400; ++k) v.push_back(k * 0.05f + 0.013f);
  for (float e : {-87.0f, -100.0f, -1e4f, 30.0f, 100.0f}) v.push_back(e);
  Tensor x = tensor(v);
  auto s = sigmoid(x).to_vector<float>(), si = silu(x).to_vector<float>();
  for (std::size_t k = 0; k < v.size(); ++k) {
    const double ref = 1 / (1 + std::exp(-static_cast<double>(v[k])));
    INFO("x = " << v[k]);
    CHECK(std::abs(s[k] - ref) <= 4 * std::numeric_limits<float>::epsilon() * ref + 1e-38);
    CHECK(std::abs(si[k] - v[k] * ref) <= 4 * std::numeric_limits<float>::epsilon() * std::abs(v[k] * ref) + 1e-38);
  }
  // PyTorch's float16 results where the old approximation crossed a rounding boundary.
  CHECK(sigmoid(full({1}, -5.0, kFloat16)).item<double>() == 0.00669097900390625);
  CHECK(silu(full({1}, -5.1875, kFloat16)).item<double>() == -0.02880859375);
}

TEST_CASE("hardswish gives -0 for x <= -3, as PyTorch's x * relu6(x + 3) / 6") {
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16}) {
    INFO(dtype_name(dt));
    auto y = hardswish(tensor(std::vector<double>{-5, -3, -2, 4}).to(dt)).to(kFloat64).to_vector<double>();
    CHECK(y[0] == 0);
    CHECK(std::signbit(y[0]));
    CHECK(std::signbit(y[1]));
    CHECK(std::abs(y[2] + 1.0 / 3) < 1e-2);
    CHECK(y[3] == 4);
  }
}
