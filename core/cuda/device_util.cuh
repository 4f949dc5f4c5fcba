#pragma once
// Device-side helpers shared by the .cu files: strided offsets, dtype dispatch, launch
// geometry and the Philox generator (bit-identical to core/generator.hpp).
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
  }
}
template <typename Fn>
inline void dispatch_float(DType d, Fn&& f) {
  if (d == DType::Float32) f(float{});
  else if (d == DType::Float64) f(double{});
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
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<I>(gridDim.x) * blockDim.x) {
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

// ---- Philox4x32-10, the same rounds and constants as kiln::philox4x32 ----
struct Words4 {
  std::uint32_t w[4];
};
__device__ __forceinline__ Words4 philox(std::uint64_t key, std::uint64_t counter) {
  std::uint32_t c0 = static_cast<std::uint32_t>(counter), c1 = static_cast<std::uint32_t>(counter >> 32);
  std::uint32_t c2 = 0, c3 = 0;
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const std::uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const std::uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

__device__ __forceinline__ float unit_float(std::uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
__device__ __forceinline__ double unit_double(std::uint32_t hi, std::uint32_t lo) {
  return static_cast<double>(((static_cast<std::uint64_t>(hi) << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace kiln::cuda
