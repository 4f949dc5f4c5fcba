// Fused scaled dot-product attention on CUDA, flash-attention style (contract: AttentionArgs
// in ../backend.hpp; the CPU kernels in ../cpu/attention.cpp follow the same plan).
//   forward : a block per (batch*head, 32 queries); K and V tiles of 64 keys stream through
//             shared memory with an online softmax (running max and sum per row, in
//             registers); O accumulates in shared memory; only the logsumexp is stored.
//   backward: a block per (batch*kv head, 32 keys); loops over the query heads of the group
//             and their 32-query tiles, recomputing P from the logsumexp; dK and dV
//             accumulate in shared memory, dQ in a global buffer through atomics.
// 128 threads in the row layout of attention_device.cuh. Logits are in log2 units (q pre-scaled
// by scale * log2(e)), as on the CPU. A masked logit is -inf; its probability is stored as -0.0
// so that products with non-finite V / dO / Q / K tiles can skip exactly the masked pairs
// (never 0 * NaN). bfloat16/float16 run on tensor cores in attention_tc.cu.
#include "attention_device.cuh"

namespace kiln::cuda {
namespace {

constexpr int kFwdBq = 32, kFwdBk = 64;
constexpr int kBwdBq = 32, kBwdBk = 32;

extern __shared__ __align__(16) unsigned char attn_smem[];

__host__ __device__ inline int odd_ld(std::int64_t d) { return static_cast<int>(d | 1); }

// Rows [row0, row0 + nrows) of a (T|S, D) slice into dst (ld), times `scale`; rows at or past
// `limit` are zero. Returns whether this thread's values were all finite.
template <typename F>
__device__ bool load_tile(F* dst, int ld, const F* base, std::int64_t srow, std::int64_t scol, std::int64_t row0,
                          int nrows, std::int64_t limit, int D, F scale) {
  bool fin = true;
  for (int e = threadIdx.x; e < nrows * D; e += blockDim.x) {
    const int r = e / D, d = e - r * D;
    const std::int64_t t = row0 + r;
    const F x = t < limit ? base[t * srow + d * scol] * scale : F(0);
    fin &= static_cast<bool>(isfinite(x));
    dst[r * ld + d] = x;
  }
  return fin;
}

// acc[i][c] += sum_k A(r0 + i, k) * B(k, col_c) with A(r, k) = A[r * ars + k * aks] and
// B(k, col) = B[col * bcs + k * bks]; col_c = col0 + 16 c (clamped below ncols). With `skip`,
// pairs whose A value is -0.0 (masked) are left out instead of multiplied.
template <typename F, int CN>
__device__ __forceinline__ void tile_mma(F (&acc)[4][CN], const F* A, int ars, int aks, int r0, const F* B, int bcs,
                                         int bks, int col0, int ncols, int K, bool skip) {
  int bc[CN];
#pragma unroll
  for (int c = 0; c < CN; ++c) {
    const int col = col0 + 16 * c;
    bc[c] = (col < ncols ? col : 0) * bcs;
  }
  const F* a0 = A + r0 * ars;
  if (!skip) {
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      F a[4], b[CN];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = a0[i * ars + k * aks];
#pragma unroll
      for (int c = 0; c < CN; ++c) b[c] = B[bc[c] + k * bks];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < CN; ++c) acc[i][c] = fma(a[i], b[c], acc[i][c]);
    }
  } else {
    for (int k = 0; k < K; ++k) {
      F b[CN];
#pragma unroll
      for (int c = 0; c < CN; ++c) b[c] = B[bc[c] + k * bks];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const F a = a0[i * ars + k * aks];
        if (is_masked_zero(a)) continue;
#pragma unroll
        for (int c = 0; c < CN; ++c) acc[i][c] = fma(a, b[c], acc[i][c]);
      }
    }
  }
}

// ---------------------------------------------------------------- forward
// acc (rows, D) = acc * scale + A B for this thread's rows r0..r0+3, 64 columns at a time, with
// A(r, k) = A[r * ars + k * aks] and B (K, D) of row stride ldb in shared memory (the forward's
// P V; the backward's dV += P^T dO and dK += dS^T Q). scale: per-row factors of this thread's
// rows (null: none); skip: the exact product that leaves out masked pairs.
template <typename F>
__device__ __forceinline__ void accumulate_rows(F* acc, int D, const F* A, int ars, int aks, const F* B, int ldb,
                                                int r0, int cl, int K, bool skip, const F* scale = nullptr) {
  for (int cc = 0; cc < (D + 63) / 64; ++cc) {
    F a[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = cc * 64 + cl + 16 * c;
        a[i][c] = col < D ? (scale ? acc[(r0 + i) * D + col] * scale[i] : acc[(r0 + i) * D + col]) : F(0);
      }
    tile_mma<F, 4>(a, A, ars, aks, r0, B, 1, ldb, cc * 64 + cl, D, K, skip);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = cc * 64 + cl + 16 * c;
        if (col < D) acc[(r0 + i) * D + col] = a[i][c];
      }
  }
}

