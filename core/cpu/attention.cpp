// Fused scaled dot-product attention on the CPU, flash-attention style (contract: AttentionArgs
// in ../backend.hpp).
//   forward : per (batch, head, block of kBq queries), stream over blocks of Bk keys with an
//             online softmax (running max and sum per row); the output accumulates in a
//             (kBq, Dv) tile; only the per-row logsumexp is kept for backward.
//             With at most 16 query rows per kv head (decoding with a KV cache) the few-query
//             path (attention_decode.cpp) instead reads K and V in place per (batch, kv head),
//             its long key ranges split into chunks over the threads and merged.
//   backward: per (batch, kv head, range of key blocks), recompute the probabilities tile by
//             tile from the logsumexp; dK/dV of the key block accumulate in tiles (no races),
//             dQ of the task's query heads in a per-task buffer.
// Logits are kept in log2 units (q pre-scaled by scale * log2(e)), so each probability is one
// exp2. Tile products go through one register-blocked microkernel written with GCC vector
// extensions (AVX-512 when compiled for it). A masked logit is -inf; products whose operand
// tile holds NaN/Inf take an exact path that skips masked pairs instead of multiplying by 0.
#include <omp.h>

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "../reduced_float.hpp"
#include "attention_bf16.hpp"
#include "attention_grad_row.hpp"
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

// ---------------------------------------------------------------- forward
template <typename F>
void forward_impl(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& weights) {
  const Geo<F> g(a);
  constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
  const std::int64_t NH = g.N * g.H, NK = g.N * g.Hkv;
  if (NH * g.T == 0) return;
  const AttnInputs<F> in(a, g.S);
  if (g.T * g.G <= kDecodeRows) return decode_forward(g, in, out, lse_t, weights);
  const MaskView& mask = in.mask;
  const Dropout& drop = in.drop;
  const St4 &qst = in.qst, &kst = in.kst, &vst = in.vst, ost = st4(out);
  F* o = out.data_ptr<F>();
  F* lse = lse_t.data_ptr<F>();
  F* w = data_or_null<F>(weights);

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
      const F* kx = in.k + n * kst[0] + h * kst[1];
      const F* vx = in.v + n * vst[0] + h * vst[1];
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
    pack_rows(qs, g.Dkp, in.q + n * qst[0] + h * qst[1] + t0 * qst[2], qst[2], qst[3], rows, g.Dk, in.qscale);
    std::fill(acc, acc + rows * g.Dvp, F(0));
    std::fill(m, m + rows, kNegInf<F>);
    std::fill(l, l + rows, F(0));
    // Keys [kbeg, kend) are all any row of the block may see (causal, window): only their
    // tiles are visited, so local attention costs O(T * window).
    const std::int64_t kbeg = g.lo(t0) / Bk * Bk, kend = std::max(g.hi(t0 + rows - 1), kbeg);
    const F slope = in.alibi(n, h, F(0)) * in.l2e;
    const F* kt = kt_all + kvx * ktsz;
    const F* vp = vp_all + kvx * g.Sp * g.Dvp;
    for (std::int64_t j0 = kbeg; j0 < kend; j0 += Bk) {
      const std::int64_t cols = std::min(Bk, kend - j0), cp = std::min(Bk, round_up_w<F>(cols));
      gemm<F, false>(rows, cp, g.Dk, qs, g.Dkp, 1, kt + (j0 / Bk) * g.Dk * Bk, Bk, sb, Bk);
      // A tile every row sees whole, with no mask or bias, needs only its vector padding masked.
      const bool whole = !mask.p && slope == F(0) && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t t = t0 + r;
        const RowMask<F> rm = mask.row_mask(n, h, t, j0, slope, g.S - g.T + t);
        alpha[r] = online_row(sb + r * Bk, pb + r * Bk, m[r], l[r], j0, cols, cp, whole, g.lo(t) - j0,
                              std::min(cols, g.hi(t) - j0), rm, w ? w + (nh * g.T + t) * g.S : nullptr, drop,
                              nh * g.T + t, mult);
      }
      gemm_acc<F, false>(vfin[static_cast<std::size_t>(kvx * g.nkb + j0 / Bk)], rows, g.Dvp, cols, pb, Bk,
                         vp + j0 * g.Dvp, g.Dvp, acc, g.Dvp, sb, Bk, alpha);
    }
    const F sink = in.sinks(n, h, kNegInf<F>) * in.l2e;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = t0 + r;
      F inv, lse2;
      row_norm(m[r], l[r], in.sinks.p != nullptr, sink, inv, lse2);
      F* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
      for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = acc[r * g.Dvp + d] * inv;
      lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
      if (w) finish_weights(w + (nh * g.T + t) * g.S, g.S, kbeg, kend, lse2);
    }
  });
}

