// Fused attention backward on bfloat16 q, k, v with AVX512-BF16 dot products (vdpbf16ps): the
// flash-attention backward of attention.cpp (per (batch, kv head, chunk of key blocks), P
// recomputed tile by tile from the float32 logsumexp) with its five tile products on bf16 pairs
// and float32 accumulation; scores, P, dS, masks, ALiBi, sinks and dropout stay float32 (the
// shared row code of attention_grad_row.hpp). The reduction of each product runs over pairs:
//   S = q K^T, dP = dO V^T: pairs (d, d + 1) of the head dim (q / dO rows, K^T / V^T tiles);
//   dV += P^T dO, dK += dS^T q: pairs (t, t + 1) of queries (P and dS rounded to bf16 and
//          transposed into pair rows; dO and q interleaved by row pairs, once per task);
//   dQ += dS K: pairs (j, j + 1) of keys (dS rounded to bf16, K interleaved by key pairs).
// A product whose bf16 operand tile holds NaN/Inf takes the exact float32 path that skips masked
// pairs (0 * NaN must not reach a gradient). Memory stays O((T + S) D): per task the query group
// packed twice in bf16 and its dQ in float32, per key block its tiles.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "attention_bf16.hpp"
#include "attention_bf16_tiles.hpp"
#include "attention_grad_row.hpp"
#include "attention_kernels.hpp"
#include "bf16_dot.hpp"
#include "cpu_backend.hpp"

namespace kiln::cpu {
namespace {
using namespace attention_kernels;
using namespace bf16_tiles;

constexpr std::int64_t kBq = 32, kBk = 64;

constexpr std::int64_t up16(std::int64_t x) { return (x + kL - 1) / kL * kL; }

// Everything one backward call reads and writes.
struct Call {
  const Geo<float> g;
  Tensor mask32, alibi32, sinks32;  // float32 versions (or the originals when float32/bool)
  const BFloat16 *q, *k, *v, *o, *go;
  St4 qst, kst, vst, ost, gost, gqst, gkst, gvst;
  const float* lse;
  MaskView mask;
  HeadValues<float> alibi, sinks;
  Dropout drop;
  BFloat16 *gq, *gk, *gv, *gm, *gsink, *galibi;  // the last three may be null
  float scale, qscale;                           // scale, scale * log2(e)
  std::int64_t Dk2, Dv2, Dkp, Dvp, Th, NH, chunks = 1;
  float* part = nullptr;   // chunks > 1: dQ per (chunk, n, h, t, Dk)
  float* apart = nullptr;  // ALiBi: slope gradient per (chunk, n, h)

