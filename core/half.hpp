#pragma once
/// The 16-bit floating-point storage types: kiln::BFloat16 (8-bit exponent, 7-bit mantissa:
/// float32's range) and kiln::Half (IEEE binary16: 5-bit exponent, 10-bit mantissa). Both are
/// storage only: they convert implicitly to float and from any arithmetic type, rounding to
/// nearest-even; arithmetic happens in float (kiln::math::compute_t). NaN stays NaN (made
/// quiet), infinities and signed zeros are kept, Half's subnormals are exact, and a value
/// beyond Half's range (|x| >= 65520) becomes an infinity. KILN_HD: CUDA kernels use them too.
///   kiln::BFloat16 b = 1.7f;              // 1.703125
///   float f = b;                          // exact
///   kiln::Half h = kiln::Half::from_bits(0x7bff);  // 65504, the largest finite Half
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "host_device.hpp"

namespace kiln {

namespace half_detail {

KILN_HD std::uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KILN_HD float bits_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

/// double -> float rounding toward zero with the last bit set when inexact ("round to odd"):
/// rounding that float once more to a format with at least 2 fewer mantissa bits gives the
/// correctly rounded result, with no double-rounding error.
KILN_HD float round_to_odd(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) == d || d != d) return f;
  std::uint32_t u = float_bits(f);
  const double af = f < 0 ? -static_cast<double>(f) : static_cast<double>(f);
  const double ad = d < 0 ? -d : d;
  if (af > ad) --u;  // rounded away from zero (possibly to infinity): step back toward zero
  return bits_float(u | 1u);
}

KILN_HD std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; a carry moves into the exponent
  return static_cast<std::uint16_t>(u >> 16);
}

KILN_HD float bf16_bits_to_float(std::uint16_t b) { return bits_float(static_cast<std::uint32_t>(b) << 16); }

KILN_HD std::uint16_t float_to_half_bits(float f) {
  std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u)  // Inf, or NaN made quiet with the top of its payload kept
    return static_cast<std::uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u));
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to Inf
  if (x < 0x38800000u) {
    // Subnormal or zero Half: adding 0.5 lines the value up with Half's subnormal ulp (2^-24)
    // in the float mantissa, so the float addition does the round-to-nearest-even.
    const float a = bits_float(x) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_bits(a) - 0x3f000000u));
  }
  const std::uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias the exponent (127 -> 15) and round to nearest even
  return static_cast<std::uint16_t>(sign | (x >> 13));
}

KILN_HD float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return bits_float(sign | float_bits(v));
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace half_detail

/// Shared by BFloat16 and Half: Traits gives the bit conversions.
template <typename Traits>
class Float16Storage {
 public:
  Float16Storage() = default;
  KILN_HD Float16Storage(float f) : bits_(Traits::from_float(f)) {}
  KILN_HD Float16Storage(double d) : bits_(Traits::from_float(half_detail::round_to_odd(d))) {}
  template <typename I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  KILN_HD Float16Storage(I v) : Float16Storage(static_cast<double>(v)) {}

  KILN_HD operator float() const { return Traits::to_float(bits_); }

  KILN_HD static Float16Storage from_bits(std::uint16_t b) {
    Float16Storage r;
    r.bits_ = b;
    return r;
  }
  KILN_HD std::uint16_t bits() const { return bits_; }

  KILN_HD Float16Storage operator-() const { return from_bits(static_cast<std::uint16_t>(bits_ ^ 0x8000u)); }

 private:
  std::uint16_t bits_ = 0;
};

struct BFloat16Traits {
  KILN_HD static std::uint16_t from_float(float f) { return half_detail::float_to_bf16_bits(f); }
  KILN_HD static float to_float(std::uint16_t b) { return half_detail::bf16_bits_to_float(b); }
};
struct HalfTraits {
  KILN_HD static std::uint16_t from_float(float f) { return half_detail::float_to_half_bits(f); }
  KILN_HD static float to_float(std::uint16_t b) { return half_detail::half_bits_to_float(b); }
};

using BFloat16 = Float16Storage<BFloat16Traits>;
using Half = Float16Storage<HalfTraits>;
static_assert(sizeof(BFloat16) == 2 && sizeof(Half) == 2);
static_assert(std::is_trivially_copyable_v<BFloat16> && std::is_trivially_copyable_v<Half>);

/// True for BFloat16 and Half: the storage-only floating types that compute in float.
template <typename T>
inline constexpr bool is_reduced_float_v = std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>;
/// Any floating storage type: float, double, BFloat16, Half.
template <typename T>
inline constexpr bool is_float_storage_v = std::is_floating_point_v<T> || is_reduced_float_v<T>;

}  // namespace kiln
