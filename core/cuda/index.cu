// Index kernels (index_select / index_add on rows of a dim, gather / scatter_add elementwise),
// random fills and dropout from Philox (the CPU backend's numbers, bit for bit where the math allows) and
// the int64 matmul that cuBLAS does not provide.
#include <cmath>

#include "../math/elementwise.hpp"
#include "../math/random.hpp"
#include "cuda_backend.hpp"
#include "device_util.cuh"

namespace kiln::cuda {
namespace {

Tensor contiguous_on(CudaBackend& be, const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  be.copy(c, t);
  return c;
}

// Elements before and after `dim` of shape s.
void split3(const Shape& s, std::int64_t dim, std::int64_t& outer, std::int64_t& inner) {
  outer = 1;
  inner = 1;
  for (std::int64_t d = 0; d < dim; ++d) outer *= s[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < s.size(); ++d) inner *= s[d];
}

// A view of t with `shape` and t's strides, except 0 along `dim` (the index supplies it).
Tensor along_dim_view(const Tensor& t, const Shape& shape, std::int64_t dim) {
  Strides st = t.strides();
  st[static_cast<std::size_t>(dim)] = 0;
  return Tensor::make_view(t, shape, st, t.offset());
}

// Accumulation into memory other threads may also target. bool "adds" are logical or.
template <typename T>
__device__ __forceinline__ void atomic_accumulate(T* p, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v) return;
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    auto* word = reinterpret_cast<unsigned int*>(addr & ~std::uintptr_t{3});
    atomicOr(word, 1u << (8 * (addr & 3)));
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));  // two's complement
  } else if constexpr (is_reduced_float_v<T>) {
    // A compare-and-swap on the aligned 32-bit word holding the 16 bits; the sum is taken in
    // float and rounded once per addition (every architecture, unlike the native 16-bit atomics).
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    auto* word = reinterpret_cast<unsigned int*>(addr & ~std::uintptr_t{3});
    const unsigned shift = (addr & 2) ? 16u : 0u;
    unsigned int old = *word, assumed;
    do {
      assumed = old;
      const T cur = T::from_bits(static_cast<std::uint16_t>(assumed >> shift));
      const T sum = T(static_cast<float>(cur) + static_cast<float>(v));
      const unsigned int next = (assumed & ~(0xffffu << shift)) | (static_cast<unsigned int>(sum.bits()) << shift);
      old = atomicCAS(word, assumed, next);
    } while (old != assumed);
  } else {
    atomicAdd(p, v);
  }
}

// out (outer, L, inner) from x (outer, D, inner).
template <typename T>
__global__ void index_select_kernel(const T* x, const std::int64_t* index, T* out, std::int64_t outer, std::int64_t D,
                                    std::int64_t L, std::int64_t inner) {
  const std::int64_t n = outer * L * inner;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < n;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = w % inner, ol = w / inner, l = ol % L, o = ol / L;
    out[w] = x[(o * D + index[l]) * inner + i];
  }
}

template <typename T>
__global__ void index_add_kernel(T* out, const std::int64_t* index, const T* src, std::int64_t outer, std::int64_t D,
                                 std::int64_t L, std::int64_t inner) {
  const std::int64_t n = outer * L * inner;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < n;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = w % inner, ol = w / inner, l = ol % L, o = ol / L;
    atomic_accumulate(out + (o * D + index[l]) * inner + i, src[w]);
  }
}

template <typename T>
__global__ void gather_kernel(Iter<3> it, std::int64_t xs) {
  T* o = static_cast<T*>(it.data[0]);
  const std::int64_t* idx = static_cast<const std::int64_t*>(it.data[1]);
  const T* x = static_cast<const T*>(it.data[2]);
  auto f = [&](const std::int64_t(&off)[3]) { o[off[0]] = x[off[2] + idx[off[1]] * xs]; };
  iter_loop<3, std::int64_t>(it, f);
}

template <typename T>
__global__ void scatter_add_kernel(Iter<3> it, std::int64_t os) {
  T* o = static_cast<T*>(it.data[0]);
  const std::int64_t* idx = static_cast<const std::int64_t*>(it.data[1]);
  const T* src = static_cast<const T*>(it.data[2]);
  auto f = [&](const std::int64_t(&off)[3]) { atomic_accumulate(o + off[0] + idx[off[1]] * os, src[off[2]]); };
  iter_loop<3, std::int64_t>(it, f);
}