  Call(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& gout, const AttentionGrads& gr)
      : g(a),
        mask32(bf16_tiles::as_float32(a.mask)),
        alibi32(bf16_tiles::as_float32(a.alibi)),
        sinks32(bf16_tiles::as_float32(a.sinks)),
        q(a.q.data_ptr<BFloat16>()),
        k(a.k.data_ptr<BFloat16>()),
        v(a.v.data_ptr<BFloat16>()),
        o(out.data_ptr<BFloat16>()),
        go(gout.data_ptr<BFloat16>()),
        qst(st4(a.q)),
        kst(st4(a.k)),
        vst(st4(a.v)),
        ost(st4(out)),
        gost(st4(gout)),
        gqst(st4(gr.gq)),
        gkst(st4(gr.gk)),
        gvst(st4(gr.gv)),
        lse(lse_t.data_ptr<float>()),
        mask(mask32),
        alibi(alibi32),
        sinks(sinks32),
        drop(make_dropout(a, g.S)),
        gq(gr.gq.data_ptr<BFloat16>()),
        gk(gr.gk.data_ptr<BFloat16>()),
        gv(gr.gv.data_ptr<BFloat16>()),
        gm(data_or_null<BFloat16>(gr.gmask)),
        gsink(data_or_null<BFloat16>(gr.gsinks)),
        galibi(data_or_null<BFloat16>(gr.galibi)),
        scale(static_cast<float>(a.scale)),
        qscale(static_cast<float>(a.scale * kLog2e)),
        Dk2((g.Dk + 1) / 2),
        Dv2((g.Dv + 1) / 2),
        Dkp(up16(g.Dk)),
        Dvp(up16(g.Dv)),
        Th((g.T + 1) / 2),
        NH(g.N * g.H) {}
};

// One task's scratch: rows gi * T + t of its G query heads (pair rows gi * Th + t / 2), one key
// block's tiles, one (query block, key block) tile's rows.
struct TaskScratch {
  u32 *qp, *qi, *dop, *doi;         // q, dO: (G*T, Dk2 / Dv2) pairs along d; (G*Th, Dkp / Dvp) row pairs
  float *dq, *lse2, *dl;            // (G*T, Dkp) dQ; (G*T) lse in log2 units, delta
  char *qfin, *dofin;               // (G, nqb): q / dO block all finite
  u32 *kt, *vt, *ki;                // (Dk2, Bk) K^T, (Dv2, Bk) V^T pairs; (Bk/2, Dkp) K key pairs
  float *dk, *dv, *kf;              // (Bk, Dkp) dK, (Bk, Dvp) dV, (Bk, Dkp) float32 K (exact path)
  float *sb, *pb, *pd, *db, *mult;  // (Bq, Bk): scores, P, P after dropout, dP then dS, multipliers
  u32 *pt, *dst, *dsr;              // (Bq/2, Bk) P^T, dS^T query pairs; (Bq, Bk/2) dS key pairs
  float* xf;                        // (Bq, max(Dkp, Dvp)) a float32 q or dO block (exact path)
  static std::size_t bytes(const Call& c) {
    const Geo<float>& g = c.g;
    const std::int64_t GT = g.G * g.T, GTh = g.G * c.Th, Dm = std::max(c.Dkp, c.Dvp);
    return Scratch::size_of({GT * c.Dk2,
                             GTh * c.Dkp,
                             GT * c.Dv2,
                             GTh * c.Dvp,
                             GT * c.Dkp,
                             GT,
                             GT,
                             c.Dk2 * kBk,
                             c.Dv2 * kBk,
                             kBk / 2 * c.Dkp,
                             kBk * c.Dkp,
                             kBk * c.Dvp,
                             kBk * c.Dkp,
                             kBq * kBk,
                             kBq * kBk,
                             kBq * kBk,
                             kBq * kBk,
                             kBq * kBk,
                             kBq / 2 * kBk,
                             kBq / 2 * kBk,
                             kBq * kBk / 2,
                             kBq * Dm},
                            4) +
           2 * static_cast<std::size_t>(g.G * g.nqb) + 128;
  }
  TaskScratch(const Call& c, Scratch& sc) {
    const Geo<float>& g = c.g;
    const std::int64_t GT = g.G * g.T, GTh = g.G * c.Th;
    qp = sc.take<u32>(GT * c.Dk2);
    qi = sc.take<u32>(GTh * c.Dkp);
    dop = sc.take<u32>(GT * c.Dv2);
    doi = sc.take<u32>(GTh * c.Dvp);
    dq = sc.take<float>(GT * c.Dkp);
    lse2 = sc.take<float>(GT);
    dl = sc.take<float>(GT);
    kt = sc.take<u32>(c.Dk2 * kBk);
    vt = sc.take<u32>(c.Dv2 * kBk);
    ki = sc.take<u32>(kBk / 2 * c.Dkp);
    dk = sc.take<float>(kBk * c.Dkp);
    dv = sc.take<float>(kBk * c.Dvp);
    kf = sc.take<float>(kBk * c.Dkp);
    sb = sc.take<float>(kBq * kBk);
    pb = sc.take<float>(kBq * kBk);
    pd = sc.take<float>(kBq * kBk);
    db = sc.take<float>(kBq * kBk);
    mult = sc.take<float>(kBq * kBk);
    pt = sc.take<u32>(kBq / 2 * kBk);
    dst = sc.take<u32>(kBq / 2 * kBk);
    dsr = sc.take<u32>(kBq * kBk / 2);
    xf = sc.take<float>(kBq * std::max(c.Dkp, c.Dvp));
    qfin = sc.take<char>(g.G * g.nqb);
    dofin = sc.take<char>(g.G * g.nqb);
  }
};

// rows x D values of x (row stride sr, element stride sd) as pairs along d (dst rows D2 apart)
// and as row pairs (row t in the low (even t) or high half of dst2 row t / 2, rows ld2 apart,
// zeroed first). Returns whether every value is finite.
bool pack_both(const BFloat16* x, std::int64_t sr, std::int64_t sd, std::int64_t rows, std::int64_t D, u32* dst,
               std::int64_t D2, u32* dst2, std::int64_t ld2) {
  std::fill(dst2, dst2 + (rows + 1) / 2 * ld2, 0u);
  bool fin = true;
  for (std::int64_t t = 0; t < rows; ++t) {
    const BFloat16* xr = x + t * sr;
    u32* pr = dst + t * D2;
    u32* ir = dst2 + (t / 2) * ld2;
    const int shift = (t & 1) ? 16 : 0;
    for (std::int64_t dp = 0; dp < D2; ++dp) {
      const std::int64_t d = 2 * dp;
      const u16 lo = bits(xr[d * sd]), hi = d + 1 < D ? bits(xr[(d + 1) * sd]) : u16{0};
      fin &= finite_bits(lo) && finite_bits(hi);
      pr[dp] = pair(lo, hi);
      ir[d] |= static_cast<u32>(lo) << shift;
      if (d + 1 < D) ir[d + 1] |= static_cast<u32>(hi) << shift;
    }
  }
  return fin;
}

// The task's query heads: q and dO in both pair layouts, each row's lse (log2 units) and
// delta = rowsum(dO * O) (float32), the blocks' finiteness; chunk 0 writes the sink gradients.
void load_query_group(const Call& c, std::int64_t n, std::int64_t hkv, std::int64_t ch, TaskScratch& s) {
  const Geo<float>& g = c.g;
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    if (c.apart) c.apart[ch * c.NH + nh] = 0;
    const BFloat16* qh = c.q + n * c.qst[0] + h * c.qst[1];
    const BFloat16* gh = c.go + n * c.gost[0] + h * c.gost[1];
    for (std::int64_t qb = 0; qb < g.nqb; ++qb) {
      const std::int64_t t0 = qb * kBq, rows = std::min(kBq, g.T - t0), r0 = gi * g.T + t0;
      s.qfin[gi * g.nqb + qb] = pack_both(qh + t0 * c.qst[2], c.qst[2], c.qst[3], rows, g.Dk, s.qp + r0 * c.Dk2, c.Dk2,
                                          s.qi + (gi * c.Th + t0 / 2) * c.Dkp, c.Dkp);
      s.dofin[gi * g.nqb + qb] = pack_both(gh + t0 * c.gost[2], c.gost[2], c.gost[3], rows, g.Dv, s.dop + r0 * c.Dv2,
                                           c.Dv2, s.doi + (gi * c.Th + t0 / 2) * c.Dvp, c.Dvp);
    }
    for (std::int64_t t = 0; t < g.T; ++t) {
      const float l = c.lse[nh * g.T + t];
      // A row with nothing to attend to: 2^(s - inf) = 0 for every key.
      s.lse2[gi * g.T + t] = l == kNegInf<float> ? -kNegInf<float> : l * static_cast<float>(kLog2e);
      const BFloat16* orow = c.o + n * c.ost[0] + h * c.ost[1] + t * c.ost[2];
      const BFloat16* grow = gh + t * c.gost[2];
      float d = 0;
      for (std::int64_t x = 0; x < g.Dv; ++x) d += float(orow[x * c.ost[3]]) * float(grow[x * c.gost[3]]);
      s.dl[gi * g.T + t] = d;
    }
    // d sink = -sum over rows of P_sink * delta (rows with no key: 0).
    if (c.gsink && ch == 0) {
      const float sink2 = c.sinks(n, h, kNegInf<float>) * static_cast<float>(kLog2e);
      float acc = 0;
      for (std::int64_t t = 0; t < g.T; ++t)
        if (c.lse[nh * g.T + t] != kNegInf<float>) acc -= std::exp2(sink2 - s.lse2[gi * g.T + t]) * s.dl[gi * g.T + t];
      c.gsink[nh] = BFloat16(acc);
    }
  }
}

// Packs key block [j0, j0 + kcols) of kv head (n, hkv) (K^T and V^T pairs along d, K key pairs)
// and zeroes its dK / dV tiles; returns whether K is all finite (else kf holds K in float32).
bool load_key_block(const Call& c, std::int64_t n, std::int64_t hkv, std::int64_t j0, std::int64_t kcols,
                    TaskScratch& s) {
  const Geo<float>& g = c.g;
  const BFloat16* kx = c.k + n * c.kst[0] + hkv * c.kst[1] + j0 * c.kst[2];
  const BFloat16* vx = c.v + n * c.vst[0] + hkv * c.vst[1] + j0 * c.vst[2];
  std::fill(s.kt, s.kt + c.Dk2 * kBk, 0u);
  std::fill(s.vt, s.vt + c.Dv2 * kBk, 0u);
  std::fill(s.ki, s.ki + kBk / 2 * c.Dkp, 0u);
  bool fin = true;
  for (std::int64_t j = 0; j < kcols; ++j) {
    const BFloat16* kr = kx + j * c.kst[2];
    const BFloat16* vr = vx + j * c.vst[2];
    u32* kir = s.ki + (j / 2) * c.Dkp;
    const int shift = (j & 1) ? 16 : 0;
    for (std::int64_t d = 0; d < g.Dk; ++d) {
      const u16 b = bits(kr[d * c.kst[3]]);
      fin &= finite_bits(b);
      s.kt[(d / 2) * kBk + j] |= static_cast<u32>(b) << ((d & 1) ? 16 : 0);
      kir[d] |= static_cast<u32>(b) << shift;
    }
    for (std::int64_t d = 0; d < g.Dv; ++d)
      s.vt[(d / 2) * kBk + j] |= static_cast<u32>(bits(vr[d * c.vst[3]])) << ((d & 1) ? 16 : 0);
  }
  std::fill(s.dk, s.dk + kBk * c.Dkp, 0.0f);
  std::fill(s.dv, s.dv + kBk * c.Dvp, 0.0f);
  if (!fin)
    for (std::int64_t j = 0; j < kBk; ++j)
      for (std::int64_t d = 0; d < c.Dkp; ++d)
        s.kf[j * c.Dkp + d] = j < kcols && d < g.Dk ? float(kx[j * c.kst[2] + d * c.kst[3]]) : 0.0f;
  return fin;
}

// rows x D bf16 values (pair layout along d, rows D2 apart) as float32 rows ld apart.
void unpack_pairs(const u32* src, std::int64_t D2, std::int64_t rows, std::int64_t ld, float* dst) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float* o = dst + r * ld;
    std::fill(o, o + ld, 0.0f);
    for (std::int64_t dp = 0; dp < D2; ++dp) {
      const u32 w = src[r * D2 + dp];
      o[2 * dp] = BFloat16::from_bits(static_cast<u16>(w));
      if (2 * dp + 1 < ld) o[2 * dp + 1] = BFloat16::from_bits(static_cast<u16>(w >> 16));
    }
  }
}

