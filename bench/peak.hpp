#pragma once
// The machine's arithmetic ceiling, measured: float32 FMA (vfmadd231ps), bf16 dot-product
// (vdpbf16ps) and AMX tile (tdpbf16ps) throughput from independent register / tile chains, run
// on every thread at once. The
// instructions are compiled per target and picked from the CPU's features at run time.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <kiln/core/cpu/bf16_dot.hpp>

#include "bench_util.hpp"

namespace kiln::bench {

// 16 independent accumulator chains: enough to cover FMA latency (4) x 2 ports. Each chain
// depends on its previous value (no fast-math), so nothing can be folded; the unrolled array
// lives in registers.
#define KILN_PEAK_LOOP(VEC, SET1, OP, ADD, REDUCE)                            \
  VEC acc[16];                                                                \
  for (int j = 0; j < 16; ++j) acc[j] = SET1(0.001f * static_cast<float>(j)); \
  const double t0 = now_s();                                                  \
  for (long i = 0; i < iters; ++i) {                                          \
    _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j) acc[j] = OP;        \
  }                                                                           \
  const double s = now_s() - t0;                                              \
  VEC sum = acc[0];                                                           \
  for (int j = 1; j < 16; ++j) sum = ADD(sum, acc[j]);                        \
  volatile float sink = REDUCE(sum);                                          \
  (void)sink;

// Lane sums through memory (GCC 12 warns falsely inside _mm512_reduce_add_ps).
__attribute__((target("avx512f"))) inline float hsum512(__m512 v) {
  alignas(64) float f[16];
  _mm512_store_ps(f, v);
  float s = 0;
  for (float x : f) s += x;
  return s;
}

__attribute__((target("avx512f"))) inline double fma512_gflops(long iters) {
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  KILN_PEAK_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps(acc[j], a, b), _mm512_add_ps, hsum512)
  return 16.0 * 16 * 2 * static_cast<double>(iters) / s / 1e9;  // 16 FMAs x 16 lanes x 2 flops
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  alignas(32) float f[8];
  _mm256_store_ps(f, v);
  return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
__attribute__((target("avx2,fma"))) inline double fma256_gflops(long iters) {
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  KILN_PEAK_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps(acc[j], a, b), _mm256_add_ps, hsum256)
  return 16.0 * 8 * 2 * static_cast<double>(iters) / s / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) inline double dpbf16_gflops(long iters) {
  // 1.0 and 2^-32 in bf16 (0x3f80, 0x2f80; normal numbers, no denormal handling): the sums stay finite.
  const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3f80));
  const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x2f80));
  KILN_PEAK_LOOP(__m512, _mm512_set1_ps, _mm512_dpbf16_ps(acc[j], a, b), _mm512_add_ps, hsum512)
  return 16.0 * 32 * 2 * static_cast<double>(iters) / s / 1e9;  // 16 ops x 32 products x 2 flops
}
#undef KILN_PEAK_LOOP

// AMX: TDPBF16PS into six independent 16 x 16 float32 tiles (its latency is about three times its
// issue interval) from one A and one B tile; each multiplies 16 x 32 by 32 x 16 bf16 values. The
// caller checks that the CPU has AMX and that the process was granted the tile state
// (kiln::cpu::amx_bf16_usable()).
__attribute__((target("amx-tile,amx-bf16"))) inline double amx_bf16_gflops(long iters) {
  const kiln::cpu::AmxTileConfig cfg(8);
  alignas(64) std::uint16_t a[16 * 32], b[16 * 32];
  std::fill(a, a + 16 * 32, std::uint16_t{0x3f80});  // 1.0
  std::fill(b, b + 16 * 32, std::uint16_t{0x2f80});  // 2^-32
  alignas(64) float out[16 * 16];
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_loadd(6, a, 64);
  _tile_loadd(7, b, 64);
  const double t0 = now_s();
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 6, 7);
    _tile_dpbf16ps(1, 6, 7);
    _tile_dpbf16ps(2, 6, 7);
    _tile_dpbf16ps(3, 6, 7);
    _tile_dpbf16ps(4, 6, 7);
    _tile_dpbf16ps(5, 6, 7);
  }
  _tile_stored(0, out, 64);
  const double s = now_s() - t0;
  volatile float sink = out[0];
  (void)sink;
  _tile_release();
  return 6.0 * 16 * 16 * 32 * 2 * static_cast<double>(iters) / s / 1e9;
}

/// Summed GFLOP/s of f(iters) run on `threads` threads at once; median of `reps` runs.
template <typename F>
double peak_gflops(int threads, int reps, long iters, F f) {
  std::vector<double> runs;
  for (int r = 0; r < reps; ++r) {
    std::vector<double> per(static_cast<std::size_t>(threads));
#pragma omp parallel num_threads(threads)
    per[static_cast<std::size_t>(omp_get_thread_num())] = f(iters);
    double sum = 0;
    for (double x : per) sum += x;
    runs.push_back(sum);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

/// Which peak loops this CPU runs.
struct PeakIsa {
  bool avx512 = false, avx2 = false, bf16 = false;
  PeakIsa() {
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  }
};

}  // namespace kiln::bench
