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

// The per-element steps of a draw, shared by random_block and the CPU backend's vectorized fills
// (core/cpu/random.cpp) so both round alike.

/// Value j of a block's words w: a float-precision unit for 32-bit dtypes (one word each), a
/// double one from two words for 64-bit dtypes.
template <typename T>
KILN_HD double random_unit(const std::uint32_t* w, int j) {
  if constexpr (kRandomPerBlock<T> == 4) return uint_to_unit_float(w[j]);
  else return uint_to_unit_double(w[2 * j], w[2 * j + 1]);
}

/// Uniform, Int and Bernoulli values of a unit u (Normal needs pairs: random_normal). The
/// multiply-adds are explicit fma: rounded once whether or not the compiler would contract them,
/// so vector and scalar code, every build and both backends give the same bits.
KILN_HD double random_uniform(const RandomSpec& spec, double u) { return fma(spec.b - spec.a, u, spec.a); }
KILN_HD double random_int(const RandomSpec& spec, double u) {
  const double range = spec.b - spec.a;
  return spec.a + floor(u * range);
}
KILN_HD double random_bernoulli(const RandomSpec& spec, double u) { return u < spec.a ? spec.b : 0.0; }

/// Box-Muller on a pair of units; 1 - u keeps the log argument in (0, 1].
KILN_HD void random_normal(const RandomSpec& spec, double u0, double u1, double& v0, double& v1) {
  const double r = sqrt(-2.0 * log(1.0 - u0)), th = 6.283185307179586 * u1;
  v0 = fma(spec.b * r, cos(th), spec.a);
  v1 = fma(spec.b * r, sin(th), spec.a);
}

/// A drawn value v stored as T.
template <typename T>
KILN_HD T random_store(const RandomSpec& spec, double v) {
  if constexpr (std::is_same_v<T, float>) {
    float f = static_cast<float>(v);
    // Rounding must not push a uniform draw onto its open upper bound.
    const float hi = static_cast<float>(spec.b);
    if (spec.kind == RandomSpec::Uniform && f >= hi) f = nextafter(hi, -infinity<float>());
    return f;
  } else if constexpr (is_reduced_float_v<T>) {
    T f = T(v);
    const T hi = T(spec.b);
    if (spec.kind == RandomSpec::Uniform && float(f) >= float(hi)) f = next_below(hi);
    return f;
  } else if constexpr (std::is_same_v<T, bool>) {
    return v != 0.0;
  } else {
    return static_cast<T>(v);
  }
}

/// Writes the (at most kRandomPerBlock<T>) values of block blk of `spec`'s draw into out[0, n).
template <typename T>
KILN_HD void random_block(const RandomSpec& spec, std::int64_t blk, T* out, std::int64_t n) {
  constexpr int per = kRandomPerBlock<T>;
  const auto w = philox4x32(spec.seed, spec.offset + static_cast<std::uint64_t>(blk));
  double v[4] = {0, 0, 0, 0};
  for (int j = 0; j < per; ++j) {
    const double u = random_unit<T>(w.data(), j);
    switch (spec.kind) {
      case RandomSpec::Uniform: v[j] = random_uniform(spec, u); break;
      case RandomSpec::Normal: v[j] = u; break;  // transformed in pairs below
      case RandomSpec::Int: v[j] = random_int(spec, u); break;
      case RandomSpec::Bernoulli: v[j] = random_bernoulli(spec, u); break;
    }
  }
  if (spec.kind == RandomSpec::Normal)
    for (int j = 0; j < per; j += 2) random_normal(spec, v[j], v[j + 1], v[j], v[j + 1]);
  const std::int64_t base = blk * per;
  for (int j = 0; j < per && base + j < n; ++j) out[base + j] = random_store<T>(spec, v[j]);
}

}  // namespace kiln::math
