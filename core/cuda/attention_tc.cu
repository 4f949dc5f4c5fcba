// bfloat16 / float16 fused attention on tensor cores (contract: AttentionArgs in ../backend.hpp;
// the plan of attention.cu, whose float32 kernels are the reference):
//   forward : a block (4 warps) per (batch*head, 32 queries); for each 64-key tile S = Q K^T
//             runs as 16x16x16 warp-matrix (WMMA) products with float accumulators, stored to
//             shared memory for the row-wise online softmax (a fragment's element layout is
//             opaque, so nothing row-wise touches fragments); the probabilities are rounded to
//             the storage type, the float O in shared memory is rescaled row by row, then
//             O += P V on tensor cores. Running max / sum, O and the logsumexp stay float32.
//   backward: a block per (batch*kv head, 32 keys) looping over the group's heads and their
//             32-query tiles: S = Q K^T and dP = dO V^T on tensor cores, P and dS = P (dP -
//             delta) in float32 (rounded to the storage type for the products), then dV += P^T
//             dO, dK += dS^T Q (float, shared memory) and dQ += dS K (float atomics).
// q and k enter the products unscaled (the scale multiplies the float result), so the logits
// are those of the float32 kernels on the same 16-bit inputs up to summation order.
// A masked pair's probability / dS is -0.0. A tensor core computes 0 * NaN = NaN, so a product
// whose second operand (V, dO, Q or K) holds NaN/Inf anywhere in the block's tile runs on CUDA
// cores instead, leaving out the -0.0 pairs as attention.cu does: NaN in masked-out keys and
// values never leaks, at the price of speed only for such inputs.
// Architectures: bfloat16 WMMA needs sm_80; compiled for older ones the kernels are empty and
// attention_tc_usable() says no (the backend then converts to float32, core/reduced_float.hpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <atomic>
#include <type_traits>

#include "attention_device.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define KILN_ATTN_TC 1
#else
#define KILN_ATTN_TC 0
#endif

namespace kiln::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBq = 32, kFwdBk = 64, kBwdBk = 32;
constexpr int kMaxTcDevices = 64;  // devices whose answer attention_tc_usable caches

extern __shared__ __align__(128) unsigned char attn_tc_smem[];

template <typename T>
struct WmmaType;
template <>
struct WmmaType<BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct WmmaType<Half> {
  using type = __half;
};

// Head dims padded to whole 16-wide fragments; row strides of 16-bit tiles are a multiple of 8
// elements and of float tiles a multiple of 4 (WMMA's rule; the extra 8 / 4 spread the rows
// over the shared-memory banks). Every region is a multiple of 16 rows, so each starts 256-bit
// aligned as load_matrix_sync requires.
__host__ __device__ inline int pad16(std::int64_t d) { return static_cast<int>((d + 15) / 16 * 16); }
__host__ __device__ inline int ld16(std::int64_t d) { return pad16(d) + 8; }
__host__ __device__ inline int ld32(std::int64_t d) { return pad16(d) + 4; }

// Element (r, c) of a tile stored with layout L and leading dimension ld.
template <typename L>
__device__ __forceinline__ int at(int r, int c, int ld) {
  return std::is_same_v<L, wmma::row_major> ? r * ld + c : r + c * ld;
}

// Rows [row0, row0 + nrows) x columns [0, Dp) of a (T|S, D) slice into dst (ld): rows at or
// past `limit` and columns past D are zero. Returns whether this thread's values were finite.
template <typename T>
__device__ bool load_tile16(T* dst, int ld, const T* base, std::int64_t srow, std::int64_t scol, std::int64_t row0,
                            int nrows, std::int64_t limit, int D) {
  const int Dp = pad16(D);
  bool fin = true;
  for (int e = threadIdx.x; e < nrows * Dp; e += blockDim.x) {
    const int r = e / Dp, d = e - r * Dp;
    const std::int64_t t = row0 + r;
    const T x = t < limit && d < D ? base[t * srow + d * scol] : T(0);
    fin &= static_cast<bool>(isfinite(static_cast<float>(x)));
    dst[r * ld + d] = x;
  }
  return fin;
}

