// The bulk 16-bit float conversions of convert.hpp, one version per instruction set, chosen at
// run time: a build without -march=native still converts 16 values per instruction on AVX-512
// CPUs. Every version reproduces half.hpp's scalar results bit for bit (tests/core/
// test_convert_vec.cpp checks all 2^16 patterns and the float edge cases).
#include "convert.hpp"

#include <cpuid.h>
#include <immintrin.h>

#include <atomic>

namespace kiln::cpu {
namespace {

using U16 = std::uint16_t;

const U16* bits(const BFloat16* p) { return reinterpret_cast<const U16*>(p); }
const U16* bits(const Half* p) { return reinterpret_cast<const U16*>(p); }
U16* bits(BFloat16* p) { return reinterpret_cast<U16*>(p); }
U16* bits(Half* p) { return reinterpret_cast<U16*>(p); }

// Tails and the scalar level: half.hpp's formulas.
void bf16_to_float_scalar(const U16* s, float* d, std::int64_t n) {
  for (std::int64_t k = 0; k < n; ++k) d[k] = half_detail::bf16_bits_to_float(s[k]);
}
void float_to_bf16_scalar(const float* s, U16* d, std::int64_t n) {
  for (std::int64_t k = 0; k < n; ++k) d[k] = half_detail::float_to_bf16_bits(s[k]);
}
void half_to_float_scalar(const U16* s, float* d, std::int64_t n) {
  for (std::int64_t k = 0; k < n; ++k) d[k] = half_detail::half_bits_to_float(s[k]);
}
void float_to_half_scalar(const float* s, U16* d, std::int64_t n) {
  for (std::int64_t k = 0; k < n; ++k) d[k] = half_detail::float_to_half_bits(s[k]);
}

// F16C rounds to nearest even whatever MXCSR says, keeps subnormals (kiln never sets DAZ) and
// quiets NaN keeping the payload's top bits: exactly float_to_half_bits.
constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// ---- AVX-512 (AVX512F only: vpmovzxwd, vpmovdw and the 512-bit F16C forms are all in it) ----

__attribute__((target("avx512f"))) void bf16_to_float_512(const U16* s, float* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k)));
    _mm512_storeu_si512(d + k, _mm512_slli_epi32(w, 16));
  }
  bf16_to_float_scalar(s + k, d + k, n - k);
}

// float_to_bf16_bits on 16 lanes: u + 0x7fff + (bit 16 of u), upper half; NaN lanes take the
// upper half with the quiet bit set instead (never rounded up into Inf).
__attribute__((target("avx512f"))) void float_to_bf16_512(const float* s, U16* d, std::int64_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i half_ulp = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512i u = _mm512_loadu_si512(s + k);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, half_ulp), _mm512_and_si512(hi, one));
    r = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, hi, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), _mm512_cvtepi32_epi16(r));
  }
  float_to_bf16_scalar(s + k, d + k, n - k);
}

__attribute__((target("avx512f"))) void half_to_float_512(const U16* s, float* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm512_storeu_ps(d + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k))));
  half_to_float_scalar(s + k, d + k, n - k);
}

__attribute__((target("avx512f"))) void float_to_half_512(const float* s, U16* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), _mm512_cvtps_ph(_mm512_loadu_ps(s + k), kRound));
  float_to_half_scalar(s + k, d + k, n - k);
}

// ---- AVX2 + F16C ----

__attribute__((target("avx2"))) void bf16_to_float_256(const U16* s, float* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), _mm256_slli_epi32(w, 16));
  }
  bf16_to_float_scalar(s + k, d + k, n - k);
}

// 8 lanes of float_to_bf16_512's formula (the absolute value fits a signed compare).
__attribute__((target("avx2"))) __m256i bf16_round_256(__m256i u) {
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i r =
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
  return _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}

__attribute__((target("avx2"))) void float_to_bf16_256(const float* s, U16* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m256i a = bf16_round_256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k)));
    const __m256i b = bf16_round_256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k + 8)));
    // packus works per 128-bit half (a0 b0 a1 b1); the permute puts the quarters in order.
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), p);
  }
  float_to_bf16_scalar(s + k, d + k, n - k);
}

__attribute__((target("avx2,f16c"))) void half_to_float_256(const U16* s, float* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(d + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k))));
  half_to_float_scalar(s + k, d + k, n - k);
}

__attribute__((target("avx2,f16c"))) void float_to_half_256(const float* s, U16* d, std::int64_t n) {
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k), _mm256_cvtps_ph(_mm256_loadu_ps(s + k), kRound));
  float_to_half_scalar(s + k, d + k, n - k);
}

// From cpuid and XCR0 (the OS must save the vector registers): __builtin_cpu_supports cannot
// name f16c on every compiler kiln builds with.
int best_level() {
  static const int best = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return 0;  // OSXSAVE
    const bool f16c = (c >> 29) & 1u;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (__get_cpuid_max(0, nullptr) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if ((b >> 16) & 1u && (lo & 0xe6u) == 0xe6u) return 2;          // AVX512F, ZMM state saved
    return ((b >> 5) & 1u) && f16c && (lo & 0x6u) == 0x6u ? 1 : 0;  // AVX2 + F16C, YMM state saved
  }();
  return best;
}

std::atomic<int> g_limit{2};

}  // namespace

int convert_level() { return std::min(best_level(), g_limit.load(std::memory_order_relaxed)); }

int set_convert_level(int level) { return g_limit.exchange(level < 0 ? 2 : level); }

void bf16_to_float(const BFloat16* src, float* dst, std::int64_t n) {
  switch (convert_level()) {
    case 2: return bf16_to_float_512(bits(src), dst, n);
    case 1: return bf16_to_float_256(bits(src), dst, n);
    default: return bf16_to_float_scalar(bits(src), dst, n);
  }
}

void float_to_bf16(const float* src, BFloat16* dst, std::int64_t n) {
  switch (convert_level()) {
    case 2: return float_to_bf16_512(src, bits(dst), n);
    case 1: return float_to_bf16_256(src, bits(dst), n);
    default: return float_to_bf16_scalar(src, bits(dst), n);
  }
}

void half_to_float(const Half* src, float* dst, std::int64_t n) {
  switch (convert_level()) {
    case 2: return half_to_float_512(bits(src), dst, n);
    case 1: return half_to_float_256(bits(src), dst, n);
    default: return half_to_float_scalar(bits(src), dst, n);
  }
}

void float_to_half(const float* src, Half* dst, std::int64_t n) {
  switch (convert_level()) {
    case 2: return float_to_half_512(src, bits(dst), n);
    case 1: return float_to_half_256(src, bits(dst), n);
    default: return float_to_half_scalar(src, bits(dst), n);
  }
}

}  // namespace kiln::cpu