// grid: N*H*nqb blocks (query blocks of a head from the last, the most keys under causal, down).
template <typename F>
__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_kernel(AttnGeom g, Attn4 q, Attn4 k, Attn4 v, Attn4 o, F* lse, F* w) {
  constexpr int Bq = kFwdBq, Bk = kFwdBk;
  const int tid = threadIdx.x, rg = tid >> 4, cl = tid & 15, r0 = rg * 4;
  const std::int64_t nqb = (g.T + Bq - 1) / Bq;
  const std::int64_t nh = blockIdx.x / nqb, qb = nqb - 1 - blockIdx.x % nqb;
  const std::int64_t n = nh / g.H, h = nh % g.H, hkv = h / g.G, t0 = qb * Bq;
  const int Dk = static_cast<int>(g.Dk), Dv = static_cast<int>(g.Dv);
  const int ldq = odd_ld(Dk), ldkv = odd_ld(Dk > Dv ? Dk : Dv), ldp = Bk + 1;
  F* qs = reinterpret_cast<F*>(attn_smem);
  F* kv = qs + Bq * ldq;
  F* ps = kv + Bk * ldkv;
  F* acc = ps + Bq * ldp;
  for (int e = tid; e < Bq * Dv; e += kAttnThreads) acc[e] = F(0);
  const F* qp = static_cast<const F*>(q.p) + n * q.s[0] + h * q.s[1];
  const F* kp = static_cast<const F*>(k.p) + n * k.s[0] + hkv * k.s[1];
  const F* vp = static_cast<const F*>(v.p) + n * v.s[0] + hkv * v.s[1];
  load_tile(qs, ldq, qp, q.s[2], q.s[3], t0, Bq, g.T, Dk, static_cast<F>(g.scale * kLog2e));
  __syncthreads();  // acc and qs are shared: the epilogue may run without a key tile

  F m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = neg_inf<F>();
    l[i] = F(0);
  }
  const std::int64_t last = (t0 + Bq < g.T ? t0 + Bq : g.T) - 1;
  const std::int64_t kend = key_limit(g, last);  // keys any row of the block sees
  for (std::int64_t j0 = 0; j0 < kend; j0 += Bk) {
    __syncthreads();  // the previous tile's P V product is done with kv and ps
    load_tile(kv, ldkv, kp, k.s[2], k.s[3], j0, Bk, g.S, Dk, F(1));
    __syncthreads();
    F s[4][4] = {};
    tile_mma<F, 4>(s, qs, ldq, 1, r0, kv, ldkv, 1, cl, Bk, Dk, false);
    F alpha[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const std::int64_t t = t0 + r0 + i;
      F tmax = neg_inf<F>();
      bool nan = false;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const std::int64_t j = j0 + cl + 16 * c;
        const F x = masked_logit(g, s[i][c], n, h, t, j);
        s[i][c] = x;
        if (w && t < g.T && j < g.S) w[(nh * g.T + t) * g.S + j] = x;
        tmax = x > tmax ? x : tmax;
        nan |= x != x;
      }
      tmax = group16_max(tmax);
      nan = group16_any(nan);
      alpha[i] = F(1);
      F mult[4] = {F(1), F(1), F(1), F(1)};
      if (g.dropout) {
        const Words4 wd = dropout_words(g, nh * g.T + t, j0, cl);
#pragma unroll
        for (int c = 0; c < 4; ++c) mult[c] = wd.w[c] < g.thresh ? static_cast<F>(g.inv_keep) : F(0);
      }
      const bool poisoned = m[i] != m[i];  // NaN logits earlier in the row: it stays NaN
      const F mnew = poisoned ? m[i] : (m[i] > tmax ? m[i] : tmax);
      const bool live = !poisoned && mnew != neg_inf<F>();
      if (live) alpha[i] = mnew == m[i] ? F(1) : (m[i] == neg_inf<F>() ? F(0) : exp2(m[i] - mnew));
      F psum = 0;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const F x = s[i][c];
        F p = F(0);
        if (live) {
          p = exp2(x - mnew);
          psum += p;
        }
        ps[(r0 + i) * ldp + cl + 16 * c] = x == neg_inf<F>() ? -F(0) : p * mult[c];
      }
      psum = group16_sum(psum);
      if (live) {
        l[i] = l[i] * alpha[i] + psum;
        m[i] = mnew;
      } else if (!poisoned && nan) {
        m[i] = l[i] = static_cast<F>(NAN);
      }
    }
    __syncthreads();  // ps written; everyone is done reading K
    bool vfin = load_tile(kv, ldkv, vp, v.s[2], v.s[3], j0, Bk, g.S, Dv, F(1));
    vfin = __syncthreads_and(vfin);
    accumulate_rows<F>(acc, Dv, ps, ldp, 1, kv, ldkv, r0, cl, Bk, !vfin, alpha);
  }
  // Epilogue: each thread reads back only the acc / weight entries it wrote.
  F* op = static_cast<F*>(o.p) + n * o.s[0] + h * o.s[1];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t t = t0 + r0 + i;
    if (t >= g.T) continue;
    const F inv = l[i] > F(0) ? F(1) / l[i] : (l[i] == F(0) ? F(0) : l[i]);
    for (int col = cl; col < Dv; col += 16) op[t * o.s[2] + col * o.s[3]] = acc[(r0 + i) * Dv + col] * inv;
    const F lse2 = m[i] == neg_inf<F>() ? neg_inf<F>() : m[i] + log2(l[i]);
    if (cl == 0) lse[nh * g.T + t] = lse2 * static_cast<F>(kLn2);
    if (w) {
      F* wr = w + (nh * g.T + t) * g.S;
      for (std::int64_t j = cl; j < g.S; j += 16)
        wr[j] = (lse2 == neg_inf<F>() || j >= kend) ? F(0) : exp2(wr[j] - lse2);
    }
  }
}

