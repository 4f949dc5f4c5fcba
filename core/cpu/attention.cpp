// Fused scaled dot-product attention on the CPU, flash-attention style (contract: AttentionArgs
// in ../backend.hpp).
//   forward : per (batch, head, block of kBq queries), stream over blocks of Bk keys with an
//             online softmax (running max and sum per row); the output accumulates in a
//             (kBq, Dv) tile; only the per-row logsumexp is kept for backward.
//   backward: per (batch, kv head, range of key blocks), recompute the probabilities tile by
//             tile from the logsumexp; dK/dV of the key block accumulate in tiles (no races),
//             dQ of the task's query heads in a per-task buffer.
// Logits are kept in log2 units (q pre-scaled by scale * log2(e)), so each probability is one
// exp2. Tile products go through one register-blocked microkernel written with GCC vector
// extensions (AVX-512 when compiled for it). A masked logit is -inf; products whose operand
// tile holds NaN/Inf take an exact path that skips masked pairs instead of multiplying by 0.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fmt/format.h>
#include <limits>
#include <memory>
#include <vector>

#include "attention_kernels.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {
using namespace attention_kernels;

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

// ---------------------------------------------------------------- geometry and scratch
template <typename F>
constexpr std::int64_t round_up_w(std::int64_t x) {
  return (x + kW<F> - 1) / kW<F> * kW<F>;
}

template <typename F>
struct Geo {
  static constexpr std::int64_t kBq = 32;                                   // queries per block
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
std::int64_t grain_for(std::int64_t work_per_item) {
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

// dst[j * ld + d] = src[j * sj + d * sd] * scale for j < rows, d < D; columns [D, ld) zeroed.
template <typename F>
void pack_rows(F* dst, std::int64_t ld, const F* src, std::int64_t sj, std::int64_t sd, std::int64_t rows,
               std::int64_t D, F scale = F(1)) {
  for (std::int64_t j = 0; j < rows; ++j) {
    F* o = dst + j * ld;
    const F* s = src + j * sj;
    if (sd == 1)
      for (std::int64_t d = 0; d < D; ++d) o[d] = s[d] * scale;
    else
      for (std::int64_t d = 0; d < D; ++d) o[d] = s[d * sd] * scale;
    for (std::int64_t d = D; d < ld; ++d) o[d] = 0;
  }
}

using St4 = std::array<std::int64_t, 4>;
inline St4 st4(const Tensor& t) {
  return t.defined() ? St4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)} : St4{};
}

template <typename F>
void zero4(const Tensor& t) {
  F* p = t.data_ptr<F>();
  for (std::int64_t a = 0; a < t.size(0); ++a)
    for (std::int64_t b = 0; b < t.size(1); ++b)
      for (std::int64_t c = 0; c < t.size(2); ++c)
        for (std::int64_t d = 0; d < t.size(3); ++d)
          p[a * t.stride(0) + b * t.stride(1) + c * t.stride(2) + d * t.stride(3)] = 0;
}