// One Philox block per thread (core/math/random.hpp: the CPU backend's numbers).
template <typename T>
__global__ void random_kernel(T* out, std::int64_t n, RandomSpec spec) {
  const std::int64_t blocks = math::random_blocks<T>(n);
  for (std::int64_t blk = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; blk < blocks;
       blk += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    math::random_block<T>(spec, blk, out, n);
}

// Dropout in one pass, one Philox block per thread: random_kernel's mask, then out = x * mask
// rounded as binary Mul rounds (in compute_t).
template <typename T>
__global__ void dropout_kernel(const T* x, T* mask, T* out, std::int64_t n, RandomSpec spec) {
  using C = math::compute_t<T>;
  constexpr std::int64_t per = math::kRandomPerBlock<T>;
  const std::int64_t blocks = math::random_blocks<T>(n);
  for (std::int64_t blk = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; blk < blocks;
       blk += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    math::random_block<T>(spec, blk, mask, n);
    for (std::int64_t i = blk * per; i < blk * per + per && i < n; ++i)
      out[i] = static_cast<T>(static_cast<C>(x[i]) * static_cast<C>(mask[i]));
  }
}

// (B, M, N) = (B, M, K) @ (B, K, N), one output per thread; strides in elements.
__global__ void matmul_int64_kernel(const std::int64_t* a, const std::int64_t* c, std::int64_t* out, std::int64_t B,
                                    std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t sa0, std::int64_t sa1,
                                    std::int64_t sa2, std::int64_t sc0, std::int64_t sc1, std::int64_t sc2) {
  const std::int64_t total = B * M * N;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < total;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = w % N, i = (w / N) % M, b = w / (M * N);
    const std::int64_t* ar = a + b * sa0 + i * sa1;
    const std::int64_t* cc = c + b * sc0 + j * sc2;
    std::int64_t acc = 0;
    for (std::int64_t k = 0; k < K; ++k) acc += ar[k * sa2] * cc[k * sc1];
    out[w] = acc;
  }
}

}  // namespace

void CudaBackend::index_select(const Tensor& x_in, std::int64_t dim, const Tensor& index_in, const Tensor& out) {
  DeviceGuard guard(ctx_.index);
  Tensor x = contiguous_on(*this, x_in), index = contiguous_on(*this, index_in);
  std::int64_t outer, inner;
  split3(x.shape(), dim, outer, inner);
  const std::int64_t D = x.size(dim), L = index.numel(), n = outer * L * inner;
  if (n == 0) return;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    index_select_kernel<T><<<grid_for(n), kThreads, 0, ctx_.stream>>>(ptr<T>(x), ptr<std::int64_t>(index), ptr<T>(out),
                                                                      outer, D, L, inner);
  });
  check_launch("index_select");
}

void CudaBackend::index_add(const Tensor& out, std::int64_t dim, const Tensor& index_in, const Tensor& src_in) {
  DeviceGuard guard(ctx_.index);
  Tensor src = contiguous_on(*this, src_in), index = contiguous_on(*this, index_in);
  std::int64_t outer, inner;
  split3(out.shape(), dim, outer, inner);
  const std::int64_t D = out.size(dim), L = index.numel(), n = outer * L * inner;
  if (n == 0) return;
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    index_add_kernel<T><<<grid_for(n), kThreads, 0, ctx_.stream>>>(ptr<T>(out), ptr<std::int64_t>(index), ptr<T>(src),
                                                                   outer, D, L, inner);
  });
  check_launch("index_add");
}

void CudaBackend::gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) {
  DeviceGuard guard(ctx_.index);
  Tensor xv = along_dim_view(x, index.shape(), dim);
  const Iter<3> it = make_iter<3>(index.shape(), {&out, &index, &xv}, "gather");
  if (it.numel == 0) return;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    gather_kernel<T><<<grid_for(it.numel), kThreads, 0, ctx_.stream>>>(it, x.stride(dim));
  });
  check_launch("gather");
}

void CudaBackend::scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) {
  DeviceGuard guard(ctx_.index);
  Tensor ov = along_dim_view(out, index.shape(), dim);
  const Iter<3> it = make_iter<3>(index.shape(), {&ov, &index, &src}, "scatter_add");
  if (it.numel == 0) return;
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    scatter_add_kernel<T><<<grid_for(it.numel), kThreads, 0, ctx_.stream>>>(it, out.stride(dim));
  });
  check_launch("scatter_add");
}

void CudaBackend::random(const Tensor& out, const RandomSpec& spec) {
  DeviceGuard guard(ctx_.index);
  const std::int64_t n = out.numel();
  if (n == 0) return;
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    random_kernel<T><<<grid_for((n + 1) / 2), kThreads, 0, ctx_.stream>>>(ptr<T>(out), n, spec);
  });
  check_launch("random");
}

void CudaBackend::dropout(const Tensor& x, const Tensor& mask, const Tensor& out, const RandomSpec& spec) {
  DeviceGuard guard(ctx_.index);
  const std::int64_t n = out.numel();
  if (n == 0) return;
  dispatch_floating(out.dtype(), [&](auto z) {
    using T = decltype(z);
    dropout_kernel<T>
        <<<grid_for((n + 1) / 2), kThreads, 0, ctx_.stream>>>(ptr<T>(x), ptr<T>(mask), ptr<T>(out), n, spec);
  });
  check_launch("dropout");
}

void launch_matmul_int64(const std::int64_t* a, const std::int64_t* c, std::int64_t* out, std::int64_t B,
                         std::int64_t M, std::int64_t N, std::int64_t K, const std::int64_t* sa, const std::int64_t* sc,
                         cudaStream_t s) {
  const std::int64_t total = B * M * N;
  if (total == 0) return;
  matmul_int64_kernel<<<grid_for(total), kThreads, 0, s>>>(a, c, out, B, M, N, K, sa[0], sa[1], sa[2], sc[0], sc[1],
                                                           sc[2]);
}

}  // namespace kiln::cuda
