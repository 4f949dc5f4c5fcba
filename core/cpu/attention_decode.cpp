// The few-query path of the CPU attention forward (attention.cpp takes it when T * G <=
// kDecodeRows: KV-cache decoding, GQA groups): the rows of one kv head's G query heads are done
// together, reading K and V in place. Packing the whole cache as the tiled path does would cost
// more than attending with one query. Long key ranges split into chunks over the threads; their
// (max, sum, accumulator) states merge at the end. bfloat16 K/V (a KV cache in bf16) are read in
// place too, converted tile by tile (bf16_attention_decode), never copied whole to float32.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>

#include "../reduced_float.hpp"
#include "attention_bf16.hpp"
#include "attention_kernels.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace attention_kernels {
namespace {

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

// One decode call: the key range, its split into chunks and where the chunks' states go.
template <typename F>
struct DecodeCall {
  const Geo<F>& g;
  const AttnInputs<F>& in;
  F *o, *lse, *w;  // out (N, H, T, Dv), lse (N, H, T), weights (N, H, T, S) or null
  St4 ost;
  std::int64_t R, Rp;  // query rows per kv head (G * T), rounded up to the vector width
  // K / V rows are read in place when they are contiguous and vector-sized, else per tile packed.
  bool k_direct, v_direct, use_dot;
  std::int64_t kbeg, kend, nblk;  // keys any row may see (rows t = 0..T-1; lo and hi grow with t), in blocks
  std::int64_t work, chunks, pstride;
  F* part;  // per item: running max (R), sum (R), accumulator (R, Dvp)

  DecodeCall(const Geo<F>& g_, const AttnInputs<F>& in_, const Tensor& out, const Tensor& lse_t, const Tensor& weights)
      : g(g_), in(in_), o(out.data_ptr<F>()), lse(lse_t.data_ptr<F>()), w(data_or_null<F>(weights)), ost(st4(out)) {
    constexpr std::int64_t Bk = Geo<F>::kBk;
    R = g.G * g.T;
    Rp = round_up_w<F>(R);
    k_direct = !in.k16 && in.kst[3] == 1 && g.Dk == g.Dkp;
    v_direct = !in.v16 && in.vst[3] == 1 && g.Dv == g.Dvp;
    use_dot = R <= kDotRows;
    kbeg = g.lo(0) / Bk * Bk;
    kend = std::max(g.hi(g.T - 1), kbeg);
    nblk = (kend - kbeg + Bk - 1) / Bk;
    work = std::max<std::int64_t>(R * (kend - kbeg) * (g.Dk + g.Dv), 1);  // per kv head
    const std::int64_t NK = g.N * g.Hkv, nt = omp_in_parallel() ? 1 : get_num_threads();
    chunks = 1;
    if (NK < nt && nblk > 1)
      chunks =
          std::clamp<std::int64_t>(std::min((nt + NK - 1) / NK, work / kDecodeGrain), 1, std::min(nblk, kMaxChunks));
    if (const std::int64_t forced = decode_split.load(); forced > 0 && nblk > 0)
      chunks = std::min({forced, nblk, kMaxChunks});
    pstride = round_up_w<F>(R * (2 + g.Dvp));
  }

