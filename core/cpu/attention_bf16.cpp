// Fused attention forward on bfloat16 q, k, v with AVX512-BF16 dot products (vdpbf16ps): the
// flash-attention loop of attention.cpp with both tile products on bf16 pairs and everything else
// in float32 (scores, the online-softmax state, the output accumulator, masks, ALiBi, sinks,
// dropout: the shared row code of attention_kernels.hpp).
//   q k^T: q rows and K^T tiles hold pairs (d, d + 1) of the head dim in one 32-bit lane;
//   P v:   the float32 probabilities are rounded to bf16 pairs (j, j + 1) of keys, V rows are
//          interleaved the same way, so one vdpbf16ps adds two keys' contributions.
// Memory stays O((T + S) D): K and V packed once per kv head (bf16), tiles per thread.
// The tile products (attention_bf16_tiles.hpp) are the only code using AVX512-BF16.
#include <algorithm>
#include <cstdint>

#include "attention_bf16.hpp"
#include "attention_bf16_tiles.hpp"
#include "attention_kernels.hpp"
#include "bf16_dot.hpp"
#include "cpu_backend.hpp"

namespace kiln::cpu {
namespace {
using namespace attention_kernels;
using namespace bf16_tiles;

constexpr std::int64_t kBq = 32, kBk = 64;

// The bf16 inputs of one call: q, k, v (bf16) and the float32 mask / ALiBi / sinks.
struct Bf16Inputs {
  const BFloat16 *q, *k, *v;
  St4 qst, kst, vst;
  Tensor mask32, alibi32, sinks32;  // float32 versions (or the originals when already float32/bool)
};

// Per kv head x: K as (nkb, Dk2, Bk) pair tiles, V as (Sp / 2, Dvp) pair rows, and which V blocks
// hold only finite values (others take the exact path that skips masked keys).
// The buffers come from the caching allocator (Scratch): no OS allocation in steady state.
struct Packed {
  std::int64_t NK, Dk2, Dvp, ktsz, vsz;
  Scratch mem;
  u32 *kt, *vp;
  char* vfin;
  explicit Packed(const Geo<float>& g)
      : NK(g.N * g.Hkv),
        Dk2((g.Dk + 1) / 2),
        Dvp((g.Dv + kL - 1) / kL * kL),
        ktsz(g.nkb * Dk2 * kBk),
        vsz(g.nkb * kBk / 2 * Dvp),
        mem(Scratch::size_of({NK * ktsz, NK * vsz}, 4) + static_cast<std::size_t>(NK * g.nkb)) {
    kt = mem.take<u32>(NK * ktsz);
    vp = mem.take<u32>(NK * vsz);
    vfin = mem.take<char>(NK * g.nkb);
  }
};

void pack_kv(const Geo<float>& g, const Bf16Inputs& in, Packed& pk) {
  const std::int64_t NK = pk.NK;
  const std::int64_t grain =
      std::max<std::int64_t>(1, (std::int64_t{1} << 20) / std::max<std::int64_t>(g.S * (g.Dk + g.Dv), 1));
  parallel_range(NK, grain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t x = b; x < e; ++x) {
      const std::int64_t n = x / g.Hkv, h = x % g.Hkv;
      const BFloat16* kx = in.k + n * in.kst[0] + h * in.kst[1];
      const BFloat16* vx = in.v + n * in.vst[0] + h * in.vst[1];
      u32* kt = pk.kt + x * pk.ktsz;
      u32* vp = pk.vp + x * pk.vsz;
      std::fill(kt, kt + pk.ktsz, 0u);
      std::fill(vp, vp + pk.vsz, 0u);
      std::fill(pk.vfin + x * g.nkb, pk.vfin + (x + 1) * g.nkb, char{1});
      for (std::int64_t j = 0; j < g.S; ++j) {
        const BFloat16* kr = kx + j * in.kst[2];
        u32* kcol = kt + (j / kBk) * pk.Dk2 * kBk + j % kBk;
        for (std::int64_t dp = 0; dp < pk.Dk2; ++dp) {
          const std::int64_t d = 2 * dp;
          kcol[dp * kBk] = pair(bits(kr[d * in.kst[3]]), d + 1 < g.Dk ? bits(kr[(d + 1) * in.kst[3]]) : u16{0});
        }
        const BFloat16* vr = vx + j * in.vst[2];
        u32* vrow = vp + (j / 2) * pk.Dvp;
        const int shift = (j & 1) ? 16 : 0;
        bool fin = true;
        for (std::int64_t d = 0; d < g.Dv; ++d) {
          const u16 v = bits(vr[d * in.vst[3]]);
          fin &= finite_bits(v);
          vrow[d] |= static_cast<u32>(v) << shift;
        }
        if (!fin) pk.vfin[x * g.nkb + j / kBk] = 0;
      }
    }
  });
}