// C (M x N floats, row-major, ldc) = [C +] A B over K, with A (M x K) and B (K x N) 16-bit tiles
// of layouts LA / LB; M, N, K multiples of 16. `exact`: on CUDA cores, leaving out the pairs
// whose A value is -0.0 (masked), for B tiles holding NaN/Inf. The caller synchronizes after.
template <typename T, typename LA, typename LB>
__device__ void block_product(bool exact, float* c, int ldc, bool accumulate, const T* a, int lda, const T* b, int ldb,
                              int M, int N, int K) {
  if (exact) {
    for (int e = threadIdx.x; e < M * N; e += blockDim.x) {
      const int m = e / N, n = e - m * N;
      float s = accumulate ? c[m * ldc + n] : 0.0f;
      for (int k = 0; k < K; ++k) {
        const float x = static_cast<float>(a[at<LA>(m, k, lda)]);
        if (!is_masked_zero(x)) s = fmaf(x, static_cast<float>(b[at<LB>(k, n, ldb)]), s);
      }
      c[m * ldc + n] = s;
    }
    return;
  }
  using W = typename WmmaType<T>::type;
  const W* aw = reinterpret_cast<const W*>(a);
  const W* bw = reinterpret_cast<const W*>(b);
  const int nt = N / 16, tiles = M / 16 * nt;
  // Warp-uniform loop: each warp owns whole 16x16 output tiles.
  for (int tile = threadIdx.x / 32; tile < tiles; tile += kAttnThreads / 32) {
    const int m0 = tile / nt * 16, n0 = tile % nt * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate) wmma::load_matrix_sync(acc, c + m0 * ldc + n0, ldc, wmma::mem_row_major);
    else wmma::fill_fragment(acc, 0.0f);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, W, LB> fb;
    for (int k0 = 0; k0 < K; k0 += 16) {
      wmma::load_matrix_sync(fa, aw + at<LA>(m0, k0, lda), lda);
      wmma::load_matrix_sync(fb, bw + at<LB>(k0, n0, ldb), ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + m0 * ldc + n0, acc, ldc, wmma::mem_row_major);
  }
}

// ---------------------------------------------------------------- forward
// One 64-key tile of the online softmax for this thread's rows r0..r0+3 (columns cl + 16 c):
// reads the float scores sf, updates m / l, writes P (storage type, -0.0 where masked) and
// rescales the thread's part of the O rows by the max correction.
template <typename T>
__device__ __forceinline__ void softmax_tile(const AttnGeom& g, const float* sf, int lds, T* ps, int ldp, float* acc,
                                             int ldo, int Dvp, std::int64_t n, std::int64_t h, std::int64_t nh,
                                             std::int64_t t0, std::int64_t j0, int r0, int cl, float (&m)[4],
                                             float (&l)[4]) {
  const float qscale = static_cast<float>(g.scale * kLog2e);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t t = t0 + r0 + i;
    float s[4], tmax = neg_inf<float>();
    bool nan = false;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s[c] = masked_logit<float, T>(g, sf[(r0 + i) * lds + cl + 16 * c] * qscale, n, h, t, j0 + cl + 16 * c);
      tmax = s[c] > tmax ? s[c] : tmax;
      nan |= s[c] != s[c];
    }
    tmax = group16_max(tmax);
    nan = group16_any(nan);
    float mult[4] = {1, 1, 1, 1};
    if (g.dropout) {
      const Words4 wd = dropout_words(g, nh * g.T + t, j0, cl);
#pragma unroll
      for (int c = 0; c < 4; ++c) mult[c] = wd.w[c] < g.thresh ? static_cast<float>(g.inv_keep) : 0.0f;
    }
    const bool poisoned = m[i] != m[i];  // NaN logits earlier in the row: it stays NaN
    const float mnew = poisoned ? m[i] : (m[i] > tmax ? m[i] : tmax);
    const bool live = !poisoned && mnew != neg_inf<float>();
    float alpha = 1.0f, psum = 0.0f;
    if (live) alpha = mnew == m[i] ? 1.0f : (m[i] == neg_inf<float>() ? 0.0f : exp2f(m[i] - mnew));
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float p = 0.0f;
      if (live) {
        p = exp2f(s[c] - mnew);
        psum += p;
      }
      ps[(r0 + i) * ldp + cl + 16 * c] = T(s[c] == neg_inf<float>() ? -0.0f : p * mult[c]);
    }
    psum = group16_sum(psum);
    if (live) {
      l[i] = l[i] * alpha + psum;
      m[i] = mnew;
    } else if (!poisoned && nan) {
      m[i] = l[i] = NAN;
    }
    if (alpha != 1.0f)
      for (int col = cl; col < Dvp; col += 16) acc[(r0 + i) * ldo + col] *= alpha;
  }
}