  // Writes row r of kv head (n, hkv) from its running max, sum and accumulator acc_at(d).
  void finish(std::int64_t n, std::int64_t hkv, std::int64_t r, F mrow, F lrow, auto&& acc_at) const {
    const std::int64_t gi = r / g.T, t = r % g.T, h = hkv * g.G + gi, nh = n * g.H + h;
    F inv, lse2;
    row_norm(mrow, lrow, in.sinks.p != nullptr, in.sinks(n, h, kNegInf<F>) * in.l2e, inv, lse2);
    F* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
    for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = acc_at(d) * inv;
    lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
    if (w) finish_weights(w + (nh * g.T + t) * g.S, g.S, kbeg, kend, lse2);
  }
};

// One item's scratch: rows r = gi * T + t of the kv head's G query heads.
template <typename F>
struct DecodeScratch {
  F *qs, *qt, *st;  // (R, Dkp) q in log2 units; with gemm scores: (Dk, Rp) q^T and (Bk, Rp) K q^T
  F *sb, *pb;       // (R, Bk) scores, probabilities
  F *tmp, *alpha;   // (R, Dvp) the tile's P V, (R) accumulator factors
  F* mult;          // (Bk) dropout multipliers
  F *kpk, *vpk;     // (Bk, Dkp), (Bk, Dvp) packed K / V tile unless read in place
  static std::size_t bytes(const DecodeCall<F>& dc) {
    constexpr std::int64_t Bk = Geo<F>::kBk;
    const Geo<F>& g = dc.g;
    const std::int64_t R = dc.R, Rp = dc.Rp;
    return Scratch::size_of({R * g.Dkp, dc.use_dot ? 0 : g.Dk * Rp, dc.use_dot ? 0 : Bk * Rp, R * Bk, R * Bk, R * g.Dvp,
                             R, Bk, dc.k_direct ? 0 : Bk * g.Dkp, dc.v_direct ? 0 : Bk * g.Dvp},
                            sizeof(F));
  }
  DecodeScratch(const DecodeCall<F>& dc, Scratch& sc) {
    constexpr std::int64_t Bk = Geo<F>::kBk;
    const Geo<F>& g = dc.g;
    const std::int64_t R = dc.R, Rp = dc.Rp;
    qs = sc.take<F>(R * g.Dkp);
    qt = dc.use_dot ? nullptr : sc.take<F>(g.Dk * Rp);
    st = dc.use_dot ? nullptr : sc.take<F>(Bk * Rp);
    sb = sc.take<F>(R * Bk);
    pb = sc.take<F>(R * Bk);
    tmp = sc.take<F>(R * g.Dvp);
    alpha = sc.take<F>(R);
    mult = sc.take<F>(Bk);
    kpk = dc.k_direct ? nullptr : sc.take<F>(Bk * g.Dkp);
    vpk = dc.v_direct ? nullptr : sc.take<F>(Bk * g.Dvp);
  }
};

// Packs the G query heads of kv head (n, hkv) as rows (and transposed for the gemm scores).
template <typename F>
void decode_load_queries(const DecodeCall<F>& dc, std::int64_t n, std::int64_t hkv, DecodeScratch<F>& s) {
  const Geo<F>& g = dc.g;
  const St4& qst = dc.in.qst;
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi;
    pack_rows(s.qs + gi * g.T * g.Dkp, g.Dkp, dc.in.q + n * qst[0] + h * qst[1], qst[2], qst[3], g.T, g.Dk,
              dc.in.qscale);
  }
  if (!s.qt) return;
  for (std::int64_t d = 0; d < g.Dk; ++d) {
    for (std::int64_t r = 0; r < dc.R; ++r) s.qt[d * dc.Rp + r] = s.qs[r * g.Dkp + d];
    std::fill(s.qt + d * dc.Rp + dc.R, s.qt + (d + 1) * dc.Rp, F(0));
  }
}

// Scores sb (R, Bk) of every row against keys [j0, j0 + cols), then each row through the mask
// and the online softmax (alpha: the factor its accumulator is scaled by).
template <typename F>
void decode_scores(const DecodeCall<F>& dc, std::int64_t n, std::int64_t hkv, std::int64_t j0, std::int64_t cols, F* m,
                   F* l, DecodeScratch<F>& s) {
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const Geo<F>& g = dc.g;
  const AttnInputs<F>& in = dc.in;
  const std::int64_t R = dc.R, Rp = dc.Rp, cp = std::min(Bk, round_up_w<F>(cols));
  const std::int64_t koff = n * in.kst[0] + hkv * in.kst[1] + j0 * in.kst[2];
  const F* kb = in.k ? in.k + koff : nullptr;
  std::int64_t ldk = in.kst[2];
  if (!dc.k_direct) {
    if (in.k16) pack_rows(s.kpk, g.Dkp, in.k16 + koff, in.kst[2], in.kst[3], cols, g.Dk);
    else pack_rows(s.kpk, g.Dkp, kb, in.kst[2], in.kst[3], cols, g.Dk);
    kb = s.kpk;
    ldk = g.Dkp;
  }
  if (dc.use_dot) {
    for (std::int64_t j = 0; j < cols; ++j) dot_rows(R, g.Dkp, s.qs, g.Dkp, kb + j * ldk, s.sb + j, Bk);
  } else {
    gemm<F, false>(cols, Rp, g.Dk, kb, ldk, 1, s.qt, Rp, s.st, Rp);
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t j = 0; j < cols; ++j) s.sb[r * Bk + j] = s.st[j * Rp + r];
  }
  for (std::int64_t r = 0; r < R; ++r) {
    const std::int64_t gi = r / g.T, t = r % g.T, h = hkv * g.G + gi, nh = n * g.H + h;
    const F slope = in.alibi(n, h, F(0)) * in.l2e;
    const RowMask<F> rm = in.mask.row_mask(n, h, t, j0, slope, g.S - g.T + t);
    const bool whole = !in.mask.p && slope == F(0) && g.lo(t) <= j0 && g.hi(t) >= j0 + cols;
    s.alpha[r] = online_row(s.sb + r * Bk, s.pb + r * Bk, m[r], l[r], j0, cols, cp, whole, g.lo(t) - j0,
                            std::min(cols, g.hi(t) - j0), rm, dc.w ? dc.w + (nh * g.T + t) * g.S : nullptr, in.drop,
                            nh * g.T + t, in.drop.on ? s.mult : nullptr);
  }
}

