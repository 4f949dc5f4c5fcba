// BFloat16 and Half: conversions bit for bit (all 65536 patterns, ties to even, NaN/Inf/-0,
// subnormals, overflow), the dtype promotion table, and the tensor-level basics in both dtypes.
#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.hpp"

using namespace kiln;

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of a binary16 pattern from its definition (double, exact).
double half_value(std::uint32_t h) {
  const int sign = (h >> 15) ? -1 : 1, exp = static_cast<int>((h >> 10) & 31), man = static_cast<int>(h & 1023);
  if (exp == 31) return man ? std::numeric_limits<double>::quiet_NaN() : sign * HUGE_VAL;
  return exp == 0 ? sign * std::ldexp(man, -24) : sign * std::ldexp(1024 + man, exp - 25);
}

// The correctly rounded (nearest, ties to even) pattern of finite x among the finite patterns
// lo..hi of type T, found by bisection on values (a reference independent of the conversion).
template <typename T>
std::uint16_t nearest_even(double x) {
  const bool neg = std::signbit(x);
  const double a = std::fabs(x);
  std::uint32_t lo = 0, hi = std::is_same_v<T, Half> ? 0x7bffu : 0x7f7fu;  // largest finite
  auto val = [](std::uint32_t b) { return static_cast<double>(static_cast<float>(T::from_bits(std::uint16_t(b)))); };
  const double top = val(hi), ulp = top - val(hi - 1);
  if (a >= top + ulp / 2) return static_cast<std::uint16_t>((neg ? 0x8000u : 0u) | (hi + 1));  // Inf
  while (hi - lo > 1) {
    std::uint32_t mid = (lo + hi) / 2;
    (val(mid) <= a ? lo : hi) = mid;
  }
  std::uint32_t r;
  if (a >= val(hi)) r = hi;
  else {
    double dl = a - val(lo), dh = val(hi) - a;
    r = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
  }
  return static_cast<std::uint16_t>((neg ? 0x8000u : 0u) | r);
}

template <typename T>
bool is_nan_bits(std::uint16_t b) {
  return std::is_same_v<T, Half> ? ((b & 0x7c00u) == 0x7c00u && (b & 0x3ffu))
                                 : ((b & 0x7f80u) == 0x7f80u && (b & 0x7fu));
}

// Every finite pattern: its midpoints with both neighbours (ties) and points just beside them
// round as nearest_even says, from float and from double.
template <typename T>
void check_rounding_all_patterns() {
  const std::uint32_t max_finite = std::is_same_v<T, Half> ? 0x7bffu : 0x7f7fu;
  int bad = 0;
  for (std::uint32_t b = 0; b <= max_finite && bad < 5; ++b) {
    const double v = static_cast<float>(T::from_bits(std::uint16_t(b)));
    const double next = b < max_finite ? static_cast<double>(static_cast<float>(T::from_bits(std::uint16_t(b + 1))))
                                       : 2 * v - static_cast<float>(T::from_bits(std::uint16_t(b - 1)));
    const double mid = (v + next) / 2;
    for (double x : {mid, std::nextafter(mid, 0.0), std::nextafter(mid, HUGE_VAL), -mid, (v + mid) / 2}) {
      const std::uint16_t want = nearest_even<T>(x);
      const auto from_f = T(static_cast<float>(x)).bits();
      const auto from_d = T(x).bits();
      // x may not be a float (nextafter in double): then only the double conversion is exact.
      const bool float_exact = static_cast<double>(static_cast<float>(x)) == x;
      if ((float_exact && from_f != want) || from_d != want) {
        ++bad;
        FAIL_CHECK("pattern " << b << " x=" << x << " want " << want << " got float " << from_f << " double "
                              << from_d);
      }
    }
  }
}

}  // namespace

TEST_CASE("bfloat16: every bit pattern widens exactly and narrows back to itself") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = BFloat16::from_bits(std::uint16_t(b));
    const std::uint16_t back = BFloat16(f).bits();
    if (is_nan_bits<BFloat16>(std::uint16_t(b))) {
      REQUIRE(std::isnan(f));
      REQUIRE(is_nan_bits<BFloat16>(back));
      REQUIRE((back & 0x40u) != 0);  // quiet
      REQUIRE((back & 0x8000u) == (b & 0x8000u));
    } else {
      REQUIRE(bits_of(f) == b << 16);
      REQUIRE(back == b);
    }
  }
}

