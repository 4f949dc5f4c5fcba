// The bf16 dot-product decision (bf16_dot.hpp).
#include "bf16_dot.hpp"

#include <cpuid.h>
#include <fmt/format.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>

namespace kiln::cpu {
namespace {

struct Cpuid {
  unsigned a = 0, b = 0, c = 0, d = 0;
};
Cpuid cpuid(unsigned leaf, unsigned sub) {
  Cpuid r;
  if (__get_cpuid_max(0, nullptr) >= leaf) __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

// The low half of XCR0 (the state components the OS saves); 0 without OSXSAVE.
unsigned xcr0() {
  if (!((cpuid(1, 0).c >> 27) & 1u)) return 0;  // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return lo;
}

// XCR0 bits 1, 2, 5, 6, 7: SSE, AVX, opmask, ZMM upper halves, ZMM16-31 saved by the OS.
bool os_saves_avx512() { return (xcr0() & 0xe6u) == 0xe6u; }

using Clock = std::chrono::steady_clock;

// Instructions per second of 16 independent chains of `op` (best of 3 short runs).
template <typename Op>
double chain_rate(Op op) {
  constexpr long kIters = 8000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    const float sink = op(kIters);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sink != sink) return 0;  // keeps the loop's result alive
    best = std::max(best, 16.0 * kIters / std::max(s, 1e-9));
  }
  return best;
}

#define KILN_CHAINS(OP)                                                                 \
  __m512 acc[16];                                                                       \
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(0.001f * static_cast<float>(j)); \
  for (long i = 0; i < iters; ++i) {                                                    \
    _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j) acc[j] = OP;                  \
  }                                                                                     \
  __m512 sum = acc[0];                                                                  \
  for (int j = 1; j < 16; ++j) sum = _mm512_add_ps(sum, acc[j]);                        \
  alignas(64) float f[16];                                                              \
  _mm512_store_ps(f, sum);                                                              \
  return f[0];

__attribute__((target("avx512f"))) float fma_chains(long iters) {
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  KILN_CHAINS(_mm512_fmadd_ps(acc[j], a, b))
}

__attribute__((target("avx512f,avx512bf16"))) float dp_chains(long iters) {
  // 1.0 and 2^-32 as bf16 pairs: normal numbers, finite sums.
  const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3f80));
  const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x2f80));
  KILN_CHAINS(_mm512_dpbf16_ps(acc[j], a, b))
}
#undef KILN_CHAINS

struct Decision {
  double speedup = 0;
  bool automatic = false;  // the measured choice
  int env = -1;            // KILN_BF16_DOT: 1 on, 0 off, -1 auto
};

const Decision& decision() {
  static const Decision d = [] {
    Decision r;
    if (const char* e = std::getenv("KILN_BF16_DOT")) {
      const std::string v = e;
      r.env = v == "on" ? 1 : v == "off" ? 0 : -1;
    }
    if (cpu_has_avx512_bf16()) {
      // vdpbf16ps does 32 multiply-adds per instruction, vfmadd231ps 16.
      const double fma = chain_rate(fma_chains), dp = chain_rate(dp_chains);
      r.speedup = fma > 0 ? 2.0 * dp / fma : 0;
      r.automatic = r.speedup > 1.2;
    }
    return r;
  }();
  return d;
}

std::atomic<int> g_forced{-2};  // -2: not set by set_bf16_dot
std::atomic<int> g_amx{-1};     // set_bf16_amx: 0 off, else on where usable

}  // namespace

bool cpu_has_avx512_bf16() {
  static const bool ok = [] {
    const Cpuid l7 = cpuid(7, 0), l71 = cpuid(7, 1);
    const bool f_bw_vl = ((l7.b >> 16) & 1u) && ((l7.b >> 30) & 1u) && ((l7.b >> 31) & 1u);
    return f_bw_vl && ((l71.a >> 5) & 1u) && os_saves_avx512();
  }();
  return ok;
}

bool cpu_has_amx_bf16() { return (cpuid(7, 0).d >> 22) & 1u; }

bool amx_bf16_usable() {
  static const bool ok = [] {
    const bool amx_tile = (cpuid(7, 0).d >> 24) & 1u;
    if (!cpu_has_amx_bf16() || !amx_tile || !cpu_has_avx512_bf16()) return false;
    if ((xcr0() & 0x60000u) != 0x60000u) return false;  // XCR0 17, 18: TILECFG and TILEDATA
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

bool use_bf16_amx() {
  if (!amx_bf16_usable() || g_amx.load(std::memory_order_relaxed) == 0) return false;
  const int forced = g_forced.load(std::memory_order_relaxed);
  const int mode = forced != -2 ? forced : decision().env;
  return mode != 0;
}

int set_bf16_amx(int mode) { return g_amx.exchange(mode < -1 || mode > 1 ? -1 : mode); }

double bf16_dot_speedup() { return decision().speedup; }

bool use_bf16_dot() {
  if (!cpu_has_avx512_bf16()) return false;
  const int forced = g_forced.load(std::memory_order_relaxed);
  const int mode = forced != -2 ? forced : decision().env;
  return mode == 1 || (mode == -1 && decision().automatic);
}

int set_bf16_dot(int mode) {
  const int prev = g_forced.exchange(mode < -1 || mode > 1 ? -1 : mode);
  return prev == -2 ? decision().env : prev;
}

const char* bf16_dot_reason() {
  static thread_local std::string s;
  if (!cpu_has_avx512_bf16()) return "off (no AVX512-BF16)";
  const int forced = g_forced.load(std::memory_order_relaxed);
  const int mode = forced != -2 ? forced : decision().env;
  s = fmt::format("{} ({}; vdpbf16ps measured {:.2f}x the float32 FMA flops; attention tiles on {})",
                  use_bf16_dot() ? "on" : "off", mode == -1 ? "auto" : "forced", decision().speedup,
                  use_bf16_amx()   ? "AMX"
                  : use_bf16_dot() ? "vdpbf16ps"
                                   : "float32");
  return s.c_str();
}

}  // namespace kiln::cpu
