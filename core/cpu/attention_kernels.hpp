#pragma once
// Building blocks of the CPU attention kernels (attention.cpp): SIMD vectors (GCC vector
// extensions, AVX-512 when compiled for it), exp2, the dropout bits, the register-blocked tile
// product, score rows (mask, online softmax), geometry, scratch and packing. Internal to core/cpu.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
// GCC 12 reports false "used uninitialized" inside its own AVX-512 intrinsics (_mm512_set1_*).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "../allocator.hpp"
#include "../backend.hpp"
#include "../half.hpp"
#include "loops.hpp"
#include "philox.hpp"

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
  static constexpr double c[] = {1.3691488853904124e-12, 2.5678435993488196e-11,
                                 4.44553827187081e-10,   7.054911620801121e-09,
                                 1.0178086009239696e-07, 1.3215486790144305e-06,
                                 1.5252733804059838e-05, 0.00015403530393381606,
                                 0.0013333558146428441,  0.009618129107628477,
                                 0.055504108664821576,   0.2402265069591007,
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
  U32x16 w[4];
  philox16(key, ctr, w);
  std::memcpy(out, w, sizeof w);
}

struct Dropout {
  bool on = false;
  std::uint64_t seed = 0, offset = 0, per_row = 0;  // Philox counters per (n, h, t) row
  std::uint32_t thresh = 0;                         // keep when the word is below it
  double inv = 0;                                   // 1 / keep_prob (0 when nothing is kept)
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
inline void microkernel(std::int64_t K, const F* A, std::int64_t ars, std::int64_t aks, const F* B, std::int64_t ldb,
                        F* C, std::int64_t ldc, const F* alpha) {
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
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const F* A, std::int64_t ars, std::int64_t aks, const F* B,
          std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha = nullptr) {
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
void gemm_skip(bool trans, std::int64_t M, std::int64_t N, std::int64_t K, const F* A, std::int64_t lda, const F* B,
               std::int64_t ldb, F* C, std::int64_t ldc, const F* alpha, const F* Sc, std::int64_t lds) {
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

// C (+)= A B with gemm<F, true>, or with gemm_skip when an operand tile is not all finite
// (A is (M, K) with row stride lda, or read transposed from (K, M) when Trans).
template <typename F, bool Trans>
inline void gemm_acc(bool finite, std::int64_t M, std::int64_t N, std::int64_t K, const F* A, std::int64_t lda,
                     const F* B, std::int64_t ldb, F* C, std::int64_t ldc, const F* Sc, std::int64_t lds,
                     const F* alpha = nullptr) {
  if (finite) gemm<F, true>(M, N, K, A, Trans ? 1 : lda, Trans ? lda : 1, B, ldb, C, ldc, alpha);
  else gemm_skip<F>(Trans, M, N, K, A, lda, B, ldb, C, ldc, alpha, Sc, lds);
}

// ---------------------------------------------------------------- rows
// What shapes one score row besides q.k: the user mask row (already at the tile's first key),
// the ALiBi slope in log2 units (0: none) and the query's absolute position.
template <typename F>
struct RowMask {
  const char* mrow;
  bool is_bool;
  std::int64_t ms;  // mask stride along keys
  F slope;
  std::int64_t pos;
};

// Masks one score row (log2 units) of keys [j0, j0 + cp): keys before `first` or at or past
// `valid` (window, causal limit, end of the sequence, vector padding; both relative to j0)
// become -inf; over [first, valid) the user mask applies, then -slope * |pos - key|.
template <typename F>
void mask_row(F* s, std::int64_t j0, std::int64_t first, std::int64_t valid, std::int64_t cp, const RowMask<F>& rm) {
  const std::int64_t f = std::clamp<std::int64_t>(first, 0, cp), e = std::clamp<std::int64_t>(valid, f, cp);
  std::fill(s, s + f, kNegInf<F>);
  if (rm.mrow) {
    const std::int64_t ms = rm.ms;
    if (rm.is_bool) {
      const auto* m = reinterpret_cast<const std::uint8_t*>(rm.mrow);
      if (ms == 1)
        for (std::int64_t j = f; j < e; ++j) s[j] = m[j] ? s[j] : kNegInf<F>;
      else
        for (std::int64_t j = f; j < e; ++j) s[j] = m[j * ms] ? s[j] : kNegInf<F>;
    } else {
      // A -inf entry masks even a NaN logit (from NaN in a masked-out key).
      const F* m = reinterpret_cast<const F*>(rm.mrow);
      const F l2e = static_cast<F>(kLog2e);
      for (std::int64_t j = f; j < e; ++j) {
        F x = m[j * ms];
        s[j] = x == kNegInf<F> ? kNegInf<F> : s[j] + x * l2e;
      }
    }
  }
  if (rm.slope != F(0)) {
    const std::int64_t d0 = rm.pos - j0;
    for (std::int64_t j = f; j < e; ++j) s[j] -= rm.slope * static_cast<F>(std::abs(d0 - j));
  }
  std::fill(s + e, s + cp, kNegInf<F>);
}

template <typename F>
F max_row(const F* s, std::int64_t cp) {
  Vec<F> m = vsplat(kNegInf<F>);
  for (std::int64_t j = 0; j < cp; j += kW<F>) {
    Vec<F> x = vload(s + j);
    m = x > m ? x : m;
  }
  return hmax<F>(m);
}

template <typename F>
bool has_nan(const F* s, std::int64_t n) {
  bool any = false;
  for (std::int64_t j = 0; j < n; ++j) any |= s[j] != s[j];
  return any;
}

// p = 2^(s - m) (times the dropout multipliers when given); returns the sum before dropout.
template <typename F>
F exp_row(const F* s, F m, F* p, std::int64_t cp, const F* mult) {
  Vec<F> acc{}, mv = vsplat(m);
  for (std::int64_t j = 0; j < cp; j += kW<F>) {
    Vec<F> e = exp2v(vload(s + j) - mv);
    acc += e;
    vstore(p + j, mult ? e * vload(mult + j) : e);
  }
  return hsum<F>(acc);
}

// One score row s (log2 units, keys [j0, j0 + cols), padded to cp) through the mask and the
// online softmax: p gets 2^(s - new max) (times the dropout multipliers), the running max m and
// sum l are updated; returns the factor the row's accumulator must be scaled by. whole: no key
// of the tile is masked (only the padding). w: the row's weights (raw logits stored for later).
template <typename F>
__attribute__((always_inline)) inline F online_row(F* s, F* p, F& m, F& l, std::int64_t j0, std::int64_t cols,
                                                   std::int64_t cp, bool whole, std::int64_t first, std::int64_t valid,
                                                   const RowMask<F>& rm, F* w, const Dropout& drop, std::int64_t drow,
                                                   F* mult) {
  if (whole) std::fill(s + cols, s + cp, kNegInf<F>);
  else mask_row(s, j0, first, valid, cp, rm);
  if (w) std::copy(s, s + cols, w + j0);
  if (m != m) {  // poisoned by NaN logits: stays NaN
    std::fill(p, p + cp, F(0));
    return 1;
  }
  const F mnew = std::max(m, max_row(s, cp));
  if (mnew == kNegInf<F>) {  // nothing to attend to yet
    std::fill(p, p + cp, F(0));
    if (has_nan(s, cols)) m = l = std::numeric_limits<F>::quiet_NaN();
    return 1;
  }
  const F alpha = mnew == m ? F(1) : m == kNegInf<F> ? F(0) : std::exp2(m - mnew);
  if (mult) dropout_mult(drop, drow, j0, cp, mult);
  l = l * alpha + exp_row(s, mnew, p, cp, mult);
  m = mnew;
  return alpha;
}

// A finished row's output factor (out = acc * inv) and logsumexp in log2 units, from its running
// max m and sum l; the sink (log2 units) joins the denominator when has_sink. A row with no key
// left stays empty (lse -inf, output 0); NaN stays NaN.
template <typename F>
void row_norm(F m, F l, bool has_sink, F sink, F& inv, F& lse2) {
  if (m == kNegInf<F>) {
    inv = 0;
    lse2 = kNegInf<F>;
  } else if (has_sink && m == m) {
    const F mx = std::max(m, sink), keys = std::exp2(m - mx), den = l * keys + std::exp2(sink - mx);
    inv = keys / den;
    lse2 = mx + std::log2(den);
  } else {
    inv = F(1) / l;
    lse2 = m + std::log2(l);
  }
}

// A weights row (S keys) holding raw logits over [kbeg, kend) becomes probabilities; keys
// outside were never computed and get weight 0.
template <typename F>
void finish_weights(F* wr, std::int64_t S, std::int64_t kbeg, std::int64_t kend, F lse2) {
  if (lse2 == kNegInf<F>) {
    std::fill(wr, wr + S, F(0));
    return;
  }
  std::fill(wr, wr + kbeg, F(0));
  std::int64_t j = kbeg;
  for (; j + kW<F> <= kend; j += kW<F>) vstore(wr + j, exp2v(vload(wr + j) - vsplat(lse2)));
  for (; j < kend; ++j) wr[j] = wr[j] == kNegInf<F> ? F(0) : std::exp2(wr[j] - lse2);
  std::fill(wr + kend, wr + S, F(0));
}

// ---------------------------------------------------------------- geometry and scratch
template <typename F>
constexpr std::int64_t round_up_w(std::int64_t x) {
  return (x + kW<F> - 1) / kW<F> * kW<F>;
}

template <typename F>
struct Geo {
  static constexpr std::int64_t kBq = 32;  // queries per block
  static constexpr std::int64_t kBk = 64;  // keys per block (a multiple of 64: dropout bits come in 64s)
  std::int64_t N, H, Hkv, G, T, S, Dk, Dv, Dkp, Dvp, Sp, nqb, nkb;
  bool causal;
  std::int64_t wl, wr;  // window widths, -1 = unbounded
  explicit Geo(const AttentionArgs& a) {
    N = a.q.size(0);
    H = a.q.size(1);
    T = a.q.size(2);
    Dk = a.q.size(3);
    Hkv = a.k.size(1);
    S = a.k.size(2);
    Dv = a.v.size(3);
    G = Hkv ? H / Hkv : 1;
    auto up = [](std::int64_t x) { return (x + kW<F> - 1) / kW<F> * kW<F>; };
    Dkp = up(Dk);
    Dvp = up(Dv);
    Sp = up(S);
    nqb = (T + kBq - 1) / kBq;
    nkb = (S + kBk - 1) / kBk;
    causal = a.causal;
    // Widths reaching past every key are unbounded (and cannot overflow below).
    wl = a.window_left < 0 || a.window_left > S + T ? -1 : a.window_left;
    wr = a.window_right < 0 || a.window_right > S + T ? -1 : a.window_right;
  }
  // Query t (at position S - T + t) may see keys [lo(t), hi(t)) before the user mask; both are
  // nondecreasing in t.
  std::int64_t lo(std::int64_t t) const { return wl >= 0 ? std::clamp<std::int64_t>(S - T + t - wl, 0, S) : 0; }
  std::int64_t hi(std::int64_t t) const {
    std::int64_t h = S;
    if (causal) h = std::min(h, S - T + t + 1);
    if (wr >= 0) h = std::min(h, S - T + t + wr + 1);
    return std::max<std::int64_t>(h, 0);
  }
  // Keys one query block sees on average (for the thread grain).
  std::int64_t span() const {
    const std::int64_t r = causal ? 0 : wr;
    return wl >= 0 && r >= 0 ? std::min(S, wl + r + kBq + kBk) : S;
  }
};

// Per (n, h) values of a (N, H) tensor of any strides (ALiBi slopes, sinks).
template <typename F>
struct HeadValues {
  const F* p = nullptr;
  std::int64_t sn = 0, sh = 0;
  explicit HeadValues(const Tensor& t) {
    if (!t.defined()) return;
    p = t.data_ptr<F>();
    sn = t.stride(0);
    sh = t.stride(1);
  }
  F operator()(std::int64_t n, std::int64_t h, F none) const { return p ? p[n * sn + h * sh] : none; }
};

// Thread scratch from the caching allocator (no page faults in steady state).
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) : n_(std::max<std::size_t>(bytes, 64)), p_(cpu_allocator().allocate(n_)) {}
  ~Scratch() { cpu_allocator().deallocate(p_, n_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename F>
  F* take(std::int64_t count) {  // 64-byte aligned piece
    F* r = reinterpret_cast<F*>(static_cast<char*>(p_) + used_);
    used_ += (static_cast<std::size_t>(count) * sizeof(F) + 63) / 64 * 64;
    return r;
  }
  void reset() { used_ = 0; }
  static std::size_t size_of(std::initializer_list<std::int64_t> counts, std::size_t elem) {
    std::size_t s = 0;
    for (auto c : counts) s += (static_cast<std::size_t>(c) * elem + 63) / 64 * 64;
    return s;
  }

 private:
  std::size_t n_;
  void* p_;
  std::size_t used_ = 0;
};

struct MaskView {
  const char* p = nullptr;
  bool is_bool = false;
  std::int64_t isz = 0, sn = 0, sh = 0, st = 0, ss = 0;
  explicit MaskView(const Tensor& m) {
    if (!m.defined()) return;
    p = static_cast<const char*>(m.raw_data());
    is_bool = m.dtype() == kBool;
    isz = static_cast<std::int64_t>(itemsize(m.dtype()));
    sn = m.stride(0);
    sh = m.stride(1);
    st = m.stride(2);
    ss = m.stride(3);
  }
  const char* row(std::int64_t n, std::int64_t h, std::int64_t t) const {
    return p ? p + (n * sn + h * sh + t * st) * isz : nullptr;
  }
  // Query row (n, h, t)'s mask from key j0 on, with its ALiBi slope and position among the keys.
  template <typename F>
  RowMask<F> row_mask(std::int64_t n, std::int64_t h, std::int64_t t, std::int64_t j0, F slope,
                      std::int64_t pos) const {
    const char* r = row(n, h, t);
    return {r ? r + j0 * ss * isz : nullptr, is_bool, ss, slope, pos};
  }
};

// Runs body(item, scratch) for items [0, n) over the thread pool, pulling items from a shared
// counter (causal blocks differ in cost); one scratch area per thread.
template <typename Body>
void run_items(std::int64_t n, std::int64_t grain, std::size_t scratch_bytes, Body&& body) {
  const int nt = threads_for(n, grain);
  std::vector<std::unique_ptr<Scratch>> scratch;
  for (int i = 0; i < std::max(nt, 1); ++i) scratch.push_back(std::make_unique<Scratch>(scratch_bytes));
  std::atomic<std::int64_t> next{0};
  parallel_range(n, grain, [&](std::int64_t, std::int64_t) {
    Scratch& s = *scratch[static_cast<std::size_t>(nt > 1 ? omp_get_thread_num() : 0)];
    for (std::int64_t it; (it = next.fetch_add(1)) < n;) {
      s.reset();
      body(it, s);
    }
  });
}

// Items needed so each thread gets ~64k multiply-adds before splitting.
inline std::int64_t grain_for(std::int64_t work_per_item) {
  return std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(work_per_item, 1));
}

// dst[d * ld + j] = src[j * sj + d * sd] for j < rows, d < D; columns [rows, cp) zeroed.
template <typename F>
void pack_transposed(F* dst, std::int64_t ld, const F* src, std::int64_t sj, std::int64_t sd, std::int64_t rows,
                     std::int64_t cp, std::int64_t D) {
  // 16 source rows at a time: they stay in L1 while each destination row gets 16 contiguous values.
  constexpr std::int64_t kJ = 16;
  for (std::int64_t j0 = 0; j0 < rows; j0 += kJ) {
    const std::int64_t jn = std::min(kJ, rows - j0);
    const F* s = src + j0 * sj;
    for (std::int64_t d = 0; d < D; ++d) {
      F* o = dst + d * ld + j0;
      const F* sc = s + d * sd;
      for (std::int64_t j = 0; j < jn; ++j) o[j] = sc[j * sj];
    }
  }
  for (std::int64_t d = 0; d < D; ++d) std::fill(dst + d * ld + rows, dst + d * ld + cp, F(0));
}

// dst[j * ld + d] = src[j * sj + d * sd] * scale for j < rows, d < D; columns [D, ld) zeroed. The
// source may be a narrower type (bfloat16 K/V read by the decode path), converted exactly.
template <typename F, typename S>
void pack_rows(F* dst, std::int64_t ld, const S* src, std::int64_t sj, std::int64_t sd, std::int64_t rows,
               std::int64_t D, F scale = F(1)) {
  for (std::int64_t j = 0; j < rows; ++j) {
    F* o = dst + j * ld;
    const S* s = src + j * sj;
    if (sd == 1)
      for (std::int64_t d = 0; d < D; ++d) o[d] = static_cast<F>(s[d]) * scale;
    else
      for (std::int64_t d = 0; d < D; ++d) o[d] = static_cast<F>(s[d * sd]) * scale;
    for (std::int64_t d = D; d < ld; ++d) o[d] = 0;
  }
}

using St4 = std::array<std::int64_t, 4>;
inline St4 st4(const Tensor& t) {
  return t.defined() ? St4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)} : St4{};
}