// ---------------------------------------------------------------- backward
// Tasks: (batch, kv head, chunk of key blocks). A task packs its G query heads once, then per
// key block recomputes P and dS tile by tile; dK/dV of the block accumulate in tiles (no races),
// dQ in the task's buffer. Chunks only when there are too few kv heads to feed the threads;
// their dQ parts (and ALiBi slope gradients) are summed afterwards.
template <typename F>
struct BackwardCall {
  const Geo<F>& g;
  const AttnInputs<F>& in;
  const F *o, *go, *lse, *w, *gw;  // out, d out (N, H, T, Dv), lse (N, H, T), weights and d weights (N, H, T, S)
  F *gq, *gk, *gv, *gm, *gsink, *galibi;
  St4 ost, gost, gqst, gkst, gvst;
  std::int64_t NH, chunks;
  F* part;   // chunks > 1: dQ per (chunk, n, h, t, Dk)
  F* apart;  // ALiBi: slope gradient per (chunk, n, h)
};

// One task's scratch: rows r = gi * T + t of its G query heads, and one key block's tiles.
template <typename F>
struct BackwardScratch {
  F *qs, *dob, *dq, *lse2, *dl;  // (G*T, Dkp) q * scale * log2(e), (G*T, Dvp) dO, (G*T, Dkp) dQ, (G*T) x2
  F *kt, *kp, *vt, *dk, *dv;     // (Dk, Bk) K^T, (Bk, Dkp) K, (Dv, Bk) V^T, (Bk, Dkp) dK, (Bk, Dvp) dV
  F *sb, *pb, *pd, *db, *mult;   // (Bq, Bk) each: scores, P, P after dropout, dP then dS, multipliers
  char *qfin, *dofin;            // (G, nqb): query / dO block all finite
  static std::size_t bytes(const Geo<F>& g) {
    constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
    const std::int64_t GT = g.G * g.T;
    return Scratch::size_of({GT * g.Dkp, GT * g.Dvp, GT * g.Dkp, GT, GT, g.Dk * Bk, Bk * g.Dkp, g.Dv * Bk, Bk * g.Dkp,
                             Bk * g.Dvp, Bq * Bk, Bq * Bk, Bq * Bk, Bq * Bk, Bq * Bk},
                            sizeof(F)) +
           2 * static_cast<std::size_t>(g.G * g.nqb) + 128;
  }
  BackwardScratch(const Geo<F>& g, Scratch& sc) {
    constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
    const std::int64_t GT = g.G * g.T;
    qs = sc.take<F>(GT * g.Dkp);
    dob = sc.take<F>(GT * g.Dvp);
    dq = sc.take<F>(GT * g.Dkp);
    lse2 = sc.take<F>(GT);
    dl = sc.take<F>(GT);
    kt = sc.take<F>(g.Dk * Bk);
    kp = sc.take<F>(Bk * g.Dkp);
    vt = sc.take<F>(g.Dv * Bk);
    dk = sc.take<F>(Bk * g.Dkp);
    dv = sc.take<F>(Bk * g.Dvp);
    sb = sc.take<F>(Bq * Bk);
    pb = sc.take<F>(Bq * Bk);
    pd = sc.take<F>(Bq * Bk);
    db = sc.take<F>(Bq * Bk);
    mult = sc.take<F>(Bq * Bk);
    qfin = sc.take<char>(g.G * g.nqb);
    dofin = sc.take<char>(g.G * g.nqb);
  }
};