TEST_CASE("float16: every bit pattern widens exactly and narrows back to itself") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = Half::from_bits(std::uint16_t(h));
    const double want = half_value(h);
    const std::uint16_t back = Half(f).bits();
    INFO("half bits " << h);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(f));
      REQUIRE((bits_of(f) & 0x400000u) != 0);  // quiet
      REQUIRE(is_nan_bits<Half>(back));
      REQUIRE((back & 0x200u) != 0);
    } else {
      REQUIRE(static_cast<double>(f) == want);
      REQUIRE(std::signbit(f) == ((h & 0x8000u) != 0));
      REQUIRE(back == h);
    }
  }
}

TEST_CASE("bfloat16 and float16: rounding is to nearest with ties to even, from float and from double") {
  check_rounding_all_patterns<BFloat16>();
  check_rounding_all_patterns<Half>();
  // Double rounding through float would get these wrong: the tie is broken below float precision.
  CHECK(BFloat16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)).bits() == 0x3f81);
  CHECK(BFloat16(1.0 + std::ldexp(1.0, -8)).bits() == 0x3f80);  // an exact tie: to even
  CHECK(Half(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)).bits() == 0x3c01);
  CHECK(Half(1.0 + std::ldexp(1.0, -11)).bits() == 0x3c00);
  CHECK(BFloat16(std::int64_t{257}).bits() == 0x4380);  // 256: the tie 257 goes to even
  CHECK(Half(2049).bits() == 0x6800);                   // 2048
}

TEST_CASE("bfloat16 and float16: special values, subnormals and overflow") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(BFloat16(inf).bits() == 0x7f80);
  CHECK(BFloat16(-inf).bits() == 0xff80);
  CHECK(Half(inf).bits() == 0x7c00);
  CHECK(Half(-inf).bits() == 0xfc00);
  CHECK(BFloat16(-0.0f).bits() == 0x8000);
  CHECK(Half(-0.0f).bits() == 0x8000);
  CHECK(Half(-0.0).bits() == 0x8000);
  // float16 overflow: 65504 is the largest finite; from 65520 (the tie above it) on, Inf.
  CHECK(Half(65504.0f).bits() == 0x7bff);
  CHECK(Half(65519.99f).bits() == 0x7bff);
  CHECK(Half(65520.0f).bits() == 0x7c00);
  CHECK(Half(-1e10f).bits() == 0xfc00);
  CHECK(Half(1e300).bits() == 0x7c00);
  // bfloat16 overflows only past float32's range edge.
  CHECK(BFloat16(std::numeric_limits<float>::max()).bits() == 0x7f80);
  CHECK(BFloat16(1e300).bits() == 0x7f80);
  CHECK(BFloat16(-1e300).bits() == 0xff80);
  // float16 subnormals and underflow: 2^-24 is the smallest, 2^-25 is a tie to 0.
  CHECK(Half(std::ldexp(1.0f, -24)).bits() == 0x0001);
  CHECK(Half(std::ldexp(1.0f, -25)).bits() == 0x0000);
  CHECK(Half(std::ldexp(1.5f, -25)).bits() == 0x0001);
  CHECK(Half(std::ldexp(3.0f, -25)).bits() == 0x0002);  // 1.5 * 2^-24: tie to even
  CHECK(Half(std::ldexp(1023.0f, -24)).bits() == 0x03ff);
  CHECK(Half(-std::ldexp(1.0f, -14)).bits() == 0x8400);  // smallest normal
  CHECK(Half(1e-30).bits() == 0x0000);
  // bfloat16 keeps float32's subnormals (widening is a shift).
  CHECK(static_cast<float>(BFloat16::from_bits(0x0001)) == float_of(0x00010000u));
  // NaN from float and double stays NaN.
  CHECK(std::isnan(static_cast<float>(BFloat16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(static_cast<float>(Half(std::numeric_limits<double>::quiet_NaN()))));
  CHECK(std::isnan(static_cast<float>(BFloat16(float_of(0x7f800001u)))));  // payload only in the low bits
  CHECK(std::isnan(static_cast<float>(Half(float_of(0xff800001u)))));
  CHECK(Half(float_of(0xff800001u)).bits() == 0xfe00);
}

TEST_CASE("dtype promotion: the lattice with bfloat16 and float16") {
  const DType all[] = {kBool, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64};
  // want[i][j] = promote_types(all[i], all[j])
  const DType want[6][6] = {
      {kBool, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64},
      {kInt64, kInt64, kBFloat16, kFloat16, kFloat32, kFloat64},
      {kBFloat16, kBFloat16, kBFloat16, kFloat32, kFloat32, kFloat64},
      {kFloat16, kFloat16, kFloat32, kFloat16, kFloat32, kFloat64},
      {kFloat32, kFloat32, kFloat32, kFloat32, kFloat32, kFloat64},
      {kFloat64, kFloat64, kFloat64, kFloat64, kFloat64, kFloat64},
  };
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) {
      INFO(dtype_name(all[i]) << " + " << dtype_name(all[j]));
      CHECK(promote_types(all[i], all[j]) == want[i][j]);
      // through an op on tensors
      Tensor a = ones({2}, all[i]), b = ones({2}, all[j]);
      CHECK((a + b).dtype() == want[i][j]);
    }
  // A Python-like scalar never widens a floating tensor.
  CHECK((ones({2}, kBFloat16) * 2.5).dtype() == kBFloat16);
  CHECK((ones({2}, kFloat16) + 1).dtype() == kFloat16);
  CHECK(itemsize(kBFloat16) == 2);
  CHECK(itemsize(kFloat16) == 2);
  CHECK(dtype_name(kBFloat16) == "bfloat16");
  CHECK(dtype_name(kFloat16) == "float16");
  CHECK(is_floating(kBFloat16));
  CHECK(is_floating(kFloat16));
  CHECK_FALSE(is_integral(kBFloat16));
}

