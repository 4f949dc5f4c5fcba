#pragma once
// Bulk conversions between the 16-bit float types and float32 for CPU hot loops, bit-identical
// to half.hpp's scalar conversions (round to nearest even, NaN made quiet, Inf and signed zero
// kept, subnormals exact). convert.cpp picks the widest exact vector code the CPU runs, at run
// time: AVX-512 (integer rounding for bfloat16, vcvtps2ph/vcvtph2ps for float16), else AVX2 with
// F16C, else the scalar formulas. vcvtneps2bf16 (AVX512-BF16) is not used: it flushes subnormal
// inputs and outputs to zero, which the scalar conversion does not.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../half.hpp"

namespace kiln::cpu {

void bf16_to_float(const BFloat16* src, float* dst, std::int64_t n);
void float_to_bf16(const float* src, BFloat16* dst, std::int64_t n);
void half_to_float(const Half* src, float* dst, std::int64_t n);
void float_to_half(const float* src, Half* dst, std::int64_t n);

/// The conversion code in use: 0 scalar, 1 AVX2+F16C, 2 AVX-512 (the best the CPU runs unless
/// set_convert_level lowered it).
int convert_level();
/// Uses at most `level` (-1: the best available) and returns the previous setting; tests and
/// bench/ops_bench compare the levels with it. Not meant to be changed while kernels run.
int set_convert_level(int level);

// Below this length a call costs more than the scalar loop.
inline constexpr std::int64_t kConvertMinVector = 16;

template <typename T>
inline void load_float(const T* src, float* dst, std::int64_t n) {
  if (n >= kConvertMinVector) {
    if constexpr (std::is_same_v<T, BFloat16>) return bf16_to_float(src, dst, n);
    else if constexpr (std::is_same_v<T, Half>) return half_to_float(src, dst, n);
  }
  for (std::int64_t k = 0; k < n; ++k) dst[k] = static_cast<float>(src[k]);
}

template <typename T>
inline void store_float(const float* src, T* dst, std::int64_t n) {
  if (n >= kConvertMinVector) {
    if constexpr (std::is_same_v<T, BFloat16>) return float_to_bf16(src, dst, n);
    else if constexpr (std::is_same_v<T, Half>) return float_to_half(src, dst, n);
  }
  for (std::int64_t k = 0; k < n; ++k) dst[k] = T(src[k]);
}

// Chunk length of the stack buffers of the strided conversions below.
inline constexpr std::int64_t kConvertChunk = 256;

/// o[k * so] = D(i[k * si]) for k < n, between float32 and a 16-bit float type (either way):
/// strided sides go through a stack buffer so that the conversion itself is vectorized.
template <typename D, typename S>
void convert_run(D* o, std::int64_t so, const S* i, std::int64_t si, std::int64_t n) {
  static_assert((std::is_same_v<D, float> && is_reduced_float_v<S>) ||
                (is_reduced_float_v<D> && std::is_same_v<S, float>));
  if (so == 1 && si == 1) {
    if constexpr (std::is_same_v<D, float>) load_float(i, o, n);
    else store_float(i, o, n);
    return;
  }
  if (si == 0) {  // a broadcast operand: convert once, then a plain (vectorized) fill
    const D v = static_cast<D>(*i);
    if (so == 1) std::fill_n(o, n, v);
    else
      for (std::int64_t k = 0; k < n; ++k) o[k * so] = v;
    return;
  }
  if (n < kConvertMinVector) {
    for (std::int64_t k = 0; k < n; ++k) o[k * so] = static_cast<D>(i[k * si]);
    return;
  }
  S in[kConvertChunk];
  D out[kConvertChunk];
  for (std::int64_t b = 0; b < n; b += kConvertChunk) {
    const std::int64_t m = std::min(kConvertChunk, n - b);
    const S* ib = i + b * si;
    D* ob = o + b * so;
    const S* src = ib;
    if (si != 1) {
      for (std::int64_t k = 0; k < m; ++k) in[k] = ib[k * si];
      src = in;
    }
    D* dst = so == 1 ? ob : out;
    if constexpr (std::is_same_v<D, float>) load_float(src, dst, m);
    else store_float(src, dst, m);
    if (so != 1)
      for (std::int64_t k = 0; k < m; ++k) ob[k * so] = out[k];
  }
}

}  // namespace kiln::cpu
