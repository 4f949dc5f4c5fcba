#pragma once
// What both fused attention files share (attention.cu: float32/float64 on CUDA cores;
// attention_tc.cu: bfloat16/float16 on tensor cores): causal limits, masks, the dropout words,
// 16-lane row reductions and the small kernels around the backward. Every row-wise pass of
// both uses one thread layout: 128 threads, thread t owns rows 4*(t/16) .. +3 of a tile and
// columns t%16 + 16*c, which is also how the dropout bits are laid out (16 Philox counters x 4
// words per 64 keys), so both regenerate the same keep decisions as the CPU kernels.
// Logits are in log2 units; a masked logit is -inf and its probability is stored as -0.0.
#include <cmath>

#include "device_util.cuh"

namespace kiln::cuda {
namespace {

constexpr int kAttnThreads = 128;
constexpr double kLog2e = 1.4426950408889634074, kLn2 = 0.69314718055994530942;

template <typename F>
__device__ __forceinline__ F neg_inf() {
  return -static_cast<F>(INFINITY);
}
template <typename F>
__device__ __forceinline__ bool is_masked_zero(F x) {  // -0.0: a masked pair
  return x == F(0) && signbit(x);
}

__device__ __forceinline__ std::int64_t key_limit(const AttnGeom& g, std::int64_t t) {
  if (!g.causal) return g.S;
  const std::int64_t l = g.S - g.T + t + 1;
  return l < 0 ? 0 : (l > g.S ? g.S : l);
}

// The logit x of (t, j) after causal / sequence limits and the user mask (log2 units); M is
// the float mask's storage type (the attention dtype).
template <typename F, typename M = F>
__device__ __forceinline__ F masked_logit(const AttnGeom& g, F x, std::int64_t n, std::int64_t h, std::int64_t t,
                                          std::int64_t j) {
  if (j >= key_limit(g, t) || t >= g.T) return neg_inf<F>();
  if (g.mask_kind != 0) {
    const std::int64_t off = n * g.mask.s[0] + h * g.mask.s[1] + t * g.mask.s[2] + j * g.mask.s[3];
    if (g.mask_kind == 1) {
      if (!static_cast<const bool*>(g.mask.p)[off]) return neg_inf<F>();
    } else {
      const F mv = static_cast<F>(static_cast<const M*>(g.mask.p)[off]);
      // A -inf entry masks even a NaN logit (from NaN in a masked-out key).
      if (mv == neg_inf<F>()) return neg_inf<F>();
      x += mv * static_cast<F>(kLog2e);
    }
  }
  return x;
}

// The 4 dropout words of counter `lane16` of the 64-key group holding key j0, row `row`.
__device__ __forceinline__ Words4 dropout_words(const AttnGeom& g, std::int64_t row, std::int64_t j0, int lane16) {
  const std::uint64_t ctr =
      g.offset + static_cast<std::uint64_t>(row) * g.per_row + static_cast<std::uint64_t>(j0 / 64 * 16 + lane16);
  return philox(g.seed, ctr);
}

template <typename F>
__device__ __forceinline__ F group16_max(F v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) {
    const F w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;  // NaN-ignoring, like the CPU row max
  }
  return v;
}
template <typename F>
__device__ __forceinline__ F group16_sum(F v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ bool group16_any(bool v) {
  int x = v;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x |= __shfl_xor_sync(0xffffffffu, x, o);
  return x != 0;
}

// delta[row] = rowsum(dO * O) (+ rowsum(W * dW) with returned weights) in F, from operands of
// storage type T; a warp per row.
template <typename T, typename F>
__global__ void attn_bwd_delta_kernel(AttnGeom g, Attn4 o, Attn4 gout, const T* w, const T* gw, F* delta) {
  const std::int64_t rows = g.N * g.H * g.T;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const std::int64_t nh = row / g.T, t = row % g.T, n = nh / g.H, h = nh % g.H;
  const T* orow = static_cast<const T*>(o.p) + n * o.s[0] + h * o.s[1] + t * o.s[2];
  const T* grow = static_cast<const T*>(gout.p) + n * gout.s[0] + h * gout.s[1] + t * gout.s[2];
  F d = 0;
  for (std::int64_t c = lane; c < g.Dv; c += 32)
    d += static_cast<F>(orow[c * o.s[3]]) * static_cast<F>(grow[c * gout.s[3]]);
  if (w)
    for (std::int64_t j = lane; j < g.S; j += 32)
      d += static_cast<F>(w[row * g.S + j]) * static_cast<F>(gw[row * g.S + j]);
  for (int off = 16; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
  if (lane == 0) delta[row] = d;
}

// gq = scale * dq_acc (accumulator type A), written through gq's strides in T.
template <typename T, typename A>
__global__ void attn_bwd_dq_kernel(AttnGeom g, const A* dq_acc, Attn4 gq) {
  const std::int64_t total = g.N * g.H * g.T * g.Dk;
  const A sc = static_cast<A>(g.scale);
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = e % g.Dk, row = e / g.Dk, t = row % g.T, nh = row / g.T;
    const std::int64_t n = nh / g.H, h = nh % g.H;
    static_cast<T*>(gq.p)[n * gq.s[0] + h * gq.s[1] + t * gq.s[2] + d * gq.s[3]] = static_cast<T>(dq_acc[e] * sc);
  }
}

// Zeros an (a, b, c, d) strided operand.
template <typename T>
__global__ void zero4_kernel(Attn4 x, std::int64_t A, std::int64_t B, std::int64_t C, std::int64_t D) {
  const std::int64_t total = A * B * C * D;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = e % D, c = (e / D) % C, b = (e / (D * C)) % B, a = e / (D * C * B);
    static_cast<T*>(x.p)[a * x.s[0] + b * x.s[1] + c * x.s[2] + d * x.s[3]] = T(0);
  }
}

// With no query row or no key every gradient is 0.
template <typename T>
void zero_attention_grads(const AttnGeom& g, const Attn4& gq, const Attn4& gk, const Attn4& gv, cudaStream_t s) {
  const std::int64_t nq = g.N * g.H * g.T * g.Dk, nk = g.N * g.Hkv * g.S * g.Dk, nv = g.N * g.Hkv * g.S * g.Dv;
  if (nq) zero4_kernel<T><<<grid_for(nq), kThreads, 0, s>>>(gq, g.N, g.H, g.T, g.Dk);
  if (nk) zero4_kernel<T><<<grid_for(nk), kThreads, 0, s>>>(gk, g.N, g.Hkv, g.S, g.Dk);
  if (nv) zero4_kernel<T><<<grid_for(nv), kThreads, 0, s>>>(gv, g.N, g.Hkv, g.S, g.Dv);
}

template <typename Kernel>
void allow_smem(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace
}  // namespace kiln::cuda