// Packs the task's query heads (q scaled to log2 units, dO), each row's lse (log2 units) and
// delta = rowsum(dO * O) (+ rowsum(P * dW) with returned weights): the softmax backward's per-row
// term, since rowsum(P * dP) equals it. Chunk 0 also writes the sink gradients.
template <typename F>
void load_query_group(const BackwardCall<F>& bc, std::int64_t n, std::int64_t hkv, std::int64_t c,
                      BackwardScratch<F>& s) {
  const Geo<F>& g = bc.g;
  constexpr std::int64_t Bq = Geo<F>::kBq;
  const St4 &qst = bc.in.qst, &ost = bc.ost, &gost = bc.gost;
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    if (bc.apart) bc.apart[c * bc.NH + nh] = 0;
    pack_rows(s.qs + gi * g.T * g.Dkp, g.Dkp, bc.in.q + n * qst[0] + h * qst[1], qst[2], qst[3], g.T, g.Dk,
              bc.in.qscale);
    pack_rows(s.dob + gi * g.T * g.Dvp, g.Dvp, bc.go + n * gost[0] + h * gost[1], gost[2], gost[3], g.T, g.Dv);
    for (std::int64_t t = 0; t < g.T; ++t) {
      const F l = bc.lse[nh * g.T + t];
      // A row with nothing to attend to: 2^(s - inf) = 0 for every key.
      s.lse2[gi * g.T + t] = l == kNegInf<F> ? -kNegInf<F> : l * static_cast<F>(kLog2e);
      const F* orow = bc.o + n * ost[0] + h * ost[1] + t * ost[2];
      const F* grow = bc.go + n * gost[0] + h * gost[1] + t * gost[2];
      F d = 0;
      for (std::int64_t x = 0; x < g.Dv; ++x) d += orow[x * ost[3]] * grow[x * gost[3]];
      if (bc.w)
        for (std::int64_t j = 0; j < g.S; ++j) d += bc.w[(nh * g.T + t) * g.S + j] * bc.gw[(nh * g.T + t) * g.S + j];
      s.dl[gi * g.T + t] = d;
    }
    // d sink = -sum over rows of P_sink * delta (rows with no key: 0).
    if (bc.gsink && c == 0) {
      const F sink2 = bc.in.sinks(n, h, kNegInf<F>) * bc.in.l2e;
      F acc = 0;
      for (std::int64_t t = 0; t < g.T; ++t)
        if (bc.lse[nh * g.T + t] != kNegInf<F>) acc -= std::exp2(sink2 - s.lse2[gi * g.T + t]) * s.dl[gi * g.T + t];
      bc.gsink[nh] = acc;
    }
    for (std::int64_t qb = 0; qb < g.nqb; ++qb) {
      const std::int64_t t0 = qb * Bq, rows = std::min(Bq, g.T - t0);
      s.qfin[gi * g.nqb + qb] = all_finite(s.qs + (gi * g.T + t0) * g.Dkp, rows * g.Dkp);
      s.dofin[gi * g.nqb + qb] = all_finite(s.dob + (gi * g.T + t0) * g.Dvp, rows * g.Dvp);
    }
  }
}

// Packs key block [j0, j0 + kcols) of kv head (n, hkv) (K^T, K, V^T) and zeroes its dK / dV
// tiles; returns whether K is all finite.
template <typename F>
bool load_key_block(const BackwardCall<F>& bc, std::int64_t n, std::int64_t hkv, std::int64_t j0, std::int64_t kcols,
                    std::int64_t kcp, BackwardScratch<F>& s) {
  const Geo<F>& g = bc.g;
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const St4 &kst = bc.in.kst, &vst = bc.in.vst;
  const F* kx = bc.in.k + n * kst[0] + hkv * kst[1] + j0 * kst[2];
  pack_transposed(s.kt, Bk, kx, kst[2], kst[3], kcols, kcp, g.Dk);
  pack_rows(s.kp, g.Dkp, kx, kst[2], kst[3], kcols, g.Dk);
  std::fill(s.kp + kcols * g.Dkp, s.kp + kcp * g.Dkp, F(0));
  pack_transposed(s.vt, Bk, bc.in.v + n * vst[0] + hkv * vst[1] + j0 * vst[2], vst[2], vst[3], kcols, kcp, g.Dv);
  std::fill(s.dk, s.dk + kcp * g.Dkp, F(0));
  std::fill(s.dv, s.dv + kcp * g.Dvp, F(0));
  return all_finite(s.kp, kcols * g.Dkp);
}