// ---------------------------------------------------------------- forward
template <typename F>
void forward_impl(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& weights) {
  const Geo<F> g(a);
  constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
  const std::int64_t NH = g.N * g.H, NK = g.N * g.Hkv;
  if (NH * g.T == 0) return;
  const F* q = a.q.data_ptr<F>();
  const F* k = a.k.data_ptr<F>();
  const F* v = a.v.data_ptr<F>();
  F* o = out.data_ptr<F>();
  F* lse = lse_t.data_ptr<F>();
  F* w = weights.defined() ? weights.data_ptr<F>() : nullptr;
  const MaskView mask(a.mask);
  const HeadValues<F> alibi(a.alibi), sinks(a.sinks);
  const Dropout drop = make_dropout(a, g.S);
  const F qscale = static_cast<F>(a.scale * kLog2e);
  const F l2e = static_cast<F>(kLog2e);
  const St4 qst = st4(a.q), kst = st4(a.k), vst = st4(a.v), ost = st4(out);

  // K^T and V (Sp, Dvp) per kv head, packed once; which V blocks are all finite.
  // K^T blocks are contiguous (Dk, Bk) tiles: rows Sp apart would all fall into one L1 set.
  const std::int64_t ktsz = g.nkb * g.Dk * Bk;
  Scratch packed(Scratch::size_of({NK * ktsz, NK * g.Sp * g.Dvp}, sizeof(F)));
  F* kt_all = packed.take<F>(NK * ktsz);
  F* vp_all = packed.take<F>(NK * g.Sp * g.Dvp);
  std::vector<char> vfin(static_cast<std::size_t>(NK * g.nkb), 1);
  // Packing is memory-bound: split it over threads only when it is large.
  const std::int64_t pack_grain =
      std::max<std::int64_t>(1, (std::int64_t{1} << 20) / std::max<std::int64_t>(g.S * (g.Dk + g.Dv), 1));
  parallel_range(NK, pack_grain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t x = b; x < e; ++x) {
      const std::int64_t n = x / g.Hkv, h = x % g.Hkv;
      const F* kx = k + n * kst[0] + h * kst[1];
      const F* vx = v + n * vst[0] + h * vst[1];
      for (std::int64_t kb = 0; kb < g.nkb; ++kb) {
        const std::int64_t j0 = kb * Bk;
        pack_transposed(kt_all + x * ktsz + kb * g.Dk * Bk, Bk, kx + j0 * kst[2], kst[2], kst[3],
                        std::min(Bk, g.S - j0), std::min(Bk, g.Sp - j0), g.Dk);
      }
      F* vo = vp_all + x * g.Sp * g.Dvp;
      pack_rows(vo, g.Dvp, vx, vst[2], vst[3], g.S, g.Dv);
      std::fill(vo + g.S * g.Dvp, vo + g.Sp * g.Dvp, F(0));
      for (std::int64_t kb = 0; kb < g.nkb; ++kb) {
        const std::int64_t j0 = kb * Bk, cols = std::min(Bk, g.S - j0);
        vfin[static_cast<std::size_t>(x * g.nkb + kb)] = all_finite(vo + j0 * g.Dvp, cols * g.Dvp);
      }
    }
  });

  const std::size_t scratch = Scratch::size_of({Bq * g.Dkp, Bq * Bk, Bq * Bk, Bq * g.Dvp, Bq, Bq, Bq, Bk}, sizeof(F));
  // Heads in order, each head's query blocks from the last (most keys under causal) down.
  run_items(NH * g.nqb, grain_for(Bq * g.span() * (g.Dk + g.Dv)), scratch, [&](std::int64_t it, Scratch& sc) {
    const std::int64_t nh = it / g.nqb, qb = g.nqb - 1 - it % g.nqb;
    const std::int64_t n = nh / g.H, h = nh % g.H, kvx = n * g.Hkv + h / g.G;
    const std::int64_t t0 = qb * Bq, rows = std::min(Bq, g.T - t0);
    F* qs = sc.take<F>(Bq * g.Dkp);
    F* sb = sc.take<F>(Bq * Bk);
    F* pb = sc.take<F>(Bq * Bk);
    F* acc = sc.take<F>(Bq * g.Dvp);
    F* m = sc.take<F>(Bq);
    F* l = sc.take<F>(Bq);
    F* alpha = sc.take<F>(Bq);
    F* mult = drop.on ? sc.take<F>(Bk) : nullptr;
    pack_rows(qs, g.Dkp, q + n * qst[0] + h * qst[1] + t0 * qst[2], qst[2], qst[3], rows, g.Dk, qscale);
    std::fill(acc, acc + rows * g.Dvp, F(0));
    std::fill(m, m + rows, kNegInf<F>);
    std::fill(l, l + rows, F(0));
    // Keys [kbeg, kend) are all any row of the block may see (causal, window): only their
    // tiles are visited, so local attention costs O(T * window).
    const std::int64_t kbeg = g.lo(t0) / Bk * Bk, kend = std::max(g.hi(t0 + rows - 1), kbeg);
    const F slope = alibi(n, h, F(0)) * l2e;
    const F* kt = kt_all + kvx * ktsz;
    const F* vp = vp_all + kvx * g.Sp * g.Dvp;
    for (std::int64_t j0 = kbeg; j0 < kend; j0 += Bk) {
      const std::int64_t cols = std::min(Bk, kend - j0), cp = std::min(Bk, round_up_w<F>(cols));
      gemm<F, false>(rows, cp, g.Dk, qs, g.Dkp, 1, kt + (j0 / Bk) * g.Dk * Bk, Bk, sb, Bk);
      // A tile every row sees whole, with no mask or bias, needs only its vector padding masked.
      const bool whole = !mask.p && slope == F(0) && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t t = t0 + r;
        F* s = sb + r * Bk;
        if (whole) {
          std::fill(s + cols, s + cp, kNegInf<F>);
        } else {
          const char* mrow = mask.row(n, h, t);
          const RowMask<F> rm{mrow ? mrow + j0 * mask.ss * mask.isz : nullptr, mask.is_bool, mask.ss, slope,
                              g.S - g.T + t};
          mask_row(s, j0, g.lo(t) - j0, std::min(cols, g.hi(t) - j0), cp, rm);
        }
        if (w) std::copy(s, s + cols, w + (nh * g.T + t) * g.S + j0);
        alpha[r] = 1;
        if (m[r] != m[r]) {  // poisoned by NaN logits: stays NaN
          std::fill(pb + r * Bk, pb + r * Bk + cp, F(0));
          continue;
        }
        const F mnew = std::max(m[r], max_row(s, cp));
        if (mnew == kNegInf<F>) {  // nothing to attend to yet
          std::fill(pb + r * Bk, pb + r * Bk + cp, F(0));
          if (has_nan(s, cols)) m[r] = l[r] = std::numeric_limits<F>::quiet_NaN();
          continue;
        }
        alpha[r] = mnew == m[r] ? F(1) : m[r] == kNegInf<F> ? F(0) : std::exp2(m[r] - mnew);
        if (mult) dropout_mult(drop, nh * g.T + t, j0, cp, mult);
        l[r] = l[r] * alpha[r] + exp_row(s, mnew, pb + r * Bk, cp, mult);
        m[r] = mnew;
      }
      if (vfin[static_cast<std::size_t>(kvx * g.nkb + j0 / Bk)])
        gemm<F, true>(rows, g.Dvp, cols, pb, Bk, 1, vp + j0 * g.Dvp, g.Dvp, acc, g.Dvp, alpha);
      else
        gemm_skip<F>(false, rows, g.Dvp, cols, pb, Bk, vp + j0 * g.Dvp, g.Dvp, acc, g.Dvp, alpha, sb, Bk);
    }
    const F sink = sinks(n, h, kNegInf<F>) * l2e;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = t0 + r;
      // lse (log2 units) covers the keys and the sink; a row with no key left stays empty (-inf).
      F inv, lse2;
      if (m[r] == kNegInf<F>) {
        inv = 0;
        lse2 = kNegInf<F>;
      } else if (sinks.p && m[r] == m[r]) {
        const F mx = std::max(m[r], sink), keys = std::exp2(m[r] - mx), den = l[r] * keys + std::exp2(sink - mx);
        inv = keys / den;
        lse2 = mx + std::log2(den);
      } else {
        inv = F(1) / l[r];  // NaN stays NaN
        lse2 = m[r] + std::log2(l[r]);
      }
      F* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
      for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = acc[r * g.Dvp + d] * inv;
      lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
      if (w) {
        F* wr = w + (nh * g.T + t) * g.S;
        // Keys outside [kbeg, kend) were never computed: weight 0.
        if (lse2 == kNegInf<F>) {
          std::fill(wr, wr + g.S, F(0));
        } else {
          std::fill(wr, wr + kbeg, F(0));
          std::int64_t j = kbeg;
          for (; j + kW<F> <= kend; j += kW<F>) vstore(wr + j, exp2v(vload(wr + j) - vsplat(lse2)));
          for (; j < kend; ++j) wr[j] = wr[j] == kNegInf<F> ? F(0) : std::exp2(wr[j] - lse2);
          std::fill(wr + kend, wr + g.S, F(0));
        }
      }
    }
  });
}

