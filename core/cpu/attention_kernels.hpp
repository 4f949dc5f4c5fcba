#pragma once
// Building blocks of the CPU attention kernels (attention.cpp): SIMD vectors (GCC vector
// extensions, AVX-512 when compiled for it), exp2, the dropout bits, and the register-blocked
// tile product. Internal to core/cpu.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__)
// GCC 12 reports false "used uninitialized" inside its own AVX-512 intrinsics (_mm512_set1_*).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "../backend.hpp"
#include "../generator.hpp"

namespace kiln::cpu::attention_kernels {

// ---------------------------------------------------------------- SIMD helpers
// The vector width the target has (a wider vector type than the ISA changes the ABI).
#if defined(__AVX512F__)
#define KILN_ATTN_VEC_BYTES 64
#elif defined(__AVX__)
#define KILN_ATTN_VEC_BYTES 32
#else
#define KILN_ATTN_VEC_BYTES 16
#endif

template <typename F>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(KILN_ATTN_VEC_BYTES)));
  typedef float U __attribute__((vector_size(KILN_ATTN_VEC_BYTES), aligned(4), may_alias));  // unaligned access
  typedef std::int32_t I __attribute__((vector_size(KILN_ATTN_VEC_BYTES)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(KILN_ATTN_VEC_BYTES)));
  typedef double U __attribute__((vector_size(KILN_ATTN_VEC_BYTES), aligned(8), may_alias));
  typedef std::int64_t I __attribute__((vector_size(KILN_ATTN_VEC_BYTES)));
};
template <typename F>
using Vec = typename Simd<F>::V;
template <typename F>
using IVec = typename Simd<F>::I;
template <typename F>
constexpr std::int64_t kW = KILN_ATTN_VEC_BYTES / static_cast<std::int64_t>(sizeof(F));

template <typename F>
inline Vec<F> vload(const F* p) {
  return *reinterpret_cast<const typename Simd<F>::U*>(p);
}
template <typename F>
inline void vstore(F* p, Vec<F> v) {
  *reinterpret_cast<typename Simd<F>::U*>(p) = v;
}
template <typename F>
inline Vec<F> vsplat(F x) {
  return x - Vec<F>{};  // exact for every x (x + 0 is not: -0 + 0 = +0), so it folds to a broadcast
}
// Horizontal sum / max (NaN lanes may be ignored by hmax; callers check NaN themselves).
template <typename F>
inline F hsum(Vec<F> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<F, float>) return _mm512_reduce_add_ps(reinterpret_cast<__m512&>(v));
  else return _mm512_reduce_add_pd(reinterpret_cast<__m512d&>(v));
#else
  F s = 0;
  for (int i = 0; i < kW<F>; ++i) s += v[i];
  return s;
#endif
}
template <typename F>
inline F hmax(Vec<F> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<F, float>) return _mm512_reduce_max_ps(reinterpret_cast<__m512&>(v));
  else return _mm512_reduce_max_pd(reinterpret_cast<__m512d&>(v));
#else
  F m = v[0];
  for (int i = 1; i < kW<F>; ++i) m = v[i] > m ? v[i] : m;
  return m;
#endif
}

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
template <typename F>
constexpr F kNegInf = -std::numeric_limits<F>::infinity();

// 2^t lane-wise for t <= 0 (all softmax needs). t below the smallest normal exponent gives
// exactly 0 (no denormals, and -inf -> 0 without a select); NaN stays NaN. The 2^n factor is
// built from exponent bits: n = -127 gives +0.0, and p * 0.0 raises no underflow (vscalefps
// to 0 does, and the microcode assist makes masked entries ~3x slower).
inline Vec<float> exp2v(Vec<float> t) {
  using V = Vec<float>;
  using I = IVec<float>;
  t = t < -125.0f ? vsplat(-127.0f) : t;
  const V magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  V tm = t + magic;
  V f = t - (tm - magic);  // in [-0.5, 0.5]
  V p = vsplat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  I e = ((I)tm - (I)magic + 127) << 23;
  return p * (V)e;
}
inline Vec<double> exp2v(Vec<double> t) {
  using V = Vec<double>;
  using I = IVec<double>;
  t = t < -1021.0 ? vsplat(-1023.0) : t;
  const V magic = vsplat(6755399441055744.0);  // 1.5 * 2^52
  V tm = t + magic;
  V f = t - (tm - magic);
  // Taylor series of 2^f = e^(f ln 2) to degree 13: relative error < 1e-16 on [-0.5, 0.5].
  static constexpr double c[] = {1.3691488853904124e-12, 2.5678435993488196e-11, 4.44553827187081e-10,
                                 7.054911620801121e-09,  1.0178086009239696e-07, 1.3215486790144305e-06,
                                 1.5252733804059838e-05, 0.00015403530393381606, 0.0013333558146428441,
                                 0.009618129107628477,   0.055504108664821576,   0.2402265069591007,
                                 0.6931471805599453,     1.0};
  V p = vsplat(c[0]);
  for (int i = 1; i < 14; ++i) p = p * f + c[i];
  I e = ((I)tm - (I)magic + 1023) << 52;
  return p * (V)e;
}