// Query block qb of head hkv * G + gi against key block [j0, j0 + kcols): S and dP, P and dS per
// row, then dV += P^T dO, dK += dS^T q, dQ += dS K.
void backward_tile(const Call& c, TaskScratch& s, std::int64_t n, std::int64_t hkv, std::int64_t gi, std::int64_t qb,
                   std::int64_t j0, std::int64_t kcols, bool kfin, std::int64_t ch) {
  const Geo<float>& g = c.g;
  const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
  const std::int64_t t0 = qb * kBq, rows = std::min(kBq, g.T - t0), r0 = gi * g.T + t0;
  // Query blocks whose keys (causal, window) miss this key block are skipped.
  if (g.hi(t0 + rows - 1) <= j0 || g.lo(t0) >= j0 + kcols) return;
  // The block's keys past the last row's limit are masked for all rows: cut them.
  const std::int64_t cols = std::min(kcols, g.hi(t0 + rows - 1) - j0), cp = std::min(kBk, up16(cols));
  const float slope = c.alibi(n, h, 0.0f) * static_cast<float>(kLog2e);
  dp_gemm<false>(rows, cp, c.Dk2, s.qp + r0 * c.Dk2, c.Dk2, 1, s.kt, kBk, s.sb, kBk, nullptr, c.qscale);
  dp_gemm<false>(rows, cp, c.Dv2, s.dop + r0 * c.Dv2, c.Dv2, 1, s.vt, kBk, s.db, kBk, nullptr, 1.0f);
  const bool whole = !c.mask.p && slope == 0.0f && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t t = t0 + r;
    const GradRow<float> gr{j0,
                            cols,
                            cp,
                            whole,
                            g.lo(t) - j0,
                            std::min(cols, g.hi(t) - j0),
                            c.mask.row_mask(n, h, t, j0, slope, g.S - g.T + t),
                            s.lse2[r0 + r],
                            s.dl[r0 + r]};
    float* dp = s.db + r * kBk;
    grad_row(gr, s.sb + r * kBk, s.pb + r * kBk, s.pd + r * kBk, dp, s.mult + r * kBk, c.drop, nh * g.T + t,
             static_cast<const float*>(nullptr), c.apart ? c.apart + ch * c.NH + nh : nullptr);
    if (c.gm) {
      BFloat16* gmr = c.gm + (nh * g.T + t) * g.S + j0;
      for (std::int64_t j = 0; j < cols; ++j) gmr[j] = BFloat16(dp[j]);
    }
  }
  const float* pdrop = c.drop.on ? s.pd : s.pb;
  const std::int64_t rp = (rows + 1) / 2, ri = gi * c.Th + t0 / 2;
  if (s.dofin[gi * g.nqb + qb]) {
    pair_rows_bf16(pdrop, kBk, rows, cp, s.pt, kBk);
    dp_gemm<true>(cols, c.Dvp, rp, s.pt, 1, kBk, s.doi + ri * c.Dvp, c.Dvp, s.dv, c.Dvp, nullptr, 1.0f);
  } else {
    unpack_pairs(s.dop + r0 * c.Dv2, c.Dv2, rows, c.Dvp, s.xf);
    gemm_skip<float>(true, cols, c.Dvp, rows, pdrop, kBk, s.xf, c.Dvp, s.dv, c.Dvp, nullptr, s.sb, kBk);
  }
  if (s.qfin[gi * g.nqb + qb]) {
    pair_rows_bf16(s.db, kBk, rows, cp, s.dst, kBk);
    dp_gemm<true>(cols, c.Dkp, rp, s.dst, 1, kBk, s.qi + ri * c.Dkp, c.Dkp, s.dk, c.Dkp, nullptr, 1.0f);
  } else {
    unpack_pairs(s.qp + r0 * c.Dk2, c.Dk2, rows, c.Dkp, s.xf);
    gemm_skip<float>(true, cols, c.Dkp, rows, s.db, kBk, s.xf, c.Dkp, s.dk, c.Dkp, nullptr, s.sb, kBk);
  }
  if (kfin) {
    for (std::int64_t r = 0; r < rows; ++r) round_bf16(s.db + r * kBk, reinterpret_cast<u16*>(s.dsr + r * kBk / 2), cp);
    dp_gemm<true>(rows, c.Dkp, cp / 2, s.dsr, kBk / 2, 1, s.ki, c.Dkp, s.dq + r0 * c.Dkp, c.Dkp, nullptr, 1.0f);
  } else {
    gemm_skip<float>(false, rows, c.Dkp, cols, s.db, kBk, s.kf, c.Dkp, s.dq + r0 * c.Dkp, c.Dkp, nullptr, s.sb, kBk);
  }
}

