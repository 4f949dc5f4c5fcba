// Fused scaled dot-product attention on the CPU, flash-attention style (contract: AttentionArgs
// in ../backend.hpp).
//   forward : per (batch, head, block of kBq queries), stream over blocks of Bk keys with an
//             online softmax (running max and sum per row); the output accumulates in a
//             (kBq, Dv) tile; only the per-row logsumexp is kept for backward.
//             With at most 16 query rows per kv head (decoding with a KV cache) the few-query
//             path instead reads K and V in place per (batch, kv head), its long key ranges
//             split into chunks over the threads and merged.
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


template <typename F>
void zero4(const Tensor& t) {
  F* p = t.data_ptr<F>();
  for (std::int64_t a = 0; a < t.size(0); ++a)
    for (std::int64_t b = 0; b < t.size(1); ++b)
      for (std::int64_t c = 0; c < t.size(2); ++c)
        for (std::int64_t d = 0; d < t.size(3); ++d)
          p[a * t.stride(0) + b * t.stride(1) + c * t.stride(2) + d * t.stride(3)] = 0;
}

// ---------------------------------------------------------------- decode forward
// A few query rows per kv head (T * G <= kDecodeRows: KV-cache decoding, GQA groups): the rows
// of one kv head's G query heads are done together, reading K and V in place. Packing the whole
// cache as the tiled path does would cost more than attending with one query. Long key ranges
// split into chunks over the threads; their (max, sum, accumulator) states merge at the end.
constexpr std::int64_t kDecodeRows = 16;
// Rows up to which a score is a dot product per (row, key); above, K (keys as rows) times the
// packed q^T fills every vector lane.
constexpr std::int64_t kDotRows = 4;
// Multiply-adds a thread must get before the work is split: a fork/join costs microseconds when
// the cores are free and a scheduler slice (milliseconds) when another process holds one.
constexpr std::int64_t kDecodeGrain = std::int64_t{1} << 20;
// > 0: split every key range into this many chunks (set by tests through
// attention_decode_split_for_testing, so the merge runs on small shapes and one thread).
std::atomic<std::int64_t> decode_split{0};
constexpr std::int64_t kMaxChunks = 64;

// s[r * lds] = q_r . k for rows r < R of q (row stride ldq) and one key row; Dp (a multiple of
// the vector width) readable, zero-padded in q.
template <typename F>
inline void dot_rows(std::int64_t R, std::int64_t Dp, const F* q, std::int64_t ldq, const F* k, F* s,
                     std::int64_t lds) {
  for (std::int64_t r = 0; r < R; ++r) {
    const F* qr = q + r * ldq;
    Vec<F> a = vload(qr) * vload(k);
    for (std::int64_t d = kW<F>; d < Dp; d += kW<F>) a += vload(qr + d) * vload(k + d);
    s[r * lds] = hsum<F>(a);
  }
}

// out[:] = sum_j p[j] * V[j, :] over cols keys for one row (Dp a multiple of the vector
// width): keys in four independent FMA chains, as one row leaves too few accumulators to hide
// the FMA latency.
template <typename F>
void pv_row(std::int64_t cols, const F* p, const F* V, std::int64_t ldv, std::int64_t Dp, F* out) {
  using Vf = Vec<F>;
  constexpr std::int64_t W = kW<F>;
  std::int64_t d0 = 0;
  for (; d0 + 2 * W <= Dp; d0 += 2 * W) {
    Vf a[4][2] = {};
    std::int64_t j = 0;
    for (; j + 4 <= cols; j += 4)
      for (int u = 0; u < 4; ++u) {
        const Vf pj = vsplat(p[j + u]);
        const F* vr = V + (j + u) * ldv + d0;
        a[u][0] += pj * vload(vr);
        a[u][1] += pj * vload(vr + W);
      }
    for (; j < cols; ++j) {
      const Vf pj = vsplat(p[j]);
      a[0][0] += pj * vload(V + j * ldv + d0);
      a[0][1] += pj * vload(V + j * ldv + d0 + W);
    }
    vstore(out + d0, (a[0][0] + a[1][0]) + (a[2][0] + a[3][0]));
    vstore(out + d0 + W, (a[0][1] + a[1][1]) + (a[2][1] + a[3][1]));
  }
  if (d0 < Dp) {
    Vf a[4] = {};
    std::int64_t j = 0;
    for (; j + 4 <= cols; j += 4)
      for (int u = 0; u < 4; ++u) a[u] += vsplat(p[j + u]) * vload(V + (j + u) * ldv + d0);
    for (; j < cols; ++j) a[0] += vsplat(p[j]) * vload(V + j * ldv + d0);
    vstore(out + d0, (a[0] + a[1]) + (a[2] + a[3]));
  }
}

