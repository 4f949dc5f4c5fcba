#pragma once
// Strided N-ary loops for CPU kernels. Dims are coalesced where every operand
// is contiguous across them, then the flat index range is split over threads;
// the kernel sees runs along the innermost dim: f(ptrs, n, byte_strides).
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "../parallel.hpp"
#include "../tensor.hpp"

namespace kiln::cpu {

template <int N>
struct Operands {
  std::array<char*, N> ptr;
  std::array<const std::int64_t*, N> stride;  // elements, one per dim (the tensors' own strides)
  std::array<std::int64_t, N> itemsize;
};

/// Views the tensors as loop operands; they must outlive the loop. Allocates nothing.
template <int N>
Operands<N> make_operands(const std::array<const Tensor*, N>& ts) {
  Operands<N> ops;
  for (int k = 0; k < N; ++k) {
    ops.ptr[k] = static_cast<char*>(ts[k]->raw_data());
    ops.stride[k] = ts[k]->strides().data();
    ops.itemsize[k] = static_cast<std::int64_t>(itemsize(ts[k]->dtype()));
  }
  return ops;
}

/// Number of threads worth using for `work` elements.
inline int threads_for(std::int64_t work, std::int64_t grain = kParallelGrain) {
  if (omp_in_parallel()) return 1;
  int t = get_num_threads();
  if (t <= 1 || work < 2 * grain) return 1;
  return static_cast<int>(std::min<std::int64_t>(t, work / grain));
}

// libgomp is not built with ThreadSanitizer, so TSan cannot see that a parallel region's start
// orders the caller's writes before every chunk and its end orders every chunk before the caller
// goes on. Under -fsanitize=thread parallel_range tells it so, with two sync objects on the
// caller's stack (fork, join: team members stay unordered among themselves, and regions of
// different user threads with each other). The region itself (team) is not instrumented: the
// compiler hands the shared variables to the team through a block it writes after the fork's
// release; each member then runs team_chunk, which is. No-ops in other builds.
#if defined(__SANITIZE_THREAD__)
#define KILN_TSAN_ANNOTATE 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KILN_TSAN_ANNOTATE 1
#endif
#endif
#ifdef KILN_TSAN_ANNOTATE
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
inline void tsan_release(char* sync) { __tsan_release(sync); }
inline void tsan_acquire(char* sync) { __tsan_acquire(sync); }
#else
inline void tsan_release(char*) {}
inline void tsan_acquire(char*) {}
#endif

template <typename F>
[[gnu::noinline]] void team_chunk(std::int64_t n, F& f, char* fork_join) {
  tsan_acquire(fork_join);
  int t = omp_get_thread_num(), T = omp_get_num_threads();
  std::int64_t b = n * t / T, e = n * (t + 1) / T;
  if (b < e) f(b, e);
  tsan_release(fork_join + 1);
}

template <typename F>
[[gnu::no_sanitize("thread")]] void team(int nt, std::int64_t n, F& f, char* fork_join) {
#pragma omp parallel num_threads(nt)
  team_chunk(n, f, fork_join);
}

/// Runs f(begin, end) over [0, n) split into contiguous chunks, one per thread.
template <typename F>
void parallel_range(std::int64_t n, std::int64_t grain, F&& f) {
  int nt = threads_for(n, grain);
  if (nt <= 1) {
    if (n > 0) f(std::int64_t{0}, n);
    return;
  }
  char fork_join[2] = {};
  tsan_release(fork_join);
  team(nt, n, f, fork_join);
  tsan_acquire(fork_join + 1);
}

/// Calls f(ptrs, n, inner_strides) for every innermost run of `shape` (strides in bytes).
template <int N, typename F>
void strided_loop(const Shape& shape_in, Operands<N> ops, F&& f, std::int64_t grain = kParallelGrain) {
  const std::size_t ndim = shape_in.size();
  // Fast path, no allocation: every operand is row-major contiguous over `shape`.
  {
    bool contiguous = true;
    std::int64_t total = 1;
    for (std::size_t d = ndim; d-- > 0;) {
      if (shape_in[d] != 1)
        for (int k = 0; k < N; ++k)
          if (ops.stride[k][d] != total) contiguous = false;
      total *= shape_in[d];
    }
    if (total == 0) return;
    if (contiguous) {
      std::array<std::int64_t, N> st = ops.itemsize;
      parallel_range(total, grain, [&](std::int64_t b, std::int64_t e) {
        std::array<char*, N> p;
        for (int k = 0; k < N; ++k) p[k] = ops.ptr[k] + b * ops.itemsize[k];
        f(p, e - b, st);
      });
      return;
    }
  }
  // Coalesce (see coalesce_dims), then strides in bytes.
  auto dims = coalesce_dims<N>(shape_in, ops.stride);
  const Shape& shape = dims.shape;
  auto& st = dims.strides;
  for (int k = 0; k < N; ++k)
    for (auto& v : st[k]) v *= ops.itemsize[k];
  std::int64_t total = 1;
  for (auto s : shape) total *= s;
  if (total == 0) return;
  if (shape.empty()) {
    std::array<std::int64_t, N> z{};
    f(ops.ptr, std::int64_t{1}, z);
    return;
  }
  const std::int64_t nd = static_cast<std::int64_t>(shape.size());
  const std::int64_t inner = shape.back();
  std::array<std::int64_t, N> inner_st;
  for (int k = 0; k < N; ++k) inner_st[k] = st[k].back();

  auto run = [&](std::int64_t begin, std::int64_t end) {
    std::vector<std::int64_t> idx(nd, 0);
    std::int64_t rem = begin;
    for (std::int64_t d = nd - 1; d >= 0; --d) {
      idx[d] = rem % shape[d];
      rem /= shape[d];
    }
    std::array<char*, N> p;
    for (int k = 0; k < N; ++k) {
      p[k] = ops.ptr[k];
      for (std::int64_t d = 0; d < nd; ++d) p[k] += idx[d] * st[k][d];
    }
    while (begin < end) {
      std::int64_t n = std::min(inner - idx[nd - 1], end - begin);
      f(p, n, inner_st);
      begin += n;
      idx[nd - 1] += n;
      for (int k = 0; k < N; ++k) p[k] += n * inner_st[k];
      for (std::int64_t d = nd - 1; d > 0 && idx[d] == shape[d]; --d) {
        idx[d] = 0;
        idx[d - 1]++;
        for (int k = 0; k < N; ++k) p[k] += st[k][d - 1] - shape[d] * st[k][d];
      }
    }
  };
  parallel_range(total, grain, run);
}

}  // namespace kiln::cpu