// ---------------------------------------------------------------- backward
template <typename F>
void backward_impl(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& gout,
                   const Tensor& weights, const Tensor& gweights, const AttentionGrads& gr) {
  const Geo<F> g(a);
  constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
  const std::int64_t NH = g.N * g.H, NK = g.N * g.Hkv, G = g.G;
  const F* q = a.q.data_ptr<F>();
  const F* k = a.k.data_ptr<F>();
  const F* v = a.v.data_ptr<F>();
  const F* o = out.data_ptr<F>();
  const F* go = gout.data_ptr<F>();
  const F* lse = lse_t.data_ptr<F>();
  const F* w = weights.defined() ? weights.data_ptr<F>() : nullptr;
  const F* gw = gweights.defined() ? gweights.data_ptr<F>() : nullptr;
  F* gq = gr.gq.data_ptr<F>();
  F* gk = gr.gk.data_ptr<F>();
  F* gv = gr.gv.data_ptr<F>();
  F* gm = gr.gmask.defined() ? gr.gmask.data_ptr<F>() : nullptr;
  F* gsink = gr.gsinks.defined() ? gr.gsinks.data_ptr<F>() : nullptr;
  F* galibi = gr.galibi.defined() ? gr.galibi.data_ptr<F>() : nullptr;
  const MaskView mask(a.mask);
  const HeadValues<F> alibi(a.alibi), sinks(a.sinks);
  const Dropout drop = make_dropout(a, g.S);
  const F qscale = static_cast<F>(a.scale * kLog2e);
  const F l2e = static_cast<F>(kLog2e);
  const St4 qst = st4(a.q), kst = st4(a.k), vst = st4(a.v), ost = st4(out), gost = st4(gout);
  const St4 gqst = st4(gr.gq), gkst = st4(gr.gk), gvst = st4(gr.gv);
  auto row4 = [](const St4& st, const F* base, std::int64_t n, std::int64_t h, std::int64_t i) {
    return base + n * st[0] + h * st[1] + i * st[2];
  };
  if (gsink) std::fill(gsink, gsink + NH, F(0));
  if (galibi) std::fill(galibi, galibi + NH, F(0));
  if (NH * g.T == 0 || g.S == 0) {  // nothing attended: every gradient is 0
    for (const Tensor* t : {&gr.gq, &gr.gk, &gr.gv}) zero4<F>(*t);
    return;
  }

  // Tasks: (batch, kv head, chunk of key blocks). Chunks only when there are too few kv heads
  // to feed the threads; their dQ parts are summed afterwards.
  const std::int64_t nt = omp_in_parallel() ? 1 : get_num_threads();
  const std::int64_t chunks = NK >= 2 * nt ? 1 : std::min<std::int64_t>(g.nkb, (2 * nt + NK - 1) / NK);
  Scratch pscr(Scratch::size_of({chunks > 1 ? chunks * NH * g.T * g.Dk : 0, galibi ? chunks * NH : 0}, sizeof(F)));
  F* part = chunks > 1 ? pscr.take<F>(chunks * NH * g.T * g.Dk) : nullptr;
  // ALiBi slope gradients per (chunk, n, h): each task owns its slots; summed at the end.
  F* apart = galibi ? pscr.take<F>(chunks * NH) : nullptr;
  const std::int64_t GT = G * g.T, nqb = g.nqb;
  const std::size_t scratch =
      Scratch::size_of({GT * g.Dkp, GT * g.Dvp, GT * g.Dkp, GT, GT, g.Dk * Bk, Bk * g.Dkp, g.Dv * Bk, Bk * g.Dkp,
                        Bk * g.Dvp, Bq * Bk, Bq * Bk, Bq * Bk, Bq * Bk, Bq * Bk},
                       sizeof(F)) +
      2 * static_cast<std::size_t>(G * nqb) + 128;
  run_items(NK * chunks, grain_for(g.T * g.span() * G * (g.Dk + g.Dv) / chunks), scratch, [&](std::int64_t it,
                                                                                               Scratch& sc) {
    const std::int64_t x = it / chunks, c = it % chunks;
    const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
    const std::int64_t kb0 = c * g.nkb / chunks, kb1 = (c + 1) * g.nkb / chunks;
    F* qs = sc.take<F>(GT * g.Dkp);  // q * scale * log2(e), per head of the group
    F* dob = sc.take<F>(GT * g.Dvp);
    F* dq = sc.take<F>(GT * g.Dkp);
    F* lse2 = sc.take<F>(GT);
    F* dl = sc.take<F>(GT);
    F* kt = sc.take<F>(g.Dk * Bk);
    F* kp = sc.take<F>(Bk * g.Dkp);
    F* vt = sc.take<F>(g.Dv * Bk);
    F* dk = sc.take<F>(Bk * g.Dkp);
    F* dv = sc.take<F>(Bk * g.Dvp);
    F* sb = sc.take<F>(Bq * Bk);
    F* pb = sc.take<F>(Bq * Bk);
    F* pd = sc.take<F>(Bq * Bk);  // P after dropout
    F* db = sc.take<F>(Bq * Bk);  // dP, then dS
    F* mult = sc.take<F>(Bq * Bk);
    char* qfin = sc.take<char>(G * nqb);
    char* dofin = sc.take<char>(G * nqb);
    for (std::int64_t gi = 0; gi < G; ++gi) {
      const std::int64_t h = hkv * G + gi, nh = n * g.H + h;
      if (apart) apart[c * NH + nh] = 0;
      pack_rows(qs + gi * g.T * g.Dkp, g.Dkp, row4(qst, q, n, h, 0), qst[2], qst[3], g.T, g.Dk, qscale);
      pack_rows(dob + gi * g.T * g.Dvp, g.Dvp, row4(gost, go, n, h, 0), gost[2], gost[3], g.T, g.Dv);
      for (std::int64_t t = 0; t < g.T; ++t) {
        const F l = lse[nh * g.T + t];
        // A row with nothing to attend to: 2^(s - inf) = 0 for every key.
        lse2[gi * g.T + t] = l == kNegInf<F> ? -kNegInf<F> : l * static_cast<F>(kLog2e);
        // delta = rowsum(dO * O) (+ rowsum(P * dW) with returned weights): the softmax backward's
        // per-row term, since rowsum(P * dP) equals it.
        const F* orow = row4(ost, o, n, h, t);
        const F* grow = row4(gost, go, n, h, t);
        F d = 0;
        for (std::int64_t c = 0; c < g.Dv; ++c) d += orow[c * ost[3]] * grow[c * gost[3]];
        if (w)
          for (std::int64_t j = 0; j < g.S; ++j) d += w[(nh * g.T + t) * g.S + j] * gw[(nh * g.T + t) * g.S + j];
        dl[gi * g.T + t] = d;
      }
      // d sink = -sum over rows of P_sink * delta (rows with no key: 0); the first chunk writes it.
      if (gsink && c == 0) {
        const F sink2 = sinks(n, h, kNegInf<F>) * l2e;
        F acc = 0;
        for (std::int64_t t = 0; t < g.T; ++t)
          if (lse[nh * g.T + t] != kNegInf<F>) acc -= std::exp2(sink2 - lse2[gi * g.T + t]) * dl[gi * g.T + t];
        gsink[nh] = acc;
      }
      for (std::int64_t qb = 0; qb < nqb; ++qb) {
        const std::int64_t t0 = qb * Bq, rows = std::min(Bq, g.T - t0);
        qfin[gi * nqb + qb] = all_finite(qs + (gi * g.T + t0) * g.Dkp, rows * g.Dkp);
        dofin[gi * nqb + qb] = all_finite(dob + (gi * g.T + t0) * g.Dvp, rows * g.Dvp);
      }
    }
    std::fill(dq, dq + GT * g.Dkp, F(0));
    for (std::int64_t kb = kb0; kb < kb1; ++kb) {
      const std::int64_t j0 = kb * Bk, kcols = std::min(Bk, g.S - j0), kcp = std::min(Bk, g.Sp - j0);
      const F* kx = row4(kst, k, n, hkv, j0);
      pack_transposed(kt, Bk, kx, kst[2], kst[3], kcols, kcp, g.Dk);
      pack_rows(kp, g.Dkp, kx, kst[2], kst[3], kcols, g.Dk);
      std::fill(kp + kcols * g.Dkp, kp + kcp * g.Dkp, F(0));
      pack_transposed(vt, Bk, row4(vst, v, n, hkv, j0), vst[2], vst[3], kcols, kcp, g.Dv);
      const bool kfin = all_finite(kp, kcols * g.Dkp);
      std::fill(dk, dk + kcp * g.Dkp, F(0));
      std::fill(dv, dv + kcp * g.Dvp, F(0));
      for (std::int64_t gi = 0; gi < G; ++gi) {
        const std::int64_t h = hkv * G + gi, nh = n * g.H + h;
        const F slope = alibi(n, h, F(0)) * l2e;
        for (std::int64_t qb = 0; qb < nqb; ++qb) {
          const std::int64_t t0 = qb * Bq, rows = std::min(Bq, g.T - t0);
          // Query blocks whose keys (causal, window) miss this key block are skipped.
          if (g.hi(t0 + rows - 1) <= j0 || g.lo(t0) >= j0 + kcols) continue;
          // The block's keys past the last row's limit are masked for all rows: cut them.
          const std::int64_t cols = std::min(kcols, g.hi(t0 + rows - 1) - j0);
          const std::int64_t cp = std::min(kcp, round_up_w<F>(cols));
          const F* qrows = qs + (gi * g.T + t0) * g.Dkp;
          const F* dorows = dob + (gi * g.T + t0) * g.Dvp;
          gemm<F, false>(rows, cp, g.Dk, qrows, g.Dkp, 1, kt, Bk, sb, Bk);
          gemm<F, false>(rows, cp, g.Dv, dorows, g.Dvp, 1, vt, Bk, db, Bk);
          const bool whole = !mask.p && slope == F(0) && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
          for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t t = t0 + r;
            F* s = sb + r * Bk;
            F* p = pb + r * Bk;
            F* dp = db + r * Bk;
            F* mu = mult + r * Bk;
            if (whole) {
              std::fill(s + cols, s + cp, kNegInf<F>);
            } else {
              const char* mrow = mask.row(n, h, t);
              const RowMask<F> rm{mrow ? mrow + j0 * mask.ss * mask.isz : nullptr, mask.is_bool, mask.ss, slope,
                                  g.S - g.T + t};
              mask_row(s, j0, g.lo(t) - j0, std::min(cols, g.hi(t) - j0), cp, rm);
            }
            const Vec<F> l2 = vsplat(lse2[gi * g.T + t]), dlt = vsplat(dl[gi * g.T + t]);
            if (drop.on) dropout_mult(drop, nh * g.T + t, j0, cp, mu);
            for (std::int64_t j = 0; j < cp; j += kW<F>) {
              Vec<F> pv = exp2v(vload(s + j) - l2);
              vstore(p + j, pv);
              if (drop.on) {
                Vec<F> m = vload(mu + j);
                vstore(pd + r * Bk + j, pv * m);
                vstore(dp + j, vload(dp + j) * m);
              }
            }
            if (gw) {
              const F* gwr = gw + (nh * g.T + t) * g.S + j0;
              for (std::int64_t j = 0; j < cols; ++j) dp[j] += gwr[j];
            }
            // dS = P * (dP - delta), exactly 0 where masked (dP may be NaN there).
            for (std::int64_t j = 0; j < cp; j += kW<F>) {
              Vec<F> sv = vload(s + j);
              Vec<F> ds = vload(p + j) * (vload(dp + j) - dlt);
              vstore(dp + j, sv == kNegInf<F> ? Vec<F>{} : ds);
            }
            if (gm) std::copy(dp, dp + cols, gm + (nh * g.T + t) * g.S + j0);
            if (apart) {  // d slope = -sum dS * |pos - key|
              const std::int64_t d0 = g.S - g.T + t - j0;
              F acc = 0;
              for (std::int64_t j = 0; j < cols; ++j) acc += dp[j] * static_cast<F>(std::abs(d0 - j));
              apart[c * NH + nh] -= acc;
            }
          }
          const F* pdrop = drop.on ? pd : pb;
          if (dofin[gi * nqb + qb])
            gemm<F, true>(cols, g.Dvp, rows, pdrop, 1, Bk, dorows, g.Dvp, dv, g.Dvp);
          else
            gemm_skip<F>(true, cols, g.Dvp, rows, pdrop, Bk, dorows, g.Dvp, dv, g.Dvp, nullptr, sb, Bk);
          if (qfin[gi * nqb + qb])
            gemm<F, true>(cols, g.Dkp, rows, db, 1, Bk, qrows, g.Dkp, dk, g.Dkp);
          else
            gemm_skip<F>(true, cols, g.Dkp, rows, db, Bk, qrows, g.Dkp, dk, g.Dkp, nullptr, sb, Bk);
          F* dqrows = dq + (gi * g.T + t0) * g.Dkp;
          if (kfin)
            gemm<F, true>(rows, g.Dkp, cols, db, Bk, 1, kp, g.Dkp, dqrows, g.Dkp);
          else
            gemm_skip<F>(false, rows, g.Dkp, cols, db, Bk, kp, g.Dkp, dqrows, g.Dkp, nullptr, sb, Bk);
        }
      }
      // dK = scale * dS^T q = ln 2 * dS^T qs.
      const F ln2 = static_cast<F>(kLn2);
      for (std::int64_t j = 0; j < kcols; ++j) {
        F* gkr = gk + n * gkst[0] + hkv * gkst[1] + (j0 + j) * gkst[2];
        F* gvr = gv + n * gvst[0] + hkv * gvst[1] + (j0 + j) * gvst[2];
        for (std::int64_t d = 0; d < g.Dk; ++d) gkr[d * gkst[3]] = dk[j * g.Dkp + d] * ln2;
        for (std::int64_t d = 0; d < g.Dv; ++d) gvr[d * gvst[3]] = dv[j * g.Dvp + d];
      }
    }
    const F sc_q = static_cast<F>(a.scale);
    for (std::int64_t gi = 0; gi < G; ++gi) {
      const std::int64_t h = hkv * G + gi, nh = n * g.H + h;
      for (std::int64_t t = 0; t < g.T; ++t) {
        const F* src = dq + (gi * g.T + t) * g.Dkp;
        if (part) {
          F* dst = part + ((c * NH + nh) * g.T + t) * g.Dk;
          for (std::int64_t d = 0; d < g.Dk; ++d) dst[d] = src[d] * sc_q;
        } else {
          F* dst = gq + n * gqst[0] + h * gqst[1] + t * gqst[2];
          for (std::int64_t d = 0; d < g.Dk; ++d) dst[d * gqst[3]] = src[d] * sc_q;
        }
      }
    }
  });
  if (apart)
    for (std::int64_t nh = 0; nh < NH; ++nh) {
      F s = 0;
      for (std::int64_t c = 0; c < chunks; ++c) s += apart[c * NH + nh];
      galibi[nh] = s;
    }
  if (part) {
    parallel_range(NH * g.T, grain_for(chunks * g.Dk), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t x = b; x < e; ++x) {
        const std::int64_t n = x / (g.H * g.T), h = (x / g.T) % g.H, t = x % g.T;
        F* dst = gq + n * gqst[0] + h * gqst[1] + t * gqst[2];
        for (std::int64_t d = 0; d < g.Dk; ++d) {
          F s = 0;
          for (std::int64_t c = 0; c < chunks; ++c) s += part[(c * NH * g.T + x) * g.Dk + d];
          dst[d * gqst[3]] = s;
        }
      }
    });
  }
}