// grid: N*H*nqb blocks (query blocks of a head from the last, the most keys under causal, down).
template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_tc_kernel(AttnGeom g, Attn4 q, Attn4 k, Attn4 v, Attn4 o, float* lse, T* w) {
#if KILN_ATTN_TC
  using RM = wmma::row_major;
  using CM = wmma::col_major;
  constexpr int Bq = kBq, Bk = kFwdBk;
  const int tid = threadIdx.x, cl = tid & 15, r0 = (tid >> 4) * 4;
  const std::int64_t nqb = (g.T + Bq - 1) / Bq;
  const std::int64_t nh = blockIdx.x / nqb, qb = nqb - 1 - blockIdx.x % nqb;
  const std::int64_t n = nh / g.H, h = nh % g.H, hkv = h / g.G, t0 = qb * Bq;
  const int Dk = static_cast<int>(g.Dk), Dv = static_cast<int>(g.Dv), Dkp = pad16(Dk), Dvp = pad16(Dv);
  const int ldq = ld16(Dk), ldkv = ld16(Dk > Dv ? Dk : Dv), ldp = ld16(Bk), lds = ld32(Bk), ldo = ld32(Dv);
  T* qs = reinterpret_cast<T*>(attn_tc_smem);
  T* kv = qs + Bq * ldq;
  T* ps = kv + Bk * ldkv;
  float* sf = reinterpret_cast<float*>(ps + Bq * ldp);
  float* acc = sf + Bq * lds;
  for (int e = tid; e < Bq * ldo; e += kAttnThreads) acc[e] = 0.0f;
  const T* qp = static_cast<const T*>(q.p) + n * q.s[0] + h * q.s[1];
  const T* kp = static_cast<const T*>(k.p) + n * k.s[0] + hkv * k.s[1];
  const T* vp = static_cast<const T*>(v.p) + n * v.s[0] + hkv * v.s[1];
  load_tile16(qs, ldq, qp, q.s[2], q.s[3], t0, Bq, g.T, Dk);

  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = neg_inf<float>();
    l[i] = 0.0f;
  }
  const std::int64_t last = (t0 + Bq < g.T ? t0 + Bq : g.T) - 1;
  const std::int64_t kend = key_limit(g, last);  // keys any row of the block sees
  for (std::int64_t j0 = 0; j0 < kend; j0 += Bk) {
    __syncthreads();  // the previous tile's P V product is done with kv and ps (first: qs, acc ready)
    load_tile16(kv, ldkv, kp, k.s[2], k.s[3], j0, Bk, g.S, Dk);
    __syncthreads();
    // Non-finite Q or K only reach their own row / column of S: no exact path needed here.
    block_product<T, RM, CM>(false, sf, lds, false, qs, ldq, kv, ldkv, Bq, Bk, Dkp);
    __syncthreads();
    softmax_tile(g, sf, lds, ps, ldp, acc, ldo, Dvp, n, h, nh, t0, j0, r0, cl, m, l);
    __syncthreads();  // ps written, O rescaled, everyone is done reading K
    bool vfin = load_tile16(kv, ldkv, vp, v.s[2], v.s[3], j0, Bk, g.S, Dv);
    vfin = __syncthreads_and(vfin);
    block_product<T, RM, RM>(!vfin, acc, ldo, true, ps, ldp, kv, ldkv, Bq, Dvp, Bk);
  }
  __syncthreads();  // O complete (written tile by tile by the warps)
  T* op = static_cast<T*>(o.p) + n * o.s[0] + h * o.s[1];
  float lse2[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t t = t0 + r0 + i;
    lse2[i] = m[i] == neg_inf<float>() ? neg_inf<float>() : m[i] + log2f(l[i]);
    if (t >= g.T) continue;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : (l[i] == 0.0f ? 0.0f : l[i]);
    for (int col = cl; col < Dv; col += 16) op[t * o.s[2] + col * o.s[3]] = T(acc[(r0 + i) * ldo + col] * inv);
    if (cl == 0) lse[nh * g.T + t] = lse2[i] * static_cast<float>(kLn2);
  }
  if (!w) return;
  // Returned weights: a second pass over the key tiles recomputes the logits (16-bit weights
  // cannot hold the raw logits the float32 kernel parks there) and stores exp2(s - lse).
  for (std::int64_t j0 = 0; j0 < g.S; j0 += Bk) {
    const bool seen = j0 < kend;  // block-uniform
    if (seen) {
      __syncthreads();
      load_tile16(kv, ldkv, kp, k.s[2], k.s[3], j0, Bk, g.S, Dk);
      __syncthreads();
      block_product<T, RM, CM>(false, sf, lds, false, qs, ldq, kv, ldkv, Bq, Bk, Dkp);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const std::int64_t t = t0 + r0 + i;
      if (t >= g.T) continue;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const std::int64_t j = j0 + cl + 16 * c;
        if (j >= g.S) continue;
        float p = 0.0f;
        if (seen && lse2[i] != neg_inf<float>()) {
          const float x = sf[(r0 + i) * lds + cl + 16 * c] * static_cast<float>(g.scale * kLog2e);
          p = exp2f(masked_logit<float, T>(g, x, n, h, t, j) - lse2[i]);
        }
        w[(nh * g.T + t) * g.S + j] = T(p);
      }
    }
  }