template <typename F>
void decode_forward(const Geo<F>& g, const AttentionArgs& a, const Tensor& out, const Tensor& lse_t,
                    const Tensor& weights) {
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const std::int64_t NK = g.N * g.Hkv, R = g.G * g.T, Rp = round_up_w<F>(R);
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
  // K / V rows are read in place when they are contiguous and vector-sized, else per tile packed.
  const bool k_direct = kst[3] == 1 && g.Dk == g.Dkp, v_direct = vst[3] == 1 && g.Dv == g.Dvp;
  const bool use_dot = R <= kDotRows;

  // Keys any row may see (rows are t = 0..T-1 of each head; lo and hi grow with t).
  const std::int64_t kbeg = g.lo(0) / Bk * Bk, kend = std::max(g.hi(g.T - 1), kbeg);
  const std::int64_t nblk = (kend - kbeg + Bk - 1) / Bk;
  const std::int64_t work = std::max<std::int64_t>(R * (kend - kbeg) * (g.Dk + g.Dv), 1);  // per kv head
  const std::int64_t nt = omp_in_parallel() ? 1 : get_num_threads();
  std::int64_t chunks = 1;
  if (NK < nt && nblk > 1)
    chunks = std::clamp<std::int64_t>(std::min((nt + NK - 1) / NK, work / kDecodeGrain), 1,
                                      std::min(nblk, kMaxChunks));
  if (const std::int64_t forced = decode_split.load(); forced > 0 && nblk > 0)
    chunks = std::min({forced, nblk, kMaxChunks});
  const std::int64_t items = NK * chunks;
  // Per item: running max (R), sum (R), accumulator (R, Dvp).
  const std::int64_t pstride = round_up_w<F>(R * (2 + g.Dvp));
  Scratch parts(Scratch::size_of({items * pstride}, sizeof(F)));
  F* part = parts.take<F>(items * pstride);

  const std::size_t scratch = Scratch::size_of(
      {R * g.Dkp, use_dot ? 0 : g.Dk * Rp, use_dot ? 0 : Bk * Rp, R * Bk, R * Bk, R * g.Dvp, R, Bk,
       k_direct ? 0 : Bk * g.Dkp, v_direct ? 0 : Bk * g.Dvp},
      sizeof(F));
  // Writes row r of kv head (n, hkv) from its running max, sum and accumulator acc_at(d).
  auto finish = [&](std::int64_t n, std::int64_t hkv, std::int64_t r, F mrow, F lrow, auto&& acc_at) {
    const std::int64_t gi = r / g.T, t = r % g.T, h = hkv * g.G + gi, nh = n * g.H + h;
    F inv, lse2;
    row_norm(mrow, lrow, sinks.p != nullptr, sinks(n, h, kNegInf<F>) * l2e, inv, lse2);
    F* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
    for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = acc_at(d) * inv;
    lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
    if (w) finish_weights(w + (nh * g.T + t) * g.S, g.S, kbeg, kend, lse2);
  };
  const std::int64_t item_work = std::max<std::int64_t>(work / chunks, 1);
  run_items(items, (kDecodeGrain + item_work - 1) / item_work, scratch, [&](std::int64_t it, Scratch& sc) {
    const std::int64_t x = it / chunks, c = it % chunks;
    const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
    const std::int64_t b0 = kbeg + c * nblk / chunks * Bk, b1 = std::min(kend, kbeg + (c + 1) * nblk / chunks * Bk);
    F* m = part + it * pstride;
    F* l = m + R;
    F* acc = l + R;  // (R, Dvp)
    F* qs = sc.take<F>(R * g.Dkp);  // row r = gi * T + t: head hkv * G + gi, query t
    F* qt = use_dot ? nullptr : sc.take<F>(g.Dk * Rp);
    F* st = use_dot ? nullptr : sc.take<F>(Bk * Rp);
    F* sb = sc.take<F>(R * Bk);
    F* pb = sc.take<F>(R * Bk);
    F* tmp = sc.take<F>(R * g.Dvp);
    F* alpha = sc.take<F>(R);
    F* mult = sc.take<F>(Bk);
    F* kpk = k_direct ? nullptr : sc.take<F>(Bk * g.Dkp);
    F* vpk = v_direct ? nullptr : sc.take<F>(Bk * g.Dvp);
    for (std::int64_t gi = 0; gi < g.G; ++gi) {
      const std::int64_t h = hkv * g.G + gi;
      pack_rows(qs + gi * g.T * g.Dkp, g.Dkp, q + n * qst[0] + h * qst[1], qst[2], qst[3], g.T, g.Dk, qscale);
    }
    if (qt) {
      for (std::int64_t d = 0; d < g.Dk; ++d) {
        for (std::int64_t r = 0; r < R; ++r) qt[d * Rp + r] = qs[r * g.Dkp + d];
        std::fill(qt + d * Rp + R, qt + (d + 1) * Rp, F(0));
      }
    }
    std::fill(m, m + R, kNegInf<F>);
    std::fill(l, l + R, F(0));
    std::fill(acc, acc + R * g.Dvp, F(0));
    const F* kx = k + n * kst[0] + hkv * kst[1];
    const F* vx = v + n * vst[0] + hkv * vst[1];
    for (std::int64_t j0 = b0; j0 < b1; j0 += Bk) {
      const std::int64_t cols = std::min(Bk, b1 - j0), cp = std::min(Bk, round_up_w<F>(cols));
      const F* kb = kx + j0 * kst[2];
      std::int64_t ldk = kst[2];
      if (!k_direct) {
        pack_rows(kpk, g.Dkp, kb, kst[2], kst[3], cols, g.Dk);
        kb = kpk;
        ldk = g.Dkp;
      }
      if (use_dot) {
        for (std::int64_t j = 0; j < cols; ++j) dot_rows(R, g.Dkp, qs, g.Dkp, kb + j * ldk, sb + j, Bk);
      } else {
        gemm<F, false>(cols, Rp, g.Dk, kb, ldk, 1, qt, Rp, st, Rp);
        for (std::int64_t r = 0; r < R; ++r)
          for (std::int64_t j = 0; j < cols; ++j) sb[r * Bk + j] = st[j * Rp + r];
      }
      for (std::int64_t r = 0; r < R; ++r) {
        const std::int64_t gi = r / g.T, t = r % g.T, h = hkv * g.G + gi, nh = n * g.H + h;
        const F slope = alibi(n, h, F(0)) * l2e;
        const char* mrow = mask.row(n, h, t);
        const RowMask<F> rm{mrow ? mrow + j0 * mask.ss * mask.isz : nullptr, mask.is_bool, mask.ss, slope,
                            g.S - g.T + t};
        const bool whole = !mask.p && slope == F(0) && g.lo(t) <= j0 && g.hi(t) >= j0 + cols;
        alpha[r] = online_row(sb + r * Bk, pb + r * Bk, m[r], l[r], j0, cols, cp, whole, g.lo(t) - j0,
                              std::min(cols, g.hi(t) - j0), rm, w ? w + (nh * g.T + t) * g.S : nullptr, drop,
                              nh * g.T + t, drop.on ? mult : nullptr);
      }
      const F* vb = vx + j0 * vst[2];
      std::int64_t ldv = vst[2];
      if (!v_direct) {
        pack_rows(vpk, g.Dvp, vb, vst[2], vst[3], cols, g.Dv);
        vb = vpk;
        ldv = g.Dvp;
      }
      // P V of the tile; NaN/Inf in it may come from masked keys (0 * Inf): then the exact
      // product, which skips masked pairs.
      if (use_dot)
        for (std::int64_t r = 0; r < R; ++r) pv_row(cols, pb + r * Bk, vb, ldv, g.Dvp, tmp + r * g.Dvp);
      else
        gemm<F, false>(R, g.Dvp, cols, pb, Bk, 1, vb, ldv, tmp, g.Dvp);
      if (!all_finite(tmp, R * g.Dvp)) {
        std::fill(tmp, tmp + R * g.Dvp, F(0));
        gemm_skip<F>(false, R, g.Dvp, cols, pb, Bk, vb, ldv, tmp, g.Dvp, nullptr, sb, Bk);
      }
      for (std::int64_t r = 0; r < R; ++r) {
        F* ar = acc + r * g.Dvp;
        const F* tr = tmp + r * g.Dvp;
        const F al = alpha[r];
        for (std::int64_t d = 0; d < g.Dvp; ++d) ar[d] = ar[d] * al + tr[d];
      }
    }
    if (chunks == 1)
      for (std::int64_t r = 0; r < R; ++r)
        finish(n, hkv, r, m[r], l[r], [&](std::int64_t d) { return acc[r * g.Dvp + d]; });
  });

  if (chunks == 1) return;
  // Merge the chunks of every row (each scaled to the common max) and write it out.
  const std::int64_t row_work = chunks * g.Dv + (w ? g.S : 0) + 1;
  parallel_range(NK * R, (kDecodeGrain + row_work - 1) / row_work, [&](std::int64_t b, std::int64_t e) {
    std::array<F, kMaxChunks> f;
    for (std::int64_t xr = b; xr < e; ++xr) {
      const std::int64_t x = xr / R, r = xr % R;
      const F* p0 = part + x * chunks * pstride;
      F mx = kNegInf<F>;
      bool nan = false;
      for (std::int64_t c = 0; c < chunks; ++c) {
        const F mc = p0[c * pstride + r];
        nan |= mc != mc;
        mx = std::max(mx, mc);
      }
      F mrow = mx, lrow = 0;
      for (std::int64_t c = 0; c < chunks; ++c) {
        // A chunk with nothing attended holds 0; with a NaN row the sum is NaN whatever the factors.
        const F mc = p0[c * pstride + r];
        f[static_cast<std::size_t>(c)] = nan ? F(1) : mc == kNegInf<F> ? F(0) : std::exp2(mc - mx);
        lrow += p0[c * pstride + R + r] * f[static_cast<std::size_t>(c)];
      }
      if (nan) mrow = lrow = std::numeric_limits<F>::quiet_NaN();
      finish(x / g.Hkv, x % g.Hkv, r, mrow, lrow, [&](std::int64_t d) {
        F sum = 0;
        for (std::int64_t c = 0; c < chunks; ++c)
          sum += p0[c * pstride + 2 * R + r * g.Dvp + d] * f[static_cast<std::size_t>(c)];
        return sum;
      });
    }
  });
}

