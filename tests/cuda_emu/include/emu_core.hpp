#pragma once
// A tiny CUDA execution emulator for checking kernel logic on a CPU: each block runs as
// cooperative fibers (ucontext); __syncthreads and warp shuffles are real barriers, so a
// divergent barrier deadlocks and is reported.
#include <ucontext.h>
#include "cuda_runtime_api.h"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <algorithm>
#include <type_traits>
#include <limits>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3_ { unsigned x, y, z; };

namespace emu {
struct Fiber {
  ucontext_t ctx;
  uint3_ tid;
  int linear = 0;
  int state = 0;  // 0 runnable, 1 waiting block barrier, 2 waiting warp barrier, 3 done
  int pred = 0, result = 0;
  std::uint64_t slot = 0;
  char* stack = nullptr;
};
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t sched;
  int cur = -1;
  unsigned nthreads = 0;
};
inline Block& blk() { static Block b; return b; }
inline uint3_& bidx() { static uint3_ v; return v; }
inline dim3& bdim() { static dim3 v; return v; }
inline dim3& gdim() { static dim3 v; return v; }
inline Fiber& me() { return blk().fibers[blk().cur]; }
inline std::size_t& dyn_smem_limit() { static std::size_t v = 227 * 1024; return v; }
inline int& launch_error() { return emu_launch_error_ref(); }

inline void yield_to_sched() { swapcontext(&me().ctx, &blk().sched); }

inline void block_barrier(int pred, int& out) {
  me().pred = pred;
  me().state = 1;
  yield_to_sched();
  out = me().result;
}
inline void warp_barrier() {
  me().state = 2;
  yield_to_sched();
}

inline std::function<void()>*& body() { static std::function<void()>* b = nullptr; return b; }
inline void trampoline() {
  (*body())();
  me().state = 3;
  yield_to_sched();
}

inline void run_block() {
  Block& b = blk();
  const unsigned n = b.nthreads;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = 256 * 1024;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (;;) {
    bool ran = false;
    static const bool reverse = std::getenv("EMU_REVERSE") != nullptr;
    for (unsigned k = 0; k < n; ++k) {
      const unsigned i = reverse ? n - 1 - k : k;
      if (b.fibers[i].state != 0) continue;
      b.cur = static_cast<int>(i);
      swapcontext(&b.sched, &b.fibers[i].ctx);
      ran = true;
    }
    if (ran) continue;
    // Everyone is blocked or done: release a barrier.
    bool all_done = true, released = false;
    for (unsigned i = 0; i < n; ++i) all_done &= b.fibers[i].state == 3;
    if (all_done) return;
    // warp barriers: all live fibers of the warp wait at one
    for (unsigned w = 0; w * 32 < n; ++w) {
      bool all = true, any = false;
      for (unsigned i = w * 32; i < std::min(n, (w + 1) * 32); ++i) {
        int s = b.fibers[i].state;
        if (s == 3) continue;
        any = true;
        if (s != 2) all = false;
      }
      if (any && all) {
        for (unsigned i = w * 32; i < std::min(n, (w + 1) * 32); ++i)
          if (b.fibers[i].state == 2) b.fibers[i].state = 0;
        released = true;
      }
    }
    if (released) continue;
    bool all_block = true;
    int andv = 1, orv = 0;
    for (unsigned i = 0; i < n; ++i) {
      int s = b.fibers[i].state;
      if (s == 3) continue;
      if (s != 1) all_block = false;
      andv &= b.fibers[i].pred != 0;
      orv |= b.fibers[i].pred != 0;
    }
    if (all_block) {
      // A finished fiber at a __syncthreads is undefined behavior in CUDA: flag it.
      for (unsigned i = 0; i < n; ++i)
        if (b.fibers[i].state == 3) {
          std::fprintf(stderr, "EMU: __syncthreads reached after thread %u exited\n", i);
          std::abort();
        }
      for (unsigned i = 0; i < n; ++i) {
        b.fibers[i].result = andv | (orv << 1);
        b.fibers[i].state = 0;
      }
      continue;
    }
    std::fprintf(stderr, "EMU: deadlock (mixed warp / block barriers)\n");
    std::abort();
  }
}

template <class F>
void run_grid(dim3 g, dim3 bd, std::size_t smem, F&& f) {
  Block& b = blk();
  const unsigned n = bd.x * bd.y * bd.z;
  if (n == 0 || n > 1024 || smem > dyn_smem_limit()) {
    launch_error() = 1;
    return;
  }
  if (b.fibers.size() < n) {
    std::size_t old = b.fibers.size();
    b.fibers.resize(n);
    for (std::size_t i = old; i < n; ++i) b.fibers[i].stack = static_cast<char*>(std::malloc(256 * 1024));
  }
  b.nthreads = n;
  bdim() = bd;
  gdim() = g;
  for (unsigned i = 0; i < n; ++i) {
    b.fibers[i].linear = static_cast<int>(i);
    b.fibers[i].tid = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
  }
  std::function<void()> fn = [&] { f(); };
  body() = &fn;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        bidx() = {x, y, z};
        run_block();
      }
}

template <class K>
struct Launcher {
  K k;
  dim3 g, b;
  std::size_t smem;
  template <class... A>
  void operator()(A... args) const {
    run_grid(g, b, smem, [&] { k(args...); });
  }
};
template <class K>
Launcher<K> launch(K k, dim3 g, dim3 b, std::size_t smem = 0, void* = nullptr) {
  return {k, g, b, smem};
}

template <class T>
T shfl_xor(T v, int o) {
  static_assert(sizeof(T) <= 8);
  std::uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  me().slot = raw;
  warp_barrier();
  const int lane = me().linear % 32, partner = (me().linear / 32) * 32 + (lane ^ o);
  std::uint64_t got = blk().fibers[partner].slot;
  warp_barrier();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
}  // namespace emu

#define threadIdx (emu::me().tid)
#define blockIdx (emu::bidx())
#define blockDim (emu::bdim())
#define gridDim (emu::gdim())
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define __restrict__ __restrict

inline void __syncthreads() { int r; emu::block_barrier(0, r); }
inline int __syncthreads_and(int p) { int r; emu::block_barrier(p ? 1 : 0, r); return r & 1; }
inline int __syncthreads_or(int p) { int r; emu::block_barrier(p ? 1 : 0, r); return (r >> 1) & 1; }
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) { return emu::shfl_xor(v, o); }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<std::uint64_t>(a) * b) >> 32); }
template <class T>
inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
inline unsigned atomicOr(unsigned* p, unsigned v) { unsigned o = *p; *p = o | v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { unsigned o = *p; if (o == cmp) *p = v; return o; }
using std::exp; using std::log; using std::sqrt; using std::tanh; using std::erf; using std::sin; using std::cos;
using std::pow; using std::exp2; using std::log2; using std::fabs; using std::floor; using std::signbit; using std::isfinite;
using std::fma; using std::min; using std::max; using std::nextafterf;