#endif
}

// ---------------------------------------------------------------- backward
// P and dS of one 32x32 tile for this thread's rows (columns cl, cl + 16) from the float S and
// dP; also the mask gradient. Masked pairs get -0.0, a live dS that rounds to zero +0.0.
template <typename T>
__device__ __forceinline__ void grad_tile(const AttnGeom& g, const float* sf, const float* dpf, int lds, T* pd, T* ds,
                                          int ldp, const float* lse, const float* delta, const T* gw, T* gmask,
                                          std::int64_t n, std::int64_t h, std::int64_t nh, std::int64_t t0,
                                          std::int64_t j0, int r0, int cl) {
  const float qscale = static_cast<float>(g.scale * kLog2e);
  const int wbase = static_cast<int>(j0 % 64) / 16;  // dropout word of this tile's first key
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t t = t0 + r0 + i, row = nh * g.T + t;
    float l2 = INFINITY, dl = 0.0f;
    if (t < g.T) {
      const float lv = lse[row];
      // A row with nothing to attend to: 2^(s - inf) = 0 for every key.
      l2 = lv == neg_inf<float>() ? INFINITY : lv * static_cast<float>(kLog2e);
      dl = delta[row];
    }
    Words4 wd = {};
    if (g.dropout) wd = dropout_words(g, row, j0, cl);
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int e = (r0 + i) * lds + cl + 16 * c, ep = (r0 + i) * ldp + cl + 16 * c;
      const std::int64_t j = j0 + cl + 16 * c;
      const float xs = masked_logit<float, T>(g, sf[e] * qscale, n, h, t, j);
      const bool masked = xs == neg_inf<float>();
      const float p = exp2f(xs - l2);
      float mult = 1.0f;
      if (g.dropout) mult = wd.w[wbase + c] < g.thresh ? static_cast<float>(g.inv_keep) : 0.0f;
      float dpv = dpf[e] * mult;
      if (gw && t < g.T && j < g.S) dpv += static_cast<float>(gw[row * g.S + j]);
      const float dsv = p * (dpv - dl);
      if (gmask && t < g.T && j < g.S) gmask[row * g.S + j] = T(masked ? 0.0f : dsv);
      pd[ep] = T(masked ? -0.0f : p * mult);
      const T dr(dsv);
      ds[ep] = masked ? T(-0.0f) : (static_cast<float>(dr) == 0.0f ? T(0.0f) : dr);
    }
  }
}