// ---------------------------------------------------------------- forward
template <typename F>
void forward_impl(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& weights) {
  const Geo<F> g(a);
  constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
  const std::int64_t NH = g.N * g.H, NK = g.N * g.Hkv;
  if (NH * g.T == 0) return;
  if (g.T * g.G <= kDecodeRows) return decode_forward(g, a, out, lse_t, weights);
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
        const char* mrow = mask.row(n, h, t);
        const RowMask<F> rm{mrow ? mrow + j0 * mask.ss * mask.isz : nullptr, mask.is_bool, mask.ss, slope,
                            g.S - g.T + t};
        alpha[r] = online_row(sb + r * Bk, pb + r * Bk, m[r], l[r], j0, cols, cp, whole, g.lo(t) - j0,
                              std::min(cols, g.hi(t) - j0), rm, w ? w + (nh * g.T + t) * g.S : nullptr, drop,
                              nh * g.T + t, mult);
      }
      if (vfin[static_cast<std::size_t>(kvx * g.nkb + j0 / Bk)])
        gemm<F, true>(rows, g.Dvp, cols, pb, Bk, 1, vp + j0 * g.Dvp, g.Dvp, acc, g.Dvp, alpha);
      else
        gemm_skip<F>(false, rows, g.Dvp, cols, pb, Bk, vp + j0 * g.Dvp, g.Dvp, acc, g.Dvp, alpha, sb, Bk);
    }
    const F sink = sinks(n, h, kNegInf<F>) * l2e;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = t0 + r;
      F inv, lse2;
      row_norm(m[r], l[r], sinks.p != nullptr, sink, inv, lse2);
      F* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
      for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = acc[r * g.Dvp + d] * inv;
      lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
      if (w) finish_weights(w + (nh * g.T + t) * g.S, g.S, kbeg, kend, lse2);
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

// Declared by the decode tests only: chunks > 0 forces the key-range split, 0 restores the
// automatic choice; returns the previous setting.
std::int64_t attention_decode_split_for_testing(std::int64_t chunks) {
  return decode_split.exchange(std::max<std::int64_t>(chunks, 0));
}

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