template <typename F>
void dropout_mask_impl(const AttentionArgs& a, const Tensor& out) {
  const Geo<F> g(a);
  const Dropout drop = make_dropout(a, g.S);
  F* o = out.data_ptr<F>();
  const std::int64_t rows = g.N * g.H * g.T;
  parallel_range(rows, grain_for(g.S * 4), [&](std::int64_t b, std::int64_t e) {
    alignas(64) F buf[64];
    for (std::int64_t r = b; r < e; ++r)
      for (std::int64_t j0 = 0; j0 < g.S; j0 += 64) {
        const std::int64_t m = std::min<std::int64_t>(64, g.S - j0);
        if (drop.on) dropout_mult(drop, r, j0, m, buf);
        else std::fill(buf, buf + m, F(1));
        std::copy(buf, buf + m, o + r * g.S + j0);
      }
  });
}

template <typename Fn>
void dispatch(DType dt, const char* op, Fn&& fn) {
  if (dt == kFloat32) fn(float{});
  else if (dt == kFloat64) fn(double{});
  else throw_error(op, fmt::format("expected float32 or float64 tensors, got {}", dtype_name(dt)));
}

}  // namespace

void CpuBackend::attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                   const Tensor& weights) {
  dispatch(a.q.dtype(), "attention_forward", [&](auto z) { forward_impl<decltype(z)>(a, out, lse, weights); });
}

void CpuBackend::attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                                    const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) {
  dispatch(a.q.dtype(), "attention_backward",
           [&](auto z) { backward_impl<decltype(z)>(a, out, lse, gout, weights, gweights, grads); });
}

void CpuBackend::attention_dropout_mask(const AttentionArgs& a, const Tensor& out) {
  dispatch(a.q.dtype(), "attention_dropout_mask", [&](auto z) { dropout_mask_impl<decltype(z)>(a, out); });
}

}  // namespace kiln::cpu