// ---------------------------------------------------------------- backward
template <typename F>
__device__ __forceinline__ void atomic_add_f(F* p, F v) {
  atomicAdd(p, v);
}

// grid: N*Hkv*nkb blocks.
template <typename F>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_kernel(AttnGeom g, Attn4 q, Attn4 k, Attn4 v, Attn4 gout, const F* lse, const F* delta, const F* gw,
                    Attn4 gk, Attn4 gv, F* gmask, F* dq_acc) {
  constexpr int Bq = kBwdBq, Bk = kBwdBk;
  const int tid = threadIdx.x, rg = tid >> 4, cl = tid & 15, r0 = rg * 4;
  const std::int64_t nkb = (g.S + Bk - 1) / Bk;
  const std::int64_t x = blockIdx.x / nkb, j0 = (blockIdx.x % nkb) * Bk;
  const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
  const int Dk = static_cast<int>(g.Dk), Dv = static_cast<int>(g.Dv);
  const int ldk = odd_ld(Dk), ldv = odd_ld(Dv), ldp = Bk + 1;
  F* ks = reinterpret_cast<F*>(attn_smem);
  F* vs = ks + Bk * ldk;
  F* qs = vs + Bk * ldv;
  F* dos = qs + Bq * ldk;
  F* pd = dos + Bq * ldv;
  F* ds = pd + Bq * ldp;
  F* dk = ds + Bq * ldp;
  F* dv = dk + Bk * Dk;
  for (int e = tid; e < Bk * Dk; e += kAttnThreads) dk[e] = F(0);
  for (int e = tid; e < Bk * Dv; e += kAttnThreads) dv[e] = F(0);
  const F* kp = static_cast<const F*>(k.p) + n * k.s[0] + hkv * k.s[1];
  const F* vp = static_cast<const F*>(v.p) + n * v.s[0] + hkv * v.s[1];
  bool kfin = load_tile(ks, ldk, kp, k.s[2], k.s[3], j0, Bk, g.S, Dk, F(1));
  load_tile(vs, ldv, vp, v.s[2], v.s[3], j0, Bk, g.S, Dv, F(1));
  kfin = __syncthreads_and(kfin);
  const F qscale = static_cast<F>(g.scale * kLog2e);
  const std::int64_t nqb = (g.T + Bq - 1) / Bq;
  // Query rows t >= j0 - (S - T) see key j0 under causal.
  std::int64_t qb_first = 0;
  if (g.causal) {
    const std::int64_t t_first = j0 - (g.S - g.T);
    qb_first = t_first > 0 ? t_first / Bq : 0;
  }
  const int wbase = static_cast<int>(j0 % 64) / 16;  // dropout word of this tile's first key
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    const F* qp = static_cast<const F*>(q.p) + n * q.s[0] + h * q.s[1];
    const F* gp = static_cast<const F*>(gout.p) + n * gout.s[0] + h * gout.s[1];
    for (std::int64_t qb = qb_first; qb < nqb; ++qb) {
      const std::int64_t t0 = qb * Bq;
      __syncthreads();  // the previous tile is done with qs, dos, pd, ds
      bool qfin = load_tile(qs, ldk, qp, q.s[2], q.s[3], t0, Bq, g.T, Dk, qscale);
      bool dofin = load_tile(dos, ldv, gp, gout.s[2], gout.s[3], t0, Bq, g.T, Dv, F(1));
      qfin = __syncthreads_and(qfin);
      dofin = __syncthreads_and(dofin);
      F s[4][2] = {}, dp[4][2] = {};
      tile_mma<F, 2>(s, qs, ldk, 1, r0, ks, ldk, 1, cl, Bk, Dk, false);
      tile_mma<F, 2>(dp, dos, ldv, 1, r0, vs, ldv, 1, cl, Bk, Dv, false);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const std::int64_t t = t0 + r0 + i, row = nh * g.T + t;
        F l2 = static_cast<F>(INFINITY), dl = F(0);
        if (t < g.T) {
          const F lv = lse[row];
          // A row with nothing to attend to: 2^(s - inf) = 0 for every key.
          l2 = lv == neg_inf<F>() ? static_cast<F>(INFINITY) : lv * static_cast<F>(kLog2e);
          dl = delta[row];
        }
        Words4 wd = {};
        if (g.dropout) wd = dropout_words(g, row, j0, cl);
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const std::int64_t j = j0 + cl + 16 * c;
          const F xs = masked_logit(g, s[i][c], n, h, t, j);
          const bool masked = xs == neg_inf<F>();
          const F p = exp2(xs - l2);
          F mult = F(1);
          if (g.dropout) mult = wd.w[wbase + c] < g.thresh ? static_cast<F>(g.inv_keep) : F(0);
          F dpv = dp[i][c] * mult;
          if (gw && t < g.T && j < g.S) dpv += gw[row * g.S + j];
          // dS = P * (dP - delta); + 0 turns a -0 result into +0 (-0 marks masked pairs).
          const F dsv = masked ? -F(0) : p * (dpv - dl) + F(0);
          if (gmask && t < g.T && j < g.S) gmask[row * g.S + j] = masked ? F(0) : dsv;
          pd[(r0 + i) * ldp + cl + 16 * c] = masked ? -F(0) : p * mult;
          ds[(r0 + i) * ldp + cl + 16 * c] = dsv;
        }
      }
      __syncthreads();
      // dV += Pd^T dO and dK += dS^T Qs: rows are this block's keys.
      accumulate_rows<F>(dv, Dv, pd, 1, ldp, dos, ldv, r0, cl, Bq, !dofin);
      accumulate_rows<F>(dk, Dk, ds, 1, ldp, qs, ldk, r0, cl, Bq, !qfin);
      // dQ (unscaled) += dS K: rows are the tile's queries.
      for (int cc = 0; cc < (Dk + 63) / 64; ++cc) {
        F a[4][4] = {};
        tile_mma<F, 4>(a, ds, ldp, 1, r0, ks, 1, ldk, cc * 64 + cl, Dk, Bk, !kfin);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const std::int64_t t = t0 + r0 + i;
          if (t >= g.T) continue;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int col = cc * 64 + cl + 16 * c;
            if (col < Dk) atomic_add_f(dq_acc + (nh * g.T + t) * Dk + col, a[i][c]);
          }
        }
      }
    }
  }
  // dK = scale * dS^T q = ln 2 * dS^T qs. Each thread writes the entries it accumulated.
  F* gkp = static_cast<F*>(gk.p) + n * gk.s[0] + hkv * gk.s[1];
  F* gvp = static_cast<F*>(gv.p) + n * gv.s[0] + hkv * gv.s[1];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t j = j0 + r0 + i;
    if (j >= g.S) continue;
    for (int col = cl; col < Dk; col += 16)
      gkp[j * gk.s[2] + col * gk.s[3]] = dk[(r0 + i) * Dk + col] * static_cast<F>(kLn2);
    for (int col = cl; col < Dv; col += 16) gvp[j * gv.s[2] + col * gv.s[3]] = dv[(r0 + i) * Dv + col];
  }
}

