#pragma once
// Device-side helpers shared by the .cu files: strided offsets, dtype dispatch, launch
// geometry and Philox words for the attention kernels.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.hpp"

namespace kiln::cuda {

inline constexpr int kThreads = 256;

/// Blocks for a grid-stride loop over n items (capped: the loop covers the rest).
inline unsigned grid_for(std::int64_t n, int threads = kThreads) {
  std::int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 8) b = 65535LL * 8;
  return static_cast<unsigned>(b);
}

/// Calls f(T{}) with the C++ type of dtype d (host code).
template <typename Fn>
inline void dispatch(DType d, Fn&& f) {
  switch (d) {
    case DType::Bool: f(bool{}); break;
    case DType::Int64: f(std::int64_t{}); break;
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(BFloat16{}); break;
    case DType::Float16: f(Half{}); break;
  }
}
/// float32 and float64 only (kernels without a 16-bit instantiation).
template <typename Fn>
inline void dispatch_float(DType d, Fn&& f) {
  if (d == DType::Float32) f(float{});
  else if (d == DType::Float64) f(double{});
}
/// Every floating dtype: float32, float64, bfloat16, float16 (which compute in float).
template <typename Fn>
inline void dispatch_floating(DType d, Fn&& f) {
  switch (d) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(BFloat16{}); break;
    case DType::Float16: f(Half{}); break;
    default: break;
  }
}

/// Element offsets of flat index i for every operand (index type I: 32 or 64 bits).
template <int N, typename I>
__device__ __forceinline__ void iter_offsets(const Iter<N>& it, I i, I (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d == it.ndim) break;
    const I size = static_cast<I>(it.sizes[d]);
    const I q = i / size, r = i - q * size;
    i = q;
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += r * static_cast<I>(it.strides[k][d]);
  }
}

/// Runs f(offsets) for every element of the iteration (grid-stride loop).
template <int N, typename I, typename F>
__device__ __forceinline__ void iter_loop(const Iter<N>& it, F& f) {
  const I n = static_cast<I>(it.numel);
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[N];
    if (it.contiguous) {
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = i;
    } else {
      iter_offsets<N, I>(it, i, off);
    }
    f(off);
  }
}

template <typename T>
__device__ __forceinline__ bool is_nan(T x) {
  return x != x;
}

// ---- Philox4x32-10 (kiln::philox4x32, shared with the CPU backend) as a plain struct ----
struct Words4 {
  std::uint32_t w[4];
};
__device__ __forceinline__ Words4 philox(std::uint64_t key, std::uint64_t counter) {
  const auto r = philox4x32(key, counter);
  return {{r[0], r[1], r[2], r[3]}};
}

}  // namespace kiln::cuda