// acc = acc * alpha + P V over keys [j0, j0 + cols). NaN/Inf in the product may come from masked
// keys (0 * Inf): then the exact product, which skips masked pairs.
template <typename F>
void decode_accumulate(const DecodeCall<F>& dc, std::int64_t n, std::int64_t hkv, std::int64_t j0, std::int64_t cols,
                       F* acc, DecodeScratch<F>& s) {
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const Geo<F>& g = dc.g;
  const St4& vst = dc.in.vst;
  const std::int64_t R = dc.R;
  const std::int64_t voff = n * vst[0] + hkv * vst[1] + j0 * vst[2];
  const F* vb = dc.in.v ? dc.in.v + voff : nullptr;
  std::int64_t ldv = vst[2];
  if (!dc.v_direct) {
    if (dc.in.v16) pack_rows(s.vpk, g.Dvp, dc.in.v16 + voff, vst[2], vst[3], cols, g.Dv);
    else pack_rows(s.vpk, g.Dvp, vb, vst[2], vst[3], cols, g.Dv);
    vb = s.vpk;
    ldv = g.Dvp;
  }
  if (dc.use_dot)
    for (std::int64_t r = 0; r < R; ++r) pv_row(cols, s.pb + r * Bk, vb, ldv, g.Dvp, s.tmp + r * g.Dvp);
  else gemm<F, false>(R, g.Dvp, cols, s.pb, Bk, 1, vb, ldv, s.tmp, g.Dvp);
  if (!all_finite(s.tmp, R * g.Dvp)) {
    std::fill(s.tmp, s.tmp + R * g.Dvp, F(0));
    gemm_skip<F>(false, R, g.Dvp, cols, s.pb, Bk, vb, ldv, s.tmp, g.Dvp, nullptr, s.sb, Bk);
  }
  for (std::int64_t r = 0; r < R; ++r) {
    F* ar = acc + r * g.Dvp;
    const F* tr = s.tmp + r * g.Dvp;
    const F al = s.alpha[r];
    for (std::int64_t d = 0; d < g.Dvp; ++d) ar[d] = ar[d] * al + tr[d];
  }
}

// Item it = (kv head x, chunk c): its rows over the chunk's keys, in its part of dc.part;
// written out directly when the keys are not split.
template <typename F>
void decode_item(const DecodeCall<F>& dc, std::int64_t it, Scratch& sc) {
  constexpr std::int64_t Bk = Geo<F>::kBk;
  const Geo<F>& g = dc.g;
  const std::int64_t chunks = dc.chunks, R = dc.R;
  const std::int64_t x = it / chunks, c = it % chunks;
  const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
  const std::int64_t b0 = dc.kbeg + c * dc.nblk / chunks * Bk;
  const std::int64_t b1 = std::min(dc.kend, dc.kbeg + (c + 1) * dc.nblk / chunks * Bk);
  F* m = dc.part + it * dc.pstride;
  F* l = m + R;
  F* acc = l + R;  // (R, Dvp)
  DecodeScratch<F> s(dc, sc);
  decode_load_queries(dc, n, hkv, s);
  std::fill(m, m + R, kNegInf<F>);
  std::fill(l, l + R, F(0));
  std::fill(acc, acc + R * g.Dvp, F(0));
  for (std::int64_t j0 = b0; j0 < b1; j0 += Bk) {
    const std::int64_t cols = std::min(Bk, b1 - j0);
    decode_scores(dc, n, hkv, j0, cols, m, l, s);
    decode_accumulate(dc, n, hkv, j0, cols, acc, s);
  }
  if (chunks == 1)
    for (std::int64_t r = 0; r < R; ++r)
      dc.finish(n, hkv, r, m[r], l[r], [&](std::int64_t d) { return acc[r * g.Dvp + d]; });
}