// One thread per (row, 64-key group, counter): 4 multipliers.
template <typename F>
__global__ void attn_dropout_mask_kernel(AttnGeom g, F* out) {
  const std::int64_t groups = (g.S + 63) / 64, total = g.N * g.H * g.T * groups * 16;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(e % 16);
    const std::int64_t grp = (e / 16) % groups, row = e / (16 * groups);
    Words4 wd = {};
    if (g.dropout) wd = dropout_words(g, row, grp * 64, lane);
    for (int c = 0; c < 4; ++c) {
      const std::int64_t j = grp * 64 + lane + 16 * c;
      if (j >= g.S) continue;
      out[row * g.S + j] = !g.dropout ? F(1) : (wd.w[c] < g.thresh ? static_cast<F>(g.inv_keep) : F(0));
    }
  }
}

}  // namespace

std::size_t attention_forward_smem(const AttnGeom& g, DType dt) {
  const std::int64_t ldq = odd_ld(g.Dk), ldkv = odd_ld(g.Dk > g.Dv ? g.Dk : g.Dv);
  const std::int64_t n = kFwdBq * ldq + kFwdBk * ldkv + kFwdBq * (kFwdBk + 1) + kFwdBq * g.Dv;
  return static_cast<std::size_t>(n) * itemsize(dt);
}

