#pragma once
// Whether kiln's CPU bf16 kernels (oneDNN's bf16 GEMM in gemm_lowp.cpp, the bf16 attention in
// attention_bf16.cpp) use bf16 dot products or convert to float32 (internal to core/cpu).
// Having AVX512-BF16 is not enough: on some CPUs vdpbf16ps retires at a fraction of the float32
// FMA rate, and bf16 GEMM then runs slower than float32. So the choice is measured once per
// process (two ~0.1 ms register loops, vdpbf16ps against vfmadd231ps on one thread) and bf16 dot
// products are used only where they give more flops than float32 FMA.
// KILN_BF16_DOT=on|off|auto (default auto) overrides it.
#include <cstdint>

namespace kiln::cpu {

/// AVX512-F/BW/VL and AVX512_BF16 (cpuid), and the OS saves the AVX-512 state.
bool cpu_has_avx512_bf16();

/// AMX-BF16 tiles (cpuid); oneDNN uses them for bf16 GEMM where it finds them enabled.
bool cpu_has_amx_bf16();

/// Flops of vdpbf16ps over flops of vfmadd231ps (zmm) on this CPU, measured once; 0 without
/// AVX512-BF16.
double bf16_dot_speedup();

/// True when bf16 kernels should use bf16 dot products: the CPU has them and, unless forced by
/// KILN_BF16_DOT or set_bf16_dot, they beat float32 (bf16_dot_speedup() > 1.2).
bool use_bf16_dot();

/// Tests and comparisons: 1 forces bf16 dot products on (where the CPU has them), 0 off, -1 back
/// to the automatic choice. Returns the previous setting.
int set_bf16_dot(int mode);

/// An AMX tile configuration as ldtilecfg reads it (palette 1): tiles [0, n) of 16 rows x 64
/// bytes, the shape every kiln AMX kernel uses (a 16 x 16 float32 or a 16 x 32 bf16 tile).
struct alignas(64) AmxTileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
  explicit AmxTileConfig(int n) {
    for (int t = 0; t < n; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

/// AMX tiles for bf16 (cpuid AMX-TILE and AMX-BF16, the OS saves the tile state, and Linux gave
/// this process the tile data: arch_prctl(ARCH_REQ_XCOMP_PERM), asked once).
bool amx_bf16_usable();

/// True when the bf16 attention kernels run their tile products on AMX: usable, and bf16 dot
/// products not switched off (KILN_BF16_DOT=off, set_bf16_dot(0)) nor AMX (set_bf16_amx(0)).
/// Unlike vdpbf16ps, AMX needs no speed probe: one tile product does 16x a vdpbf16ps's work.
bool use_bf16_amx();

/// Tests and comparisons: 0 keeps the attention on vdpbf16ps where AMX is usable, 1 or -1 back
/// to AMX. Returns the previous setting.
int set_bf16_amx(int mode);

/// Whether the bf16 attention kernels run at all (on AMX or vdpbf16ps) instead of converting to
/// float32: use_bf16_amx() || use_bf16_dot().
inline bool use_bf16_tiles() { return use_bf16_amx() || use_bf16_dot(); }

/// "on (measured 1.9x float32 FMA)", "off (...)": what use_bf16_dot() decided and why.
const char* bf16_dot_reason();

}  // namespace kiln::cpu