// Row r of a (query block, key block) tile (grad_row: P, dS in place of dP, the slope gradient);
// copies dS to the mask gradient.
template <typename F>
__attribute__((always_inline)) inline void ds_row(const BackwardCall<F>& bc, const BackwardScratch<F>& s,
                                                  std::int64_t n, std::int64_t h, std::int64_t gi, std::int64_t t,
                                                  std::int64_t r, std::int64_t j0, std::int64_t cols, std::int64_t cp,
                                                  bool whole, F slope, std::int64_t c) {
  const Geo<F>& g = bc.g;
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const std::int64_t nh = n * g.H + h;
  const GradRow<F> gr{j0,
                      cols,
                      cp,
                      whole,
                      g.lo(t) - j0,
                      std::min(cols, g.hi(t) - j0),
                      bc.in.mask.row_mask(n, h, t, j0, slope, g.S - g.T + t),
                      s.lse2[gi * g.T + t],
                      s.dl[gi * g.T + t]};
  F* dp = s.db + r * Bk;
  grad_row(gr, s.sb + r * Bk, s.pb + r * Bk, s.pd + r * Bk, dp, s.mult + r * Bk, bc.in.drop, nh * g.T + t,
           bc.gw ? bc.gw + (nh * g.T + t) * g.S + j0 : nullptr, bc.apart ? bc.apart + c * bc.NH + nh : nullptr);
  if (bc.gm) std::copy(dp, dp + cols, bc.gm + (nh * g.T + t) * g.S + j0);
}

// Query block qb of head hkv * G + gi against key block [j0, j0 + kcols): scores and dP, dS per
// row, then dV += P^T dO, dK += dS^T q, dQ += dS K.
template <typename F>
void backward_tile(const BackwardCall<F>& bc, const BackwardScratch<F>& s, std::int64_t n, std::int64_t hkv,
                   std::int64_t gi, std::int64_t qb, std::int64_t j0, std::int64_t kcols, std::int64_t kcp, bool kfin,
                   std::int64_t c) {
  const Geo<F>& g = bc.g;
  constexpr std::int64_t Bq = Geo<F>::kBq, Bk = Geo<F>::kBk;
  const std::int64_t h = hkv * g.G + gi;
  const std::int64_t t0 = qb * Bq, rows = std::min(Bq, g.T - t0);
  // Query blocks whose keys (causal, window) miss this key block are skipped.
  if (g.hi(t0 + rows - 1) <= j0 || g.lo(t0) >= j0 + kcols) return;
  // The block's keys past the last row's limit are masked for all rows: cut them.
  const std::int64_t cols = std::min(kcols, g.hi(t0 + rows - 1) - j0);
  const std::int64_t cp = std::min(kcp, round_up_w<F>(cols));
  const F slope = bc.in.alibi(n, h, F(0)) * bc.in.l2e;
  const F* qrows = s.qs + (gi * g.T + t0) * g.Dkp;    // (rows, Dkp)
  const F* dorows = s.dob + (gi * g.T + t0) * g.Dvp;  // (rows, Dvp)
  gemm<F, false>(rows, cp, g.Dk, qrows, g.Dkp, 1, s.kt, Bk, s.sb, Bk);
  gemm<F, false>(rows, cp, g.Dv, dorows, g.Dvp, 1, s.vt, Bk, s.db, Bk);
  const bool whole = !bc.in.mask.p && slope == F(0) && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
  for (std::int64_t r = 0; r < rows; ++r) ds_row(bc, s, n, h, gi, t0 + r, r, j0, cols, cp, whole, slope, c);
  const F* pdrop = bc.in.drop.on ? s.pd : s.pb;
  gemm_acc<F, true>(s.dofin[gi * g.nqb + qb], cols, g.Dvp, rows, pdrop, Bk, dorows, g.Dvp, s.dv, g.Dvp, s.sb, Bk);
  gemm_acc<F, true>(s.qfin[gi * g.nqb + qb], cols, g.Dkp, rows, s.db, Bk, qrows, g.Dkp, s.dk, g.Dkp, s.sb, Bk);
  gemm_acc<F, false>(kfin, rows, g.Dkp, cols, s.db, Bk, s.kp, g.Dkp, s.dq + (gi * g.T + t0) * g.Dkp, g.Dkp, s.sb, Bk);
}

