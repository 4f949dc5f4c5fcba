#pragma once
// Bulk conversions between the 16-bit float types and float32 for CPU hot loops. BFloat16's
// bit formulas vectorize as written; Half uses the F16C instructions where the build targets
// them (exact: F16C rounds to nearest even and keeps subnormals, Inf and NaN).
#include <cstdint>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "../half.hpp"

namespace kiln::cpu {

template <typename T>
inline void load_float(const T* src, float* dst, std::int64_t n) {
  std::int64_t k = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, Half>) {
    for (; k + 8 <= n; k += 8)
      _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  }
#endif
  for (; k < n; ++k) dst[k] = static_cast<float>(src[k]);
}

template <typename T>
inline void store_float(const float* src, T* dst, std::int64_t n) {
  std::int64_t k = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, Half>) {
    for (; k + 8 <= n; k += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; k < n; ++k) dst[k] = T(src[k]);
}

}  // namespace kiln::cpu
