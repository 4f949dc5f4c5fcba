#pragma once
/// The random draws of Backend::random, written once for both backends: Philox block `blk`
/// of a draw fills elements blk * per .. blk * per + per - 1 (per = 4 for 32-bit dtypes, 2 for
/// 64-bit ones), so the numbers depend on neither the thread split nor the device.
///   for (std::int64_t blk = 0; blk < kiln::math::random_blocks<float>(n); ++blk)
///     kiln::math::random_block<float>(spec, blk, out, n);
#include <cstdint>
#include <type_traits>

#include "../backend.hpp"
#include "functions.hpp"

namespace kiln::math {

/// Values one Philox block yields for dtype T.
template <typename T>
inline constexpr int kRandomPerBlock = std::is_same_v<T, double> || std::is_same_v<T, std::int64_t> ? 2 : 4;

/// Philox blocks a draw of n values of T uses.
template <typename T>
KILN_HD std::int64_t random_blocks(std::int64_t n) {
  return (n + kRandomPerBlock<T> - 1) / kRandomPerBlock<T>;
}

/// The largest BFloat16/Half value below a finite x.
template <typename T>
KILN_HD T next_below(T x) {
  const std::uint16_t b = x.bits();
  if ((b & 0x7fffu) == 0) return T::from_bits(0x8001u);  // +-0: the negative smallest subnormal
  return T::from_bits(static_cast<std::uint16_t>(b & 0x8000u ? b + 1 : b - 1));
}

/// Writes the (at most kRandomPerBlock<T>) values of block blk of `spec`'s draw into out[0, n).
template <typename T>
KILN_HD void random_block(const RandomSpec& spec, std::int64_t blk, T* out, std::int64_t n) {
  constexpr int per = kRandomPerBlock<T>;
  const auto w = philox4x32(spec.seed, spec.offset + static_cast<std::uint64_t>(blk));
  double u[4];
  if constexpr (per == 4) {
    for (int j = 0; j < 4; ++j) u[j] = uint_to_unit_float(w[j]);
  } else {
    u[0] = uint_to_unit_double(w[0], w[1]);
    u[1] = uint_to_unit_double(w[2], w[3]);
  }
  double v[4] = {0, 0, 0, 0};
  switch (spec.kind) {
    case RandomSpec::Uniform:
      for (int j = 0; j < per; ++j) v[j] = spec.a + (spec.b - spec.a) * u[j];
      break;
    case RandomSpec::Normal:
      // Box-Muller on pairs; 1 - u keeps the log argument in (0, 1].
      for (int j = 0; j < per; j += 2) {
        const double r = sqrt(-2.0 * log(1.0 - u[j])), th = 6.283185307179586 * u[j + 1];
        v[j] = spec.a + spec.b * r * cos(th);
        v[j + 1] = spec.a + spec.b * r * sin(th);
      }
      break;
    case RandomSpec::Int: {
      const double range = spec.b - spec.a;
      for (int j = 0; j < per; ++j) v[j] = spec.a + floor(u[j] * range);
      break;
    }
    case RandomSpec::Bernoulli:
      for (int j = 0; j < per; ++j) v[j] = u[j] < spec.a ? spec.b : 0.0;
      break;
  }
  const std::int64_t base = blk * per;
  for (int j = 0; j < per && base + j < n; ++j) {
    if constexpr (std::is_same_v<T, float>) {
      float f = static_cast<float>(v[j]);
      // Rounding must not push a uniform draw onto its open upper bound.
      const float hi = static_cast<float>(spec.b);
      if (spec.kind == RandomSpec::Uniform && f >= hi) f = nextafter(hi, -infinity<float>());
      out[base + j] = f;
    } else if constexpr (is_reduced_float_v<T>) {
      T f = T(v[j]);
      const T hi = T(spec.b);
      if (spec.kind == RandomSpec::Uniform && float(f) >= float(hi)) f = next_below(hi);
      out[base + j] = f;
    } else if constexpr (std::is_same_v<T, bool>) {
      out[base + j] = v[j] != 0.0;
    } else {
      out[base + j] = static_cast<T>(v[j]);
    }
  }
}

}  // namespace kiln::math