// dK = scale * dS^T q = ln 2 * dS^T qs, and dV, of key block [j0, j0 + kcols).
template <typename F>
void store_key_grads(const BackwardCall<F>& bc, const BackwardScratch<F>& s, std::int64_t n, std::int64_t hkv,
                     std::int64_t j0, std::int64_t kcols) {
  const Geo<F>& g = bc.g;
  const St4 &gkst = bc.gkst, &gvst = bc.gvst;
  const F ln2 = static_cast<F>(kLn2);
  for (std::int64_t j = 0; j < kcols; ++j) {
    F* gkr = bc.gk + n * gkst[0] + hkv * gkst[1] + (j0 + j) * gkst[2];
    F* gvr = bc.gv + n * gvst[0] + hkv * gvst[1] + (j0 + j) * gvst[2];
    for (std::int64_t d = 0; d < g.Dk; ++d) gkr[d * gkst[3]] = s.dk[j * g.Dkp + d] * ln2;
    for (std::int64_t d = 0; d < g.Dv; ++d) gvr[d * gvst[3]] = s.dv[j * g.Dvp + d];
  }
}

// The task's dQ (times scale) into gq, or into its chunk's part.
template <typename F>
void store_query_grads(const BackwardCall<F>& bc, const BackwardScratch<F>& s, const AttentionArgs& a, std::int64_t n,
                       std::int64_t hkv, std::int64_t c) {
  const Geo<F>& g = bc.g;
  const St4& gqst = bc.gqst;
  const F sc_q = static_cast<F>(a.scale);
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    for (std::int64_t t = 0; t < g.T; ++t) {
      const F* src = s.dq + (gi * g.T + t) * g.Dkp;
      if (bc.part) {
        F* dst = bc.part + ((c * bc.NH + nh) * g.T + t) * g.Dk;
        for (std::int64_t d = 0; d < g.Dk; ++d) dst[d] = src[d] * sc_q;
      } else {
        F* dst = bc.gq + n * gqst[0] + h * gqst[1] + t * gqst[2];
        for (std::int64_t d = 0; d < g.Dk; ++d) dst[d * gqst[3]] = src[d] * sc_q;
      }
    }
  }
}

// Sums the chunks' ALiBi slope gradients and dQ parts.
template <typename F>
void reduce_chunks(const BackwardCall<F>& bc) {
  const Geo<F>& g = bc.g;
  const std::int64_t NH = bc.NH, chunks = bc.chunks;
  if (bc.apart)
    for (std::int64_t nh = 0; nh < NH; ++nh) {
      F s = 0;
      for (std::int64_t c = 0; c < chunks; ++c) s += bc.apart[c * NH + nh];
      bc.galibi[nh] = s;
    }
  if (!bc.part) return;
  const St4& gqst = bc.gqst;
  parallel_range(NH * g.T, grain_for(chunks * g.Dk), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t x = b; x < e; ++x) {
      const std::int64_t n = x / (g.H * g.T), h = (x / g.T) % g.H, t = x % g.T;
      F* dst = bc.gq + n * gqst[0] + h * gqst[1] + t * gqst[2];
      for (std::int64_t d = 0; d < g.Dk; ++d) {
        F s = 0;
        for (std::int64_t c = 0; c < chunks; ++c) s += bc.part[(c * NH * g.T + x) * g.Dk + d];
        dst[d * gqst[3]] = s;
      }
    }
  });
}