template <typename F>
bool all_finite(const F* p, std::int64_t n) {
  // x - x is 0 for finite x, NaN otherwise; vector lanes keep the scan branch-free.
  Vec<F> z{};
  std::int64_t i = 0;
  for (; i + kW<F> <= n; i += kW<F>) {
    Vec<F> x = vload(p + i);
    z += x - x;
  }
  F t = 0;
  for (; i < n; ++i) t += p[i] - p[i];
  for (int l = 0; l < kW<F>; ++l) t += z[l];
  return t == 0;
}

// ---------------------------------------------------------------- dropout bits
// Key j of a row uses Philox counter row_ctr + (j / 64) * 16 + j % 16, word (j / 16) % 4: the 64
// keys of a group come from 16 counters computed side by side. out[w * 16 + i] = word w of
// counter ctr + i.
inline void philox64(std::uint64_t key, std::uint64_t ctr, std::uint32_t* out) {
#if defined(__AVX512F__)
  alignas(64) std::uint32_t lo[16], hi[16];
  for (int i = 0; i < 16; ++i) {
    std::uint64_t c = ctr + static_cast<std::uint64_t>(i);
    lo[i] = static_cast<std::uint32_t>(c);
    hi[i] = static_cast<std::uint32_t>(c >> 32);
  }
  __m512i c0 = _mm512_load_si512(lo), c1 = _mm512_load_si512(hi);
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    // 32 x 32 -> 64-bit products of the even and the odd lanes, then split into hi / lo words.
    __m512i pe0 = _mm512_mul_epu32(c0, m0), po0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    __m512i pe1 = _mm512_mul_epu32(c2, m1), po1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe0, 32), po0);
    __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, pe0, _mm512_slli_epi64(po0, 32));
    __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe1, 32), po1);
    __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, pe1, _mm512_slli_epi64(po1, 32));
    __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  _mm512_storeu_si512(out, c0);
  _mm512_storeu_si512(out + 16, c1);
  _mm512_storeu_si512(out + 32, c2);
  _mm512_storeu_si512(out + 48, c3);
#else
  for (int i = 0; i < 16; ++i) {
    auto w = philox4x32(key, ctr + static_cast<std::uint64_t>(i));
    for (int k = 0; k < 4; ++k) out[k * 16 + i] = w[k];
  }
#endif
}

struct Dropout {
  bool on = false;
  std::uint64_t seed = 0, offset = 0, per_row = 0;  // Philox counters per (n, h, t) row
  std::uint32_t thresh = 0;                          // keep when the word is below it
  double inv = 0;                                    // 1 / keep_prob (0 when nothing is kept)
};

inline Dropout make_dropout(const AttentionArgs& a, std::int64_t S) {
  Dropout d;
  if (a.keep_prob >= 1.0) return d;
  d.on = true;
  d.seed = a.seed;
  d.offset = a.offset;
  d.per_row = static_cast<std::uint64_t>((S + 63) / 64 * 16);
  d.thresh = static_cast<std::uint32_t>(std::min(a.keep_prob * 4294967296.0, 4294967295.0));
  d.inv = a.keep_prob > 0 ? 1.0 / a.keep_prob : 0.0;
  return d;
}

// mult[i] = dropout multiplier (0 or 1/keep) of key j0 + i of row `row`, i < n; j0 % 64 == 0.
template <typename F>
void dropout_mult(const Dropout& d, std::int64_t row, std::int64_t j0, std::int64_t n, F* mult) {
  alignas(64) std::uint32_t w[64];
  const std::uint64_t base = d.offset + static_cast<std::uint64_t>(row) * d.per_row;
  const F inv = static_cast<F>(d.inv);
  for (std::int64_t b = 0; b < n; b += 64) {
    philox64(d.seed, base + static_cast<std::uint64_t>((j0 + b) / 64 * 16), w);
    const std::int64_t m = std::min<std::int64_t>(64, n - b);
    for (std::int64_t i = 0; i < m; ++i) mult[b + i] = w[i] < d.thresh ? inv : F(0);
  }
}

