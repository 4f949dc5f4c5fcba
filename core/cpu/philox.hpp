#pragma once
// Philox4x32-10 (kiln::philox4x32, core/generator.hpp) for 16 consecutive counters side by side:
// the same words bit for bit, one vector lane per counter (internal to core/cpu: random.cpp's fills
// and dropout, the attention kernels' dropout bits). Like the other CPU kernels it takes the vector
// ISA the build targets (kiln builds with -march=native by default): AVX-512 (one register per
// word), AVX2 (two), else plain GCC vector extensions, which are correct on any target but
// multiply with 64-bit lanes (GCC does not turn them into vpmuludq).
#include <cstdint>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace kiln::cpu {

using U32x16 = std::uint32_t __attribute__((vector_size(64)));
using U64x8 = std::uint64_t __attribute__((vector_size(64)));

// hi and lo: the upper and lower 32 bits of a[i] * m in every lane.
inline void mulhilo16(const U32x16& a, std::uint32_t m, U32x16& hi, U32x16& lo) {
  U64x8 even, odd;  // 64-bit products of the even and of the odd lanes
#if defined(__AVX512F__)
  // The zero-masking forms with every lane on are plain vpmuludq; the unmasked intrinsics start
  // from _mm512_undefined_epi32, which GCC 12 reports as used uninitialized.
  const U64x8 a64 = reinterpret_cast<U64x8>(a);
  const __m512i mv = _mm512_set1_epi64(m);
  even = reinterpret_cast<U64x8>(_mm512_maskz_mul_epu32(0xff, reinterpret_cast<__m512i>(a64), mv));
  odd = reinterpret_cast<U64x8>(_mm512_maskz_mul_epu32(0xff, reinterpret_cast<__m512i>(a64 >> 32), mv));
#elif defined(__AVX2__)
  __m256i v[2], e[2], o[2];
  std::memcpy(v, &a, sizeof v);
  const __m256i mv = _mm256_set1_epi64x(m);
  for (int h = 0; h < 2; ++h) {
    e[h] = _mm256_mul_epu32(v[h], mv);
    o[h] = _mm256_mul_epu32(_mm256_srli_epi64(v[h], 32), mv);
  }
  std::memcpy(&even, e, sizeof e);
  std::memcpy(&odd, o, sizeof o);
#else
  const U64x8 a64 = reinterpret_cast<U64x8>(a);
  even = (a64 & 0xffffffffull) * static_cast<std::uint64_t>(m);
  odd = (a64 >> 32) * static_cast<std::uint64_t>(m);
#endif
  // Lane 2i of a U32x16 is the low half of 64-bit lane i (little endian).
  hi = reinterpret_cast<U32x16>((even >> 32) | (odd & 0xffffffff00000000ull));
  lo = reinterpret_cast<U32x16>((even & 0xffffffffull) | (odd << 32));
}

/// w[k][i] = word k of philox4x32(key, ctr + i), i < 16 (the 64-bit counter carries into its
/// upper word as the scalar one does).
inline void philox16(std::uint64_t key, std::uint64_t ctr, U32x16 (&w)[4]) {
  constexpr U32x16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const auto lo32 = static_cast<std::uint32_t>(ctr);
  U32x16 c0 = lo32 + iota;
  // A lane whose low word wrapped adds 1 to the upper word (the comparison gives -1 there).
  U32x16 c1 = static_cast<std::uint32_t>(ctr >> 32) - reinterpret_cast<U32x16>(c0 < lo32);
  U32x16 c2 = {}, c3 = {};
  auto k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    U32x16 hi0, lo0, hi1, lo1;
    mulhilo16(c0, 0xD2511F53u, hi0, lo0);
    mulhilo16(c2, 0xCD9E8D57u, hi1, lo1);
    const U32x16 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

/// The words of philox16 in counter order: e[4 i + k] = word k of philox4x32(key, ctr + i), the
/// order in which Backend::random's blocks hand them to consecutive elements.
inline void philox16_ordered(std::uint64_t key, std::uint64_t ctr, std::uint32_t* e) {
  U32x16 w[4];
  philox16(key, ctr, w);
  // Interleave words 0/1 and 2/3 of counters 0-7 and 8-15, then the pairs of pairs.
  const U32x16 a0 = __builtin_shufflevector(w[0], w[1], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const U32x16 a1 = __builtin_shufflevector(w[0], w[1], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const U32x16 b0 = __builtin_shufflevector(w[2], w[3], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const U32x16 b1 = __builtin_shufflevector(w[2], w[3], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const U32x16 e0 = __builtin_shufflevector(a0, b0, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const U32x16 e1 = __builtin_shufflevector(a0, b0, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
  const U32x16 e2 = __builtin_shufflevector(a1, b1, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const U32x16 e3 = __builtin_shufflevector(a1, b1, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
  std::memcpy(e, &e0, 64);
  std::memcpy(e + 16, &e1, 64);
  std::memcpy(e + 32, &e2, 64);
  std::memcpy(e + 48, &e3, 64);
}

}  // namespace kiln::cpu