template <typename F>
void backward_impl(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& gout,
                   const Tensor& weights, const Tensor& gweights, const AttentionGrads& gr) {
  const Geo<F> g(a);
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const std::int64_t NH = g.N * g.H, NK = g.N * g.Hkv;
  const AttnInputs<F> in(a, g.S);
  BackwardCall<F> bc{g,
                     in,
                     out.data_ptr<F>(),
                     gout.data_ptr<F>(),
                     lse_t.data_ptr<F>(),
                     data_or_null<F>(weights),
                     data_or_null<F>(gweights),
                     gr.gq.data_ptr<F>(),
                     gr.gk.data_ptr<F>(),
                     gr.gv.data_ptr<F>(),
                     data_or_null<F>(gr.gmask),
                     data_or_null<F>(gr.gsinks),
                     data_or_null<F>(gr.galibi),
                     st4(out),
                     st4(gout),
                     st4(gr.gq),
                     st4(gr.gk),
                     st4(gr.gv),
                     NH,
                     1,
                     nullptr,
                     nullptr};
  if (bc.gsink) std::fill(bc.gsink, bc.gsink + NH, F(0));
  if (bc.galibi) std::fill(bc.galibi, bc.galibi + NH, F(0));
  if (NH * g.T == 0 || g.S == 0) {  // nothing attended: every gradient is 0
    for (const Tensor* t : {&gr.gq, &gr.gk, &gr.gv}) zero4<F>(*t);
    return;
  }
  const std::int64_t nt = omp_in_parallel() ? 1 : get_num_threads();
  const std::int64_t chunks = NK >= 2 * nt ? 1 : std::min<std::int64_t>(g.nkb, (2 * nt + NK - 1) / NK);
  Scratch pscr(Scratch::size_of({chunks > 1 ? chunks * NH * g.T * g.Dk : 0, bc.galibi ? chunks * NH : 0}, sizeof(F)));
  bc.chunks = chunks;
  bc.part = chunks > 1 ? pscr.take<F>(chunks * NH * g.T * g.Dk) : nullptr;
  bc.apart = bc.galibi ? pscr.take<F>(chunks * NH) : nullptr;
  const std::int64_t work = g.T * g.span() * g.G * (g.Dk + g.Dv) / chunks;
  run_items(NK * chunks, grain_for(work), BackwardScratch<F>::bytes(g), [&](std::int64_t it, Scratch& sc) {
    const std::int64_t x = it / chunks, c = it % chunks;
    const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
    BackwardScratch<F> s(g, sc);
    load_query_group(bc, n, hkv, c, s);
    std::fill(s.dq, s.dq + g.G * g.T * g.Dkp, F(0));
    const std::int64_t kb0 = c * g.nkb / chunks, kb1 = (c + 1) * g.nkb / chunks;
    for (std::int64_t kb = kb0; kb < kb1; ++kb) {
      const std::int64_t j0 = kb * Bk, kcols = std::min(Bk, g.S - j0), kcp = std::min(Bk, g.Sp - j0);
      const bool kfin = load_key_block(bc, n, hkv, j0, kcols, kcp, s);
      for (std::int64_t gi = 0; gi < g.G; ++gi)
        for (std::int64_t qb = 0; qb < g.nqb; ++qb) backward_tile(bc, s, n, hkv, gi, qb, j0, kcols, kcp, kfin, c);
      store_key_grads(bc, s, n, hkv, j0, kcols);
    }
    store_query_grads(bc, s, a, n, hkv, c);
  });
  reduce_chunks(bc);
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

// bfloat16/float16 attention: the AVX512-BF16 kernels where they apply and pay, else the float32
// kernels on converted inputs, each output rounded once (correct on every CPU).
void reduced_attention_forward(CpuBackend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                               const Tensor& weights) {
  if (bf16_attention_forward(a, out, lse, weights) || bf16_attention_decode(a, out, lse, weights)) return;
  attention_forward_via_float32(be, a, out, lse, weights);
}

void reduced_attention_backward(CpuBackend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                const Tensor& gout, const Tensor& weights, const Tensor& gweights,
                                const AttentionGrads& grads) {
  if (bf16_attention_backward(a, out, lse, gout, weights, gweights, grads)) return;
  attention_backward_via_float32(be, a, out, lse, gout, weights, gweights, grads);
}

void CpuBackend::attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                   const Tensor& weights) {
  if (is_reduced_float(a.q.dtype())) return reduced_attention_forward(*this, a, out, lse, weights);
  dispatch(a.q.dtype(), "attention_forward", [&](auto z) { forward_impl<decltype(z)>(a, out, lse, weights); });
}

void CpuBackend::attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                                    const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) {
  if (is_reduced_float(a.q.dtype()))
    return reduced_attention_backward(*this, a, out, lse, gout, weights, gweights, grads);
  dispatch(a.q.dtype(), "attention_backward",
           [&](auto z) { backward_impl<decltype(z)>(a, out, lse, gout, weights, gweights, grads); });
}

void CpuBackend::attention_dropout_mask(const AttentionArgs& a, const Tensor& out) {
  if (is_reduced_float(a.q.dtype())) return attention_dropout_mask_via_float32(*this, a, out);
  dispatch(a.q.dtype(), "attention_dropout_mask", [&](auto z) { dropout_mask_impl<decltype(z)>(a, out); });
}

}  // namespace kiln::cpu
