#pragma once
/// Fused elementwise loops for code outside core (optimizers, see optim/fused.hpp): a KILN_HD
/// functor `rule` is called as rule(i, p0, p1, ...) for every element i of N contiguous tensors
/// of one dtype, element count and device, where pk is tensor k's data as T* (null for an
/// undefined tensor). The functor carries the per-step scalars; core runs the loop and knows
/// nothing of what it computes. One pass over memory, no allocation, no host synchronization.
///
///   template <typename T>
///   struct Axpy {  // y += a * x
///     T a;
///     KILN_HD void operator()(std::int64_t i, T* y, const T* x) const { y[i] += a * x[i]; }
///   };
///   kiln::foreach_cpu<float>(Axpy<float>{2.f}, std::array<Tensor, 2>{y, x});  // CPU thread pool
///   // CUDA: kiln::cuda::foreach_cuda<float>(...) from core/cuda/foreach.cuh, in a .cu file
///
/// CPU loops see restrict-qualified pointers and a branch-free body, so they vectorize when the
/// file is compiled with -fno-math-errno (std::sqrt otherwise keeps a scalar errno path).
/// Runtime flags become template parameters with with_flags, one loop per combination.
#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#include "host_device.hpp"
#include "parallel.hpp"
#include "tensor.hpp"

namespace kiln {

/// Calls f.template operator()<b0, b1, ...>() with the runtime flags as compile-time constants:
///   with_flags([&]<bool NEG, bool WD>() { run(Rule<T, NEG, WD>(...)); }, maximize, wd != 0);
template <bool... Bs, typename F>
void with_flags(F&& f) {
  f.template operator()<Bs...>();
}
template <bool... Bs, typename F, typename... Rest>
void with_flags(F&& f, bool b, Rest... rest) {
  if (b) with_flags<Bs..., true>(f, rest...);
  else with_flags<Bs..., false>(f, rest...);
}

/// Data pointers of `t` as T* (null for undefined tensors).
template <typename T, std::size_t N>
std::array<T*, N> foreach_pointers(const std::array<Tensor, N>& t) {
  std::array<T*, N> p{};
  for (std::size_t k = 0; k < N; ++k) p[k] = t[k].defined() ? t[k].template data_ptr<T>() : nullptr;
  return p;
}

namespace detail {
// The vectorizable loop: restrict tells the compiler the tensors do not overlap.
template <typename Rule, typename... P>
void foreach_chunk(const Rule& rule, std::int64_t b, std::int64_t e, P* __restrict... p) {
  for (std::int64_t i = b; i < e; ++i) rule(i, p...);
}
}  // namespace detail

/// Runs rule(i, p...) for i in [0, t[0].numel()) on the CPU thread pool. The tensors are
/// contiguous CPU tensors of dtype T (undefined ones pass null) with t[0]'s element count.
template <typename T, typename Rule, std::size_t N>
void foreach_cpu(const Rule& rule, const std::array<Tensor, N>& t) {
  struct Job {
    const Rule* rule;
    std::array<T*, N> p;
  } job{&rule, foreach_pointers<T>(t)};
  parallel_chunks(
      t[0].numel(), kParallelGrain,
      [](std::int64_t b, std::int64_t e, const void* ctx) {
        const Job& j = *static_cast<const Job*>(ctx);
        std::apply([&](auto*... p) { detail::foreach_chunk(*j.rule, b, e, p...); }, j.p);
      },
      &job);
}

}  // namespace kiln