// grid: N*Hkv*nkb blocks.
template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_tc_kernel(AttnGeom g, Attn4 q, Attn4 k, Attn4 v, Attn4 gout, const float* lse, const float* delta,
                       const T* gw, Attn4 gk, Attn4 gv, T* gmask, float* dq_acc) {
#if KILN_ATTN_TC
  using RM = wmma::row_major;
  using CM = wmma::col_major;
  constexpr int Bq = kBq, Bk = kBwdBk;
  const int tid = threadIdx.x, cl = tid & 15, r0 = (tid >> 4) * 4;
  const std::int64_t nkb = (g.S + Bk - 1) / Bk;
  const std::int64_t x = blockIdx.x / nkb, j0 = (blockIdx.x % nkb) * Bk;
  const std::int64_t n = x / g.Hkv, hkv = x % g.Hkv;
  const int Dk = static_cast<int>(g.Dk), Dv = static_cast<int>(g.Dv), Dkp = pad16(Dk), Dvp = pad16(Dv);
  const int ldk = ld16(Dk), ldv = ld16(Dv), ldp = ld16(Bk), lds = ld32(Bk), ldfk = ld32(Dk), ldfv = ld32(Dv);
  T* ks = reinterpret_cast<T*>(attn_tc_smem);
  T* vs = ks + Bk * ldk;
  T* qs = vs + Bk * ldv;
  T* dos = qs + Bq * ldk;
  T* pd = dos + Bq * ldv;
  T* ds = pd + Bq * ldp;
  float* sf = reinterpret_cast<float*>(ds + Bq * ldp);
  float* dpf = sf + Bq * lds;
  float* dk = dpf + Bq * lds;
  float* dv = dk + Bk * ldfk;
  float* dqs = dv + Bk * ldfv;
  for (int e = tid; e < Bk * ldfk; e += kAttnThreads) dk[e] = 0.0f;
  for (int e = tid; e < Bk * ldfv; e += kAttnThreads) dv[e] = 0.0f;
  const T* kp = static_cast<const T*>(k.p) + n * k.s[0] + hkv * k.s[1];
  const T* vp = static_cast<const T*>(v.p) + n * v.s[0] + hkv * v.s[1];
  bool kfin = load_tile16(ks, ldk, kp, k.s[2], k.s[3], j0, Bk, g.S, Dk);
  load_tile16(vs, ldv, vp, v.s[2], v.s[3], j0, Bk, g.S, Dv);
  kfin = __syncthreads_and(kfin);
  const std::int64_t nqb = (g.T + Bq - 1) / Bq;
  std::int64_t qb_first = 0;  // query rows t >= j0 - (S - T) see key j0 under causal
  if (g.causal) {
    const std::int64_t t_first = j0 - (g.S - g.T);
    qb_first = t_first > 0 ? t_first / Bq : 0;
  }
  for (std::int64_t gi = 0; gi < g.G; ++gi) {
    const std::int64_t h = hkv * g.G + gi, nh = n * g.H + h;
    const T* qp = static_cast<const T*>(q.p) + n * q.s[0] + h * q.s[1];
    const T* gp = static_cast<const T*>(gout.p) + n * gout.s[0] + h * gout.s[1];
    for (std::int64_t qb = qb_first; qb < nqb; ++qb) {
      const std::int64_t t0 = qb * Bq;
      __syncthreads();  // the previous tile is done with qs, dos, pd, ds, dqs
      bool qfin = load_tile16(qs, ldk, qp, q.s[2], q.s[3], t0, Bq, g.T, Dk);
      bool dofin = load_tile16(dos, ldv, gp, gout.s[2], gout.s[3], t0, Bq, g.T, Dv);
      qfin = __syncthreads_and(qfin);
      dofin = __syncthreads_and(dofin);
      block_product<T, RM, CM>(false, sf, lds, false, qs, ldk, ks, ldk, Bq, Bk, Dkp);
      block_product<T, RM, CM>(false, dpf, lds, false, dos, ldv, vs, ldv, Bq, Bk, Dvp);
      __syncthreads();
      grad_tile(g, sf, dpf, lds, pd, ds, ldp, lse, delta, gw, gmask, n, h, nh, t0, j0, r0, cl);
      __syncthreads();
      // Rows of dV and dK are this block's keys; dQ's rows are the tile's queries.
      block_product<T, CM, RM>(!dofin, dv, ldfv, true, pd, ldp, dos, ldv, Bk, Dvp, Bq);
      block_product<T, CM, RM>(!qfin, dk, ldfk, true, ds, ldp, qs, ldk, Bk, Dkp, Bq);
      block_product<T, RM, RM>(!kfin, dqs, ldfk, false, ds, ldp, ks, ldk, Bq, Dkp, Bk);
      __syncthreads();
      for (int e = tid; e < Bq * Dk; e += kAttnThreads) {
        const int r = e / Dk, col = e - r * Dk;
        if (t0 + r < g.T) atomicAdd(dq_acc + (nh * g.T + t0 + r) * Dk + col, dqs[r * ldfk + col]);
      }
    }
  }
  __syncthreads();  // dK and dV complete
  // dK = scale * dS^T q (dQ's scale is applied by attn_bwd_dq_kernel).
  T* gkp = static_cast<T*>(gk.p) + n * gk.s[0] + hkv * gk.s[1];
  T* gvp = static_cast<T*>(gv.p) + n * gv.s[0] + hkv * gv.s[1];
  const float sc = static_cast<float>(g.scale);
  for (int e = tid; e < Bk * Dk; e += kAttnThreads) {
    const int r = e / Dk, col = e - r * Dk;
    if (j0 + r < g.S) gkp[(j0 + r) * gk.s[2] + col * gk.s[3]] = T(dk[r * ldfk + col] * sc);
  }
  for (int e = tid; e < Bk * Dv; e += kAttnThreads) {
    const int r = e / Dv, col = e - r * Dv;
    if (j0 + r < g.S) gvp[(j0 + r) * gv.s[2] + col * gv.s[3]] = T(dv[r * ldfv + col]);
  }
#endif
}