// Merges the chunks of every row (each scaled to the common max) and writes it out.
template <typename F>
void decode_merge(const DecodeCall<F>& dc) {
  const Geo<F>& g = dc.g;
  const std::int64_t chunks = dc.chunks, R = dc.R, pstride = dc.pstride;
  const std::int64_t row_work = chunks * g.Dv + (dc.w ? g.S : 0) + 1;
  parallel_range(g.N * g.Hkv * R, (kDecodeGrain + row_work - 1) / row_work, [&](std::int64_t b, std::int64_t e) {
    std::array<F, kMaxChunks> f;
    for (std::int64_t xr = b; xr < e; ++xr) {
      const std::int64_t x = xr / R, r = xr % R;
      const F* p0 = dc.part + x * chunks * pstride;
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
      dc.finish(x / g.Hkv, x % g.Hkv, r, mrow, lrow, [&](std::int64_t d) {
        F sum = 0;
        for (std::int64_t c = 0; c < chunks; ++c)
          sum += p0[c * pstride + 2 * R + r * g.Dvp + d] * f[static_cast<std::size_t>(c)];
        return sum;
      });
    }
  });
}

}  // namespace

template <typename F>
void decode_forward(const Geo<F>& g, const AttnInputs<F>& in, const Tensor& out, const Tensor& lse_t,
                    const Tensor& weights) {
  DecodeCall<F> dc(g, in, out, lse_t, weights);
  const std::int64_t items = g.N * g.Hkv * dc.chunks;
  Scratch parts(Scratch::size_of({items * dc.pstride}, sizeof(F)));
  dc.part = parts.take<F>(items * dc.pstride);
  const std::int64_t item_work = std::max<std::int64_t>(dc.work / dc.chunks, 1);
  run_items(items, (kDecodeGrain + item_work - 1) / item_work, DecodeScratch<F>::bytes(dc),
            [&](std::int64_t it, Scratch& sc) { decode_item(dc, it, sc); });
  if (dc.chunks > 1) decode_merge(dc);
}

template void decode_forward<float>(const Geo<float>&, const AttnInputs<float>&, const Tensor&, const Tensor&,
                                    const Tensor&);
template void decode_forward<double>(const Geo<double>&, const AttnInputs<double>&, const Tensor&, const Tensor&,
                                     const Tensor&);

}  // namespace attention_kernels

bool bf16_attention_decode(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights) {
  using namespace attention_kernels;
  if (a.q.dtype() != kBFloat16 || weights.defined()) return false;
  const Geo<float> g(a);
  if (g.T * g.G > kDecodeRows) return false;
  if (g.N * g.H * g.T == 0) return true;
  // q (at most kDecodeRows rows per kv head), mask, slopes and sinks in float32; K and V stay
  // bfloat16, converted one tile at a time into the kernel's float32 scratch.
  Backend& be = cpu_backend();
  AttentionArgs f = a;
  for (Tensor* t : {&f.q, &f.mask, &f.alibi, &f.sinks}) *t = float32_copy(be, *t);
  const AttnInputs<float> in(f, g.S);
  const Tensor of = Tensor::empty(out.shape(), kFloat32, out.device());
  decode_forward<float>(g, in, of, lse, Tensor());
  be.copy(out, of);
  return true;
}

// Declared by the decode tests only: chunks > 0 forces the key-range split, 0 restores the
// automatic choice; returns the previous setting.
std::int64_t attention_decode_split_for_testing(std::int64_t chunks) {
  return attention_kernels::decode_split.exchange(std::max<std::int64_t>(chunks, 0));
}

}  // namespace kiln::cpu