// dK = scale * dS^T q and dV of key block [j0, j0 + kcols), rounded once.
void store_key_grads(const Call& c, const TaskScratch& s, std::int64_t n, std::int64_t hkv, std::int64_t j0,
                     std::int64_t kcols) {
  for (std::int64_t j = 0; j < kcols; ++j) {
    BFloat16* gkr = c.gk + n * c.gkst[0] + hkv * c.gkst[1] + (j0 + j) * c.gkst[2];
    BFloat16* gvr = c.gv + n * c.gvst[0] + hkv * c.gvst[1] + (j0 + j) * c.gvst[2];
    for (std::int64_t d = 0; d < c.g.Dk; ++d) gkr[d * c.gkst[3]] = BFloat16(s.dk[j * c.Dkp + d] * c.scale);
    for (std::int64_t d = 0; d < c.g.Dv; ++d) gvr[d * c.gvst[3]] = BFloat16(s.dv[j * c.Dvp + d]);
  }
}

// The task's dQ (times scale) into gq, or into its chunk's float32 part.
void store_query_grads(const Call& c, const TaskScratch& s, std::int64_t n, std::int64_t hkv, std::int64_t ch) {
  const Geo<float>& g = c.g;
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    for (std::int64_t t = 0; t < g.T; ++t) {
      const float* src = s.dq + (gi * g.T + t) * c.Dkp;
      if (c.part) {
        float* dst = c.part + ((ch * c.NH + nh) * g.T + t) * g.Dk;
        for (std::int64_t d = 0; d < g.Dk; ++d) dst[d] = src[d] * c.scale;
      } else {
        BFloat16* dst = c.gq + n * c.gqst[0] + h * c.gqst[1] + t * c.gqst[2];
        for (std::int64_t d = 0; d < g.Dk; ++d) dst[d * c.gqst[3]] = BFloat16(src[d] * c.scale);
      }
    }
  }
}