TEST_CASE("bfloat16 and float16 tensors: factories, item, to_vector, printing") {
  for (DType dt : {kBFloat16, kFloat16}) {
    INFO(dtype_name(dt));
    const auto rounded = [dt](double v) {
      return dt == kBFloat16 ? static_cast<double>(static_cast<float>(BFloat16(v)))
                             : static_cast<double>(static_cast<float>(Half(v)));
    };
    CHECK(zeros({2, 3}, dt).dtype() == dt);
    CHECK(zeros({2, 3}, dt).nbytes() == 12);
    CHECK(ones({3}, dt).to_vector<double>() == std::vector<double>{1, 1, 1});
    CHECK(full({}, 0.1, dt).item<double>() == rounded(0.1));
    CHECK(full({}, 0.1, dt).item<float>() == static_cast<float>(rounded(0.1)));
    CHECK(arange(0, 2, 0.5, dt).to_vector<double>() == std::vector<double>{0, 0.5, 1, 1.5});
    CHECK(arange(0, 300, 1, dt).to_vector<double>()[257] == rounded(257));
    Tensor r = rand({4096}, dt);
    CHECK(r.dtype() == dt);
    auto rv = r.to_vector<double>();
    CHECK(*std::min_element(rv.begin(), rv.end()) >= 0.0);
    CHECK(*std::max_element(rv.begin(), rv.end()) < 1.0);  // rounding never reaches the open bound
    CHECK(std::abs(mean(r.to(kFloat32)).item<double>() - 0.5) < 0.03);
    Tensor n = randn({4096}, dt);
    CHECK(n.dtype() == dt);
    CHECK(std::abs(mean(n.to(kFloat32)).item<double>()) < 0.1);
    // item in the storage type itself
    if (dt == kBFloat16) CHECK(full({}, 1.5, dt).item<BFloat16>().bits() == 0x3fc0);
    else CHECK(full({}, 1.5, dt).item<Half>().bits() == 0x3e00);
    const std::string s = full({2}, 0.1, dt).str();
    CHECK(s.find(dt == kBFloat16 ? "dtype=bfloat16" : "dtype=float16") != std::string::npos);
    CHECK(s.find(dt == kBFloat16 ? "0.1001" : "0.1000") != std::string::npos);
  }
}