// acc (+)= P V for a V block with NaN/Inf: keys whose score is -inf (masked) are skipped.
void pv_skip(std::int64_t rows, std::int64_t cols, std::int64_t Dv, const float* pb, const float* sb, const u32* vblk,
             std::int64_t ldv, float* acc, std::int64_t ldacc, const float* alpha) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float* a = acc + r * ldacc;
    for (std::int64_t d = 0; d < Dv; ++d) a[d] *= alpha[r];
    for (std::int64_t j = 0; j < cols; ++j) {
      if (sb[r * kBk + j] == kNegInf<float>) continue;
      const float p = pb[r * kBk + j];
      const u32* vrow = vblk + (j / 2) * ldv;
      const int shift = (j & 1) ? 16 : 0;
      for (std::int64_t d = 0; d < Dv; ++d) a[d] += p * BFloat16::from_bits(static_cast<u16>(vrow[d] >> shift));
    }
  }
}

}  // namespace

bool bf16_attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse_t, const Tensor& weights) {
  // Returned weights and few-query (decode) calls keep the float32 path.
  if (!use_bf16_tiles() || a.q.dtype() != kBFloat16 || weights.defined()) return false;
  const Geo<float> g(a);
  if (g.T * g.G <= kDecodeRows) return false;
  const std::int64_t NH = g.N * g.H;
  if (NH * g.T == 0) return true;
  Bf16Inputs in{
      a.q.data_ptr<BFloat16>(), a.k.data_ptr<BFloat16>(), a.v.data_ptr<BFloat16>(), st4(a.q), st4(a.k), st4(a.v),
      as_float32(a.mask),       as_float32(a.alibi),      as_float32(a.sinks)};
  const MaskView mask(in.mask32);
  const HeadValues<float> alibi(in.alibi32), sinks(in.sinks32);
  const Dropout drop = make_dropout(a, g.S);
  const float qscale = static_cast<float>(a.scale * kLog2e), l2e = static_cast<float>(kLog2e);
  Packed pk(g);
  pack_kv(g, in, pk);
  const St4 ost = st4(out);
  BFloat16* o = out.data_ptr<BFloat16>();
  float* lse = lse_t.data_ptr<float>();
  const std::int64_t Dk2 = pk.Dk2, Dvp = pk.Dvp;

  const std::size_t scratch =
      Scratch::size_of({kBq * Dk2, kBq * kBk, kBq * kBk, kBq * kBk / 2, kBq * Dvp, kBq, kBq, kBq, kBk}, 4);
  run_items(NH * g.nqb, grain_for(kBq * g.span() * (g.Dk + g.Dv)), scratch, [&](std::int64_t it, Scratch& sc) {
    const std::int64_t nh = it / g.nqb, qb = g.nqb - 1 - it % g.nqb;
    const std::int64_t n = nh / g.H, h = nh % g.H, kvx = n * g.Hkv + h / g.G;
    const std::int64_t t0 = qb * kBq, rows = std::min(kBq, g.T - t0);
    u32* qp = sc.take<u32>(kBq * Dk2);
    float* sb = sc.take<float>(kBq * kBk);
    float* pb = sc.take<float>(kBq * kBk);
    u32* pp = sc.take<u32>(kBq * kBk / 2);
    float* acc = sc.take<float>(kBq * Dvp);
    float* m = sc.take<float>(kBq);
    float* l = sc.take<float>(kBq);
    float* alpha = sc.take<float>(kBq);
    float* mult = drop.on ? sc.take<float>(kBk) : nullptr;
    const BFloat16* qx = in.q + n * in.qst[0] + h * in.qst[1] + t0 * in.qst[2];
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t dp = 0; dp < Dk2; ++dp) {
        const std::int64_t d = 2 * dp;
        const BFloat16* qr = qx + r * in.qst[2];
        qp[r * Dk2 + dp] = pair(bits(qr[d * in.qst[3]]), d + 1 < g.Dk ? bits(qr[(d + 1) * in.qst[3]]) : u16{0});
      }
    std::fill(acc, acc + rows * Dvp, 0.0f);
    std::fill(m, m + rows, kNegInf<float>);
    std::fill(l, l + rows, 0.0f);
    const std::int64_t kbeg = g.lo(t0) / kBk * kBk, kend = std::max(g.hi(t0 + rows - 1), kbeg);
    const float slope = alibi(n, h, 0.0f) * l2e;
    const u32* kt = pk.kt + kvx * pk.ktsz;
    const u32* vp = pk.vp + kvx * pk.vsz;
    for (std::int64_t j0 = kbeg; j0 < kend; j0 += kBk) {
      const std::int64_t cols = std::min(kBk, kend - j0), cp = std::min(kBk, (cols + kL - 1) / kL * kL);
      dp_gemm<false>(rows, cp, Dk2, qp, Dk2, 1, kt + (j0 / kBk) * Dk2 * kBk, kBk, sb, kBk, nullptr, qscale);
      const bool whole = !mask.p && slope == 0.0f && g.lo(t0 + rows - 1) <= j0 && g.hi(t0) >= j0 + cols;
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t t = t0 + r;
        const RowMask<float> rm = mask.row_mask(n, h, t, j0, slope, g.S - g.T + t);
        alpha[r] = online_row(sb + r * kBk, pb + r * kBk, m[r], l[r], j0, cols, cp, whole, g.lo(t) - j0,
                              std::min(cols, g.hi(t) - j0), rm, static_cast<float*>(nullptr), drop, nh * g.T + t, mult);
      }
      const u32* vblk = vp + (j0 / 2) * Dvp;
      if (pk.vfin[kvx * g.nkb + j0 / kBk]) {
        // Probabilities past `cols` are exactly 0 (masked padding), so cp keys can be summed.
        for (std::int64_t r = 0; r < rows; ++r) round_bf16(pb + r * kBk, reinterpret_cast<u16*>(pp + r * kBk / 2), cp);
        dp_gemm<true>(rows, Dvp, cp / 2, pp, kBk / 2, 1, vblk, Dvp, acc, Dvp, alpha, 1.0f);
      } else {
        pv_skip(rows, cols, g.Dv, pb, sb, vblk, Dvp, acc, Dvp, alpha);
      }
    }
    const float sink = sinks(n, h, kNegInf<float>) * l2e;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = t0 + r;
      float inv, lse2;
      row_norm(m[r], l[r], sinks.p != nullptr, sink, inv, lse2);
      BFloat16* orow = o + n * ost[0] + h * ost[1] + t * ost[2];
      for (std::int64_t d = 0; d < g.Dv; ++d) orow[d * ost[3]] = BFloat16(acc[r * Dvp + d] * inv);
      lse[nh * g.T + t] = lse2 * static_cast<float>(kLn2);
    }
  });
  return true;
}

}  // namespace kiln::cpu