// Sums the chunks' ALiBi slope gradients and dQ parts (float32), each rounded once.
void reduce_chunks(const Call& c) {
  const Geo<float>& g = c.g;
  const std::int64_t NH = c.NH, chunks = c.chunks;
  if (c.apart)
    for (std::int64_t nh = 0; nh < NH; ++nh) {
      float s = 0;
      for (std::int64_t ch = 0; ch < chunks; ++ch) s += c.apart[ch * NH + nh];
      c.galibi[nh] = BFloat16(s);
    }
  if (!c.part) return;
  parallel_range(NH * g.T, grain_for(chunks * g.Dk), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t x = b; x < e; ++x) {
      const std::int64_t n = x / (g.H * g.T), h = (x / g.T) % g.H, t = x % g.T;
      BFloat16* dst = c.gq + n * c.gqst[0] + h * c.gqst[1] + t * c.gqst[2];
      for (std::int64_t d = 0; d < g.Dk; ++d) {
        float s = 0;
        for (std::int64_t ch = 0; ch < chunks; ++ch) s += c.part[(ch * NH * g.T + x) * g.Dk + d];
        dst[d * c.gqst[3]] = BFloat16(s);
      }
    }
  });
}

bool all_bf16(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->dtype() != kBFloat16) return false;
  return true;
}

}  // namespace