// ---------------------------------------------------------------- tile products
// C[i, :] (=|+=) sum_k A(i, k) * B[k, :] for a (R, NC * W) block, with A(i, k) = A[i * ars + k * aks]
// (so A may be read transposed) and B rows of NC vectors. Acc: C is loaded first (times alpha[i]
// when alpha is given); else it is overwritten.
template <typename F, int R, int NC, bool Acc>
inline void microkernel(std::int64_t K, const F* A, std::int64_t ars, std::int64_t aks, const F* B,
                        std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha) {
  using V = Vec<F>;
  constexpr std::int64_t W = kW<F>;
  V acc[R][NC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) {
      if constexpr (Acc) {
        acc[r][c] = vload(C + r * ldc + c * W);
        if (alpha) acc[r][c] *= alpha[r];
      } else {
        acc[r][c] = V{};
      }
    }
  for (std::int64_t k = 0; k < K; ++k) {
    V b[NC];
    for (int c = 0; c < NC; ++c) b[c] = vload(B + k * ldb + c * W);
    for (int r = 0; r < R; ++r) {
      V a = vsplat(A[r * ars + k * aks]);
      for (int c = 0; c < NC; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) vstore(C + r * ldc + c * W, acc[r][c]);
}

// Rows in blocks of Rmax, then 4, 2, 1 (NC vectors wide).
template <typename F, int Rmax, int NC, bool Acc>
void gemm_cols(std::int64_t M, std::int64_t K, const F* A, std::int64_t ars, std::int64_t aks, const F* B,
               std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha) {
  std::int64_t i = 0;
  auto at = [&](std::int64_t i) { return alpha ? alpha + i : nullptr; };
  for (; i + Rmax <= M; i += Rmax)
    microkernel<F, Rmax, NC, Acc>(K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, at(i));
  for (; i + 4 <= M; i += 4) microkernel<F, 4, NC, Acc>(K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, at(i));
  for (; i + 2 <= M; i += 2) microkernel<F, 2, NC, Acc>(K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, at(i));
  for (; i < M; ++i) microkernel<F, 1, NC, Acc>(K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, at(i));
}

// C (M, N) (=|+=) A (M, K) B (K, N); N a multiple of the vector width; B and C rows contiguous.
template <typename F, bool Acc>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const F* A, std::int64_t ars, std::int64_t aks,
          const F* B, std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha = nullptr) {
  constexpr std::int64_t W = kW<F>;
  for (std::int64_t c = 0; c < N;) {
    const std::int64_t left = (N - c) / W;
    if (left >= 4) {
      gemm_cols<F, 6, 4, Acc>(M, K, A, ars, aks, B + c, ldb, C + c, ldc, alpha);
      c += 4 * W;
    } else if (left >= 2) {
      gemm_cols<F, 12, 2, Acc>(M, K, A, ars, aks, B + c, ldb, C + c, ldc, alpha);
      c += 2 * W;
    } else {
      gemm_cols<F, 12, 1, Acc>(M, K, A, ars, aks, B + c, ldb, C + c, ldc, alpha);
      c += W;
    }
  }
}

// The exact path of gemm<F, true> when an operand tile holds NaN/Inf: pairs (query r, key j)
// with score S[r * lds + j] == -inf are skipped. trans = false: C rows are queries and k runs
// over keys; trans = true: C rows are keys and k runs over queries.
template <typename F>
void gemm_skip(bool trans, std::int64_t M, std::int64_t N, std::int64_t K, const F* A, std::int64_t lda,
               const F* B, std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha, const F* Sc,
               std::int64_t lds) {
  for (std::int64_t i = 0; i < M; ++i) {
    F* c = C + i * ldc;
    if (alpha)
      for (std::int64_t x = 0; x < N; ++x) c[x] *= alpha[i];
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t r = trans ? k : i, j = trans ? i : k;
      if (Sc[r * lds + j] == kNegInf<F>) continue;
      const F a = A[r * lda + j];
      const F* b = B + k * ldb;
      for (std::int64_t x = 0; x < N; ++x) c[x] += a * b[x];
    }
  }
}

}  // namespace kiln::cpu::attention_kernels