template <typename F>
F* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<F>() : nullptr;
}

// What every kernel of one attention call reads: q (N, H, T, Dk), k (N, Hkv, S, Dk) and
// v (N, Hkv, S, Dv) with their strides, the mask, ALiBi slopes, sinks, dropout, and q's scale
// in log2 units (logits are kept in log2 units, so each probability is one exp2).
// bfloat16 k and v (read only by the decode path, which converts them tile by tile) leave k / v
// null and set k16 / v16 instead.
template <typename F>
struct AttnInputs {
  const F *q, *k, *v;
  const BFloat16 *k16, *v16;
  St4 qst, kst, vst;
  MaskView mask;
  HeadValues<F> alibi, sinks;
  Dropout drop;
  F qscale, l2e;
  AttnInputs(const AttentionArgs& a, std::int64_t S)
      : q(a.q.data_ptr<F>()),
        k(a.k.dtype() == kBFloat16 ? nullptr : a.k.data_ptr<F>()),
        v(a.v.dtype() == kBFloat16 ? nullptr : a.v.data_ptr<F>()),
        k16(a.k.dtype() == kBFloat16 ? a.k.data_ptr<BFloat16>() : nullptr),
        v16(a.v.dtype() == kBFloat16 ? a.v.data_ptr<BFloat16>() : nullptr),
        qst(st4(a.q)),
        kst(st4(a.k)),
        vst(st4(a.v)),
        mask(a.mask),
        alibi(a.alibi),
        sinks(a.sinks),
        drop(make_dropout(a, S)),
        qscale(static_cast<F>(a.scale * kLog2e)),
        l2e(static_cast<F>(kLog2e)) {}
};

// ---------------------------------------------------------------- decode (attention_decode.cpp)
// The forward takes the decode path when a kv head has at most this many query rows (T * G).
constexpr std::int64_t kDecodeRows = 16;
template <typename F>
void decode_forward(const Geo<F>& g, const AttnInputs<F>& in, const Tensor& out, const Tensor& lse_t,
                    const Tensor& weights);
extern template void decode_forward<float>(const Geo<float>&, const AttnInputs<float>&, const Tensor&, const Tensor&,
                                           const Tensor&);
extern template void decode_forward<double>(const Geo<double>&, const AttnInputs<double>&, const Tensor&, const Tensor&,
                                            const Tensor&);

}  // namespace kiln::cpu::attention_kernels