bool bf16_attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                             const Tensor& weights, const Tensor& gweights, const AttentionGrads& gr) {
  // Returned weights keep the float32 path (as in the forward).
  if (!use_bf16_tiles() || a.q.dtype() != kBFloat16 || weights.defined() || gweights.defined()) return false;
  if (!all_bf16({&out, &gout, &gr.gq, &gr.gk, &gr.gv, &gr.gmask, &gr.galibi, &gr.gsinks})) return false;
  Call c(a, out, lse, gout, gr);
  const Geo<float>& g = c.g;
  const std::int64_t NK = g.N * g.Hkv;
  if (c.gsink) std::fill(c.gsink, c.gsink + c.NH, BFloat16(0.0f));
  if (c.galibi) std::fill(c.galibi, c.galibi + c.NH, BFloat16(0.0f));
  if (c.NH * g.T == 0 || g.S == 0) {  // nothing attended: every gradient is 0
    for (const Tensor* t : {&gr.gq, &gr.gk, &gr.gv}) cpu_backend().fill(*t, Scalar(0.0));
    return true;
  }
  const std::int64_t nt = omp_in_parallel() ? 1 : get_num_threads();
  c.chunks = NK >= 2 * nt ? 1 : std::min<std::int64_t>(g.nkb, (2 * nt + NK - 1) / NK);
  Scratch pscr(Scratch::size_of({c.chunks > 1 ? c.chunks * c.NH * g.T * g.Dk : 0, c.galibi ? c.chunks * c.NH : 0}, 4));
  c.part = c.chunks > 1 ? pscr.take<float>(c.chunks * c.NH * g.T * g.Dk) : nullptr;
  c.apart = c.galibi ? pscr.take<float>(c.chunks * c.NH) : nullptr;
  const std::int64_t work = g.T * g.span() * g.G * (g.Dk + g.Dv) / c.chunks;
  run_items(NK * c.chunks, grain_for(work), TaskScratch::bytes(c), [&](std::int64_t it, Scratch& sc) {
    const std::int64_t x = it / c.chunks, ch = it % c.chunks;
    const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
    TaskScratch s(c, sc);
    load_query_group(c, n, hkv, ch, s);
    std::fill(s.dq, s.dq + g.G * g.T * c.Dkp, 0.0f);
    const std::int64_t kb0 = ch * g.nkb / c.chunks, kb1 = (ch + 1) * g.nkb / c.chunks;
    for (std::int64_t kb = kb0; kb < kb1; ++kb) {
      const std::int64_t j0 = kb * kBk, kcols = std::min(kBk, g.S - j0);
      const bool kfin = load_key_block(c, n, hkv, j0, kcols, s);
      for (std::int64_t gi = 0; gi < g.G; ++gi)
        for (std::int64_t qb = 0; qb < g.nqb; ++qb) backward_tile(c, s, n, hkv, gi, qb, j0, kcols, kfin, ch);
      store_key_grads(c, s, n, hkv, j0, kcols);
    }
    store_query_grads(c, s, n, hkv, ch);
  });
  reduce_chunks(c);
  return true;
}

}  // namespace kiln::cpu
