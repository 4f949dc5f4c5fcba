#pragma once
// The bf16 tile products of the AVX512-BF16 attention kernels (attention_bf16.cpp forward,
// attention_bf16_backward.cpp backward; internal to core/cpu). A product's reduction runs over
// pairs: both operands hold two bf16 values of consecutive reduction indices in one 32-bit lane,
// and one vdpbf16ps adds both products to a float32 accumulator.
// Only the functions marked KILN_BF16_TARGET use AVX512-BF16; they are called only when
// bf16_dot.hpp says the CPU has it and it pays, so kiln built for any x86-64 stays correct.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

#include "../half.hpp"
#include "../tensor.hpp"
#include "bf16_dot.hpp"
#include "cpu_backend.hpp"

namespace kiln::cpu::bf16_tiles {

using u16 = std::uint16_t;
using u32 = std::uint32_t;

constexpr std::int64_t kL = 16;  // float lanes of one AVX-512 vector (and bf16 pairs)

#define KILN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// C[r, 0 : NC * 16] = scale * sum_p A(r, p) . B[p, :]   (Acc: C = alpha[r] * C + sum, or C + sum
// without alpha; scale unused) where A(r, p) = A[r * ars + p * aps] and each B row holds NC
// vectors of 16 bf16 pairs.
template <int R, int NC, bool Acc>
KILN_BF16_TARGET void dp_tile(std::int64_t P, const u32* A, std::int64_t ars, std::int64_t aps, const u32* B,
                              std::int64_t ldb, float* C, std::int64_t ldc, const float* alpha, float scale) {
  __m512 acc[R][NC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) {
      if (!Acc) acc[r][c] = _mm512_setzero_ps();
      else if (alpha) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(C + r * ldc + c * kL), _mm512_set1_ps(alpha[r]));
      else acc[r][c] = _mm512_loadu_ps(C + r * ldc + c * kL);
    }
  for (std::int64_t p = 0; p < P; ++p) {
    __m512bh b[NC];
    for (int c = 0; c < NC; ++c) b[c] = (__m512bh)_mm512_loadu_si512(B + p * ldb + c * kL);
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[r * ars + p * aps]));
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c)
      _mm512_storeu_ps(C + r * ldc + c * kL, Acc ? acc[r][c] : _mm512_mul_ps(acc[r][c], _mm512_set1_ps(scale)));
}

template <int Rmax, int NC, bool Acc>
void dp_rows(std::int64_t M, std::int64_t P, const u32* A, std::int64_t ars, std::int64_t aps, const u32* B,
             std::int64_t ldb, float* C, std::int64_t ldc, const float* alpha, float scale) {
  std::int64_t i = 0;
  auto al = [&](std::int64_t i) { return alpha ? alpha + i : nullptr; };
  for (; i + Rmax <= M; i += Rmax)
    dp_tile<Rmax, NC, Acc>(P, A + i * ars, ars, aps, B, ldb, C + i * ldc, ldc, al(i), scale);
  for (; i + 4 <= M; i += 4) dp_tile<4, NC, Acc>(P, A + i * ars, ars, aps, B, ldb, C + i * ldc, ldc, al(i), scale);
  for (; i + 2 <= M; i += 2) dp_tile<2, NC, Acc>(P, A + i * ars, ars, aps, B, ldb, C + i * ldc, ldc, al(i), scale);
  for (; i < M; ++i) dp_tile<1, NC, Acc>(P, A + i * ars, ars, aps, B, ldb, C + i * ldc, ldc, al(i), scale);
}

// dp_gemm on AMX tiles (amx_gemm.cpp), for CPUs where use_bf16_amx() (bf16_dot.hpp) is true.
template <bool Acc>
void amx_gemm(std::int64_t M, std::int64_t N, std::int64_t P, const u32* A, std::int64_t ars, std::int64_t aps,
              const u32* B, std::int64_t ldb, float* C, std::int64_t ldc, const float* alpha, float scale);

// C (M, N) (=|+=) A (M, P pairs; A(r, p) = A[r * ars + p * aps]) B (P pairs, N); N a multiple
// of 16. Acc with alpha: each C row is scaled by alpha[r] first. On AMX tiles where the CPU has
// them (use_bf16_amx), else on vdpbf16ps.
template <bool Acc>
void dp_gemm(std::int64_t M, std::int64_t N, std::int64_t P, const u32* A, std::int64_t ars, std::int64_t aps,
             const u32* B, std::int64_t ldb, float* C, std::int64_t ldc, const float* alpha, float scale) {
  if (use_bf16_amx()) {
    amx_gemm<Acc>(M, N, P, A, ars, aps, B, ldb, C, ldc, alpha, scale);
    return;
  }
  for (std::int64_t c = 0; c < N;) {
    const std::int64_t left = (N - c) / kL;
    if (left >= 4) {
      dp_rows<6, 4, Acc>(M, P, A, ars, aps, B + c, ldb, C + c, ldc, alpha, scale);
      c += 4 * kL;
    } else if (left >= 2) {
      dp_rows<12, 2, Acc>(M, P, A, ars, aps, B + c, ldb, C + c, ldc, alpha, scale);
      c += 2 * kL;
    } else {
      dp_rows<12, 1, Acc>(M, P, A, ars, aps, B + c, ldb, C + c, ldc, alpha, scale);
      c += kL;
    }
  }
}

// out[i] = bf16(p[i]) (round to nearest even), n a multiple of 16.
KILN_BF16_TARGET inline void round_bf16(const float* p, u16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += kL)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p + i)));
}

// out[p * ld + j] = pair(bf16(x[2p][j]), bf16(x[2p + 1][j])) for p < (rows + 1) / 2, j < n (a
// multiple of 16), x rows ldx apart; a missing odd last row counts as 0. The transposed pair
// operand of a product that reduces over the rows of x.
KILN_BF16_TARGET inline void pair_rows_bf16(const float* x, std::int64_t ldx, std::int64_t rows, std::int64_t n,
                                            u32* out, std::int64_t ld) {
  for (std::int64_t p = 0; 2 * p < rows; ++p) {
    const float* lo = x + 2 * p * ldx;
    const float* hi = 2 * p + 1 < rows ? lo + ldx : nullptr;
    for (std::int64_t j = 0; j < n; j += kL) {
      const __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(lo + j)));
      const __m512i h =
          hi ? _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(hi + j))), 16)
             : _mm512_setzero_si512();
      _mm512_storeu_si512(out + p * ld + j, _mm512_or_si512(l, h));
    }
  }
}

inline u16 bits(const BFloat16& x) { return x.bits(); }
inline u32 pair(u16 lo, u16 hi) { return static_cast<u32>(lo) | (static_cast<u32>(hi) << 16); }
inline bool finite_bits(u16 b) { return (b & 0x7f80u) != 0x7f80u; }

// A float32 copy of a bfloat16/float16 tensor (masks, ALiBi slopes, sinks); float32 and bool
// tensors (and undefined ones) as they are.
inline Tensor as_float32(const Tensor& t) {
  if (!t.defined() || t.dtype() == kFloat32 || t.dtype() == kBool) return t;
  Tensor f = Tensor::empty(t.shape(), kFloat32, t.device());
  cpu_backend().copy(f, t);
  return f;
}

}  // namespace kiln::cpu::bf16_tiles