TEST_CASE("bfloat16 and float16 tensors: casts in every direction, and every pattern through a tensor") {
  const DType all[] = {kBool, kInt64, kFloat32, kFloat64, kBFloat16, kFloat16};
  const std::vector<double> v = {0, -1.5, 2, 3.25, -0.0, 100};
  for (DType a : all)
    for (DType b : all) {
      INFO(dtype_name(a) << " -> " << dtype_name(b));
      Tensor x = tensor(v, {6}).to(a);
      Tensor y = x.to(b);
      CHECK(y.dtype() == b);
      // every value is exact in every floating dtype; int64 truncates, bool is != 0
      CHECK(y.to(kFloat64).to_vector<double>() == x.to(b).to(kFloat64).to_vector<double>());
      CHECK(y.to(kFloat64).to_vector<double>() ==
            tensor(v, {6}).to(a).to(kFloat64).to(b).to(kFloat64).to_vector<double>());
    }
  // All 65536 patterns: widened through a tensor cast and narrowed back, bit for bit (NaN as NaN).
  std::vector<std::int64_t> pats(65536);
  for (int i = 0; i < 65536; ++i) pats[i] = i;
  for (DType dt : {kBFloat16, kFloat16}) {
    INFO(dtype_name(dt));
    std::vector<float> f(65536);
    for (int i = 0; i < 65536; ++i)
      f[i] = dt == kBFloat16 ? float(BFloat16::from_bits(std::uint16_t(i))) : float(Half::from_bits(std::uint16_t(i)));
    Tensor t = tensor(f, {65536}).to(dt);
    Tensor w = t.to(kFloat32), d = t.to(kFloat64);
    auto wv = w.to_vector<float>();
    auto dv = d.to_vector<double>();
    auto back = w.to(dt);
    auto back_d = d.to(dt);
    int bad = 0;
    for (int i = 0; i < 65536 && bad < 5; ++i) {
      const bool nan = std::isnan(f[i]);
      bool ok = nan ? std::isnan(wv[i]) && std::isnan(dv[i]) : bits_of(wv[i]) == bits_of(f[i]) && dv[i] == f[i];
      if (!ok) {
        ++bad;
        FAIL_CHECK("pattern " << i);
      }
    }
    if (dt == kBFloat16) {
      auto b1 = back.to_vector<BFloat16>(), b2 = back_d.to_vector<BFloat16>();
      for (int i = 0; i < 65536 && bad < 5; ++i)
        if (!std::isnan(f[i]) && (b1[i].bits() != i || b2[i].bits() != i)) ++bad;
    } else {
      auto b1 = back.to_vector<Half>(), b2 = back_d.to_vector<Half>();
      for (int i = 0; i < 65536 && bad < 5; ++i)
        if (!std::isnan(f[i]) && (b1[i].bits() != i || b2[i].bits() != i)) ++bad;
    }
    CHECK(bad == 0);
  }
  // float32 -> float16 in a tensor overflows to Inf and rounds ties to even like the scalar type.
  Tensor big =
      tensor(std::vector<float>{65504, 65519.99f, 65520, -1e6f, std::ldexp(1.0f, -25), 1 + std::ldexp(1.0f, -11)}, {6})
          .to(kFloat16);
  CHECK(big.to(kFloat64).to_vector<double>() == std::vector<double>{65504, 65504, HUGE_VAL, -HUGE_VAL, 0, 1});
}

TEST_CASE("bfloat16 and float16: gradients flow through casts, cast back to the source dtype") {
  for (DType dt : {kBFloat16, kFloat16}) {
    INFO(dtype_name(dt));
    Tensor x = tensor(std::vector<float>{1.0f, -2.0f, 0.5f}, {3}).requires_grad_();
    Tensor y = x.to(dt);
    Tensor loss = sum(y * y * 3.0);
    CHECK(loss.dtype() == dt);
    loss.backward();
    REQUIRE(x.grad().defined());
    CHECK(x.grad().dtype() == kFloat32);
    CHECK(x.grad().to_vector<double>() == std::vector<double>{6, -12, 3});
    // the other way: a 16-bit leaf used in float32 gets a 16-bit gradient
    Tensor b = ones({2}, dt).requires_grad_();
    sum(b.to(kFloat32) * 0.1f).backward();
    CHECK(b.grad().dtype() == dt);
    CHECK(b.grad().to_vector<double>()[0] == full({}, 0.1f, dt).item<double>());
  }
}

TEST_CASE("bfloat16 and float16: dtypes an op cannot take are errors naming the op and dtypes") {
  Tensor x = randn({4, 3});
  Tensor bi = tensor(std::vector<double>{0, 1}, {2}).to(kBFloat16);
  for (const char* text : {"[index_select]", "bfloat16"}) CHECK_KILN_ERROR(index_select(x, 0, bi), text);
  for (const char* text : {"[gather]", "float16"}) CHECK_KILN_ERROR(gather(x, 0, zeros({1, 3}, kFloat16)), text);
  for (const char* text : {"[embedding]", "bfloat16"}) CHECK_KILN_ERROR(nn::functional::embedding(bi, x), text);
  for (const char* text : {"[add_]", "bfloat16", "int64"})
    CHECK_KILN_ERROR(ones({2}, kInt64).add_(ones({2}, kBFloat16)), text);
  // (bfloat16 + float16 is float32, which a float16 tensor takes in place, rounded, as in PyTorch:
  // tests/core/test_dtype_parity.cpp.)
}

TEST_CASE("half: a bfloat16/float16 value passed as a Scalar stays a floating value") {
  // Without its own constructor a BFloat16 converted to Scalar(bool): 2.5 became 1.
  kiln::Scalar s(kiln::BFloat16(2.5f)), h(kiln::Half(-3.0f));
  CHECK(s.is_floating());
  CHECK(s.to_double() == 2.5);
  CHECK(h.to_double() == -3.0);
  Tensor x = kiln::full({3}, kiln::BFloat16(2.5f));
  CHECK(x.to_vector<float>() == std::vector<float>{2.5f, 2.5f, 2.5f});
}