std::size_t attention_backward_smem(const AttnGeom& g, DType dt) {
  const std::int64_t ldk = odd_ld(g.Dk), ldv = odd_ld(g.Dv);
  const std::int64_t n =
      kBwdBk * (ldk + ldv) + kBwdBq * (ldk + ldv) + 2 * kBwdBq * (kBwdBk + 1) + kBwdBk * (g.Dk + g.Dv);
  return static_cast<std::size_t>(n) * itemsize(dt);
}

void launch_attention_forward(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                              void* lse, void* weights, DType dt, cudaStream_t s) {
  const std::int64_t nqb = (g.T + kFwdBq - 1) / kFwdBq, blocks = g.N * g.H * nqb;
  if (blocks == 0) return;
  const std::size_t smem = attention_forward_smem(g, dt);
  dispatch_float(dt, [&](auto z) {
    using F = decltype(z);
    allow_smem(attn_fwd_kernel<F>, smem);
    attn_fwd_kernel<F><<<static_cast<unsigned>(blocks), kAttnThreads, smem, s>>>(g, q, k, v, out, static_cast<F*>(lse),
                                                                                 static_cast<F*>(weights));
  });
}

void launch_attention_backward(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                               const void* lse, const Attn4& gout, const void* weights, const void* gweights,
                               const Attn4& gq, const Attn4& gk, const Attn4& gv, void* gmask, void* delta,
                               void* dq_acc, DType dt, cudaStream_t s) {
  dispatch_float(dt, [&](auto z) {
    using F = decltype(z);
    const std::int64_t rows = g.N * g.H * g.T;
    if (rows == 0 || g.S == 0) return zero_attention_grads<F>(g, gq, gk, gv, s);
    attn_bwd_delta_kernel<F, F>
        <<<static_cast<unsigned>((rows + 7) / 8), 256, 0, s>>>(g, out, gout, static_cast<const F*>(weights),
                                                               static_cast<const F*>(gweights), static_cast<F*>(delta));
    cudaMemsetAsync(dq_acc, 0, static_cast<std::size_t>(rows * g.Dk) * sizeof(F), s);
    const std::int64_t blocks = g.N * g.Hkv * ((g.S + kBwdBk - 1) / kBwdBk);
    const std::size_t smem = attention_backward_smem(g, dt);
    allow_smem(attn_bwd_kernel<F>, smem);
    attn_bwd_kernel<F>
        <<<static_cast<unsigned>(blocks), kAttnThreads, smem, s>>>(g, q, k, v, gout, static_cast<const F*>(lse),
                                                                   static_cast<const F*>(delta),
                                                                   static_cast<const F*>(gweights), gk, gv,
                                                                   static_cast<F*>(gmask), static_cast<F*>(dq_acc));
    attn_bwd_dq_kernel<F, F><<<grid_for(rows * g.Dk), kThreads, 0, s>>>(g, static_cast<const F*>(dq_acc), gq);
  });
}

void launch_attention_dropout_mask(const AttnGeom& g, void* out, DType dt, cudaStream_t s) {
  const std::int64_t total = g.N * g.H * g.T * ((g.S + 63) / 64) * 16;
  if (total == 0) return;
  dispatch_float(dt, [&](auto z) {
    using F = decltype(z);
    attn_dropout_mask_kernel<F><<<grid_for(total), kThreads, 0, s>>>(g, static_cast<F*>(out));
  });
}

}  // namespace kiln::cuda
