#pragma once
// The CUDA side of core/foreach.hpp, for .cu files outside core (optim/fused.cuh): one
// grid-stride kernel per call runs rule(i, p0, p1, ...) on the tensors' device, queued on that
// device's stream (no synchronization). The rule is a KILN_HD functor passed by value.
//   kiln::cuda::foreach_cuda<float>(Axpy<float>{2.f}, std::array<Tensor, 2>{y, x}, "axpy");
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "../foreach.hpp"
#include "device_util.cuh"

namespace kiln::cuda {

/// Makes `device` current, calls launch(stream, ctx) with its stream and checks the launch
/// ("[op] CUDA error ..."); core/cuda/backend.cpp.
void launch_on(int device, const char* op, void (*launch)(cudaStream_t, const void*), const void* ctx);

template <typename T, std::size_t N>
struct ForeachPointers {
  T* p[N];
};

template <typename Rule, typename T, std::size_t N, std::size_t... K>
__global__ void foreach_kernel(Rule rule, ForeachPointers<T, N> p, std::int64_t n, std::index_sequence<K...>) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    rule(i, p.p[K]...);
}

/// Runs rule(i, p...) for i in [0, t[0].numel()) on t[0]'s GPU: the tensors are contiguous, of
/// dtype T (undefined ones pass null) and t[0]'s element count, on one device.
template <typename T, typename Rule, std::size_t N>
void foreach_cuda(const Rule& rule, const std::array<Tensor, N>& t, const char* op) {
  struct Job {
    const Rule* rule;
    ForeachPointers<T, N> p;
    std::int64_t n;
  } job{&rule, {}, t[0].numel()};
  if (job.n == 0) return;
  const std::array<T*, N> p = foreach_pointers<T>(t);
  for (std::size_t k = 0; k < N; ++k) job.p.p[k] = p[k];
  launch_on(
      t[0].device().index, op,
      [](cudaStream_t s, const void* ctx) {
        const Job& j = *static_cast<const Job*>(ctx);
        foreach_kernel<<<grid_for(j.n), kThreads, 0, s>>>(*j.rule, j.p, j.n, std::make_index_sequence<N>{});
      },
      &job);
}

}  // namespace kiln::cuda