// Whether the kernels that will run on the current device were built for sm_80 or later.
bool compiled_for_tensor_cores() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, attn_fwd_tc_kernel<BFloat16>) == cudaSuccess && attr.binaryVersion >= 80;
}

template <typename Fn>
void dispatch_16(DType d, Fn&& f) {
  if (d == DType::BFloat16) f(BFloat16{});
  else if (d == DType::Float16) f(Half{});
}

}  // namespace

bool attention_tc_usable(int device) {
  // Asked once per device (cudaFuncGetAttributes answers for the current one).
  static std::atomic<int> known[kMaxTcDevices] = {};
  if (device < 0 || device >= kMaxTcDevices) return compiled_for_tensor_cores();
  int v = known[device].load(std::memory_order_relaxed);
  if (v == 0) {
    v = compiled_for_tensor_cores() ? 1 : 2;
    known[device].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

std::size_t attention_forward_tc_smem(const AttnGeom& g) {
  const std::int64_t h16 = kBq * ld16(g.Dk) + kFwdBk * ld16(g.Dk > g.Dv ? g.Dk : g.Dv) + kBq * ld16(kFwdBk);
  const std::int64_t f32 = kBq * ld32(kFwdBk) + kBq * ld32(g.Dv);
  return static_cast<std::size_t>(h16 * 2 + f32 * 4);
}

std::size_t attention_backward_tc_smem(const AttnGeom& g) {
  const std::int64_t h16 = (kBwdBk + kBq) * (ld16(g.Dk) + ld16(g.Dv)) + 2 * kBq * ld16(kBwdBk);
  const std::int64_t f32 = 2 * kBq * ld32(kBwdBk) + kBwdBk * (ld32(g.Dk) + ld32(g.Dv)) + kBq * ld32(g.Dk);
  return static_cast<std::size_t>(h16 * 2 + f32 * 4);
}

void launch_attention_forward_tc(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                                 float* lse, void* weights, DType dt, cudaStream_t s) {
  const std::int64_t blocks = g.N * g.H * ((g.T + kBq - 1) / kBq);
  if (blocks == 0) return;
  const std::size_t smem = attention_forward_tc_smem(g);
  dispatch_16(dt, [&](auto z) {
    using T = decltype(z);
    allow_smem(attn_fwd_tc_kernel<T>, smem);
    attn_fwd_tc_kernel<T>
        <<<static_cast<unsigned>(blocks), kAttnThreads, smem, s>>>(g, q, k, v, out, lse, static_cast<T*>(weights));
  });
}

void launch_attention_backward_tc(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                                  const float* lse, const Attn4& gout, const void* weights, const void* gweights,
                                  const Attn4& gq, const Attn4& gk, const Attn4& gv, void* gmask, float* delta,
                                  float* dq_acc, DType dt, cudaStream_t s) {
  dispatch_16(dt, [&](auto z) {
    using T = decltype(z);
    const std::int64_t rows = g.N * g.H * g.T;
    if (rows == 0 || g.S == 0) return zero_attention_grads<T>(g, gq, gk, gv, s);
    attn_bwd_delta_kernel<T, float>
        <<<static_cast<unsigned>((rows + 7) / 8), 256, 0, s>>>(g, out, gout, static_cast<const T*>(weights),
                                                               static_cast<const T*>(gweights), delta);
    cudaMemsetAsync(dq_acc, 0, static_cast<std::size_t>(rows * g.Dk) * sizeof(float), s);
    const std::int64_t blocks = g.N * g.Hkv * ((g.S + kBwdBk - 1) / kBwdBk);
    const std::size_t smem = attention_backward_tc_smem(g);
    allow_smem(attn_bwd_tc_kernel<T>, smem);
    attn_bwd_tc_kernel<T><<<static_cast<unsigned>(blocks), kAttnThreads, smem, s>>>(g, q, k, v, gout, lse, delta,
                                                                                    static_cast<const T*>(gweights), gk,
                                                                                    gv, static_cast<T*>(gmask), dq_acc);
    attn_bwd_dq_kernel<T, float><<<grid_for(rows * g.Dk), kThreads, 0, s>>>(g, dq_acc, gq);
  });
}

}  // namespace kiln::cuda
