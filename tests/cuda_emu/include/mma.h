#pragma once
// Emulator stand-in for mma.h (nvcuda::wmma): the m16n16k16 shape with __nv_bfloat16 / __half
// inputs and float accumulators. As on a GPU every load, store and mma_sync is warp-collective:
// all live lanes of the warp must make the call (a divergent one deadlocks the emulator, which
// reports it), and mma_sync combines the fragments of the whole warp. CUDA leaves a fragment's
// element layout unspecified; here each use (matrix_a, matrix_b, accumulator) scatters its
// elements over the lanes by a different permutation, so a kernel that relies on an element
// order computes wrong results. Pointers must be 256-bit aligned and leading dimensions a
// multiple of 16 bytes, as CUDA requires: a violation aborts with a message.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu_core.hpp"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulated warp-matrix API has the m16n16k16 shape only");
  static constexpr int num_elements = 8;  // 256 entries over 32 lanes
  T x[num_elements];
};

namespace emu_detail {
inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(__half v) { return __half2float(v); }
template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half(v);
  else return v;
}

// Element i of a lane holds entry (row, col) = divmod(P(i * 32 + lane), 16) of the 16x16 tile.
template <class Use>
inline void coord(int lane, int i, int& row, int& col) {
  constexpr unsigned mul = std::is_same_v<Use, matrix_a> ? 37 : std::is_same_v<Use, matrix_b> ? 101 : 59;
  constexpr unsigned add = std::is_same_v<Use, matrix_a> ? 11 : std::is_same_v<Use, matrix_b> ? 5 : 3;
  const unsigned p = (mul * static_cast<unsigned>(i * 32 + lane) + add) % 256;
  row = static_cast<int>(p / 16);
  col = static_cast<int>(p % 16);
}
inline int lane() { return emu::me().linear % 32; }
inline void check(const void* p, unsigned ld, unsigned elem_bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0 || (ld * elem_bytes) % 16 != 0) {
    std::fprintf(stderr, "EMU: %s: pointer %p must be 32-byte aligned and ld %u a multiple of 16 bytes\n", what, p, ld);
    std::abort();
  }
}
// Entry (r, c) of a 16x16 tile at p with leading dimension ld.
inline std::size_t offset(bool row_major_layout, int r, int c, unsigned ld) {
  return row_major_layout ? static_cast<std::size_t>(r) * ld + c : static_cast<std::size_t>(c) * ld + r;
}
// mma_sync's operands, published per thread while the warp gathers them.
inline const void*& slot(int thread, int which) {
  static const void* s[1024][2];
  return s[thread][which];
}
}  // namespace emu_detail

template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ld) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  emu_detail::check(p, ld, sizeof(T), "load_matrix_sync");
  emu::warp_barrier();
  for (int i = 0; i < 8; ++i) {
    int r, c;
    emu_detail::coord<Use>(emu_detail::lane(), i, r, c);
    f.x[i] = p[emu_detail::offset(std::is_same_v<L, row_major>, r, c, ld)];
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ld, layout_t l) {
  emu_detail::check(p, ld, sizeof(float), "load_matrix_sync");
  emu::warp_barrier();
  for (int i = 0; i < 8; ++i) {
    int r, c;
    emu_detail::coord<accumulator>(emu_detail::lane(), i, r, c);
    f.x[i] = p[emu_detail::offset(l == mem_row_major, r, c, ld)];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ld, layout_t l) {
  emu_detail::check(p, ld, sizeof(float), "store_matrix_sync");
  emu::warp_barrier();
  for (int i = 0; i < 8; ++i) {
    int r, c;
    emu_detail::coord<accumulator>(emu_detail::lane(), i, r, c);
    p[emu_detail::offset(l == mem_row_major, r, c, ld)] = f.x[i];
  }
}

template <class Use, class T, class L, class V>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const V& v) {
  for (auto& e : f.x) e = emu_detail::from_float<T>(static_cast<float>(v));
}

// d = a b + c over the warp: products of the 16-bit inputs (exact in float), summed in float.
template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  const int me = emu::me().linear, base = me - me % 32;
  emu_detail::slot(me, 0) = &a;
  emu_detail::slot(me, 1) = &b;
  emu::warp_barrier();  // every lane has published its fragments
  float A[16][16], B[16][16];
  const int lanes = std::min(32, static_cast<int>(emu::blk().nthreads) - base);
  for (int l = 0; l < lanes; ++l) {
    const auto* fa = static_cast<const fragment<matrix_a, 16, 16, 16, T, LA>*>(emu_detail::slot(base + l, 0));
    const auto* fb = static_cast<const fragment<matrix_b, 16, 16, 16, T, LB>*>(emu_detail::slot(base + l, 1));
    for (int i = 0; i < 8; ++i) {
      int r, col;
      emu_detail::coord<matrix_a>(l, i, r, col);
      A[r][col] = emu_detail::to_float(fa->x[i]);
      emu_detail::coord<matrix_b>(l, i, r, col);
      B[r][col] = emu_detail::to_float(fb->x[i]);
    }
  }
  float out[8];
  for (int i = 0; i < 8; ++i) {
    int r, col;
    emu_detail::coord<accumulator>(emu_detail::lane(), i, r, col);
    float s = c.x[i];
    for (int k = 0; k < 16; ++k) s = std::fma(A[r][k], B[k][col], s);
    out[i] = s;
  }
  emu::warp_barrier();  // every lane has read the others' fragments before any is overwritten
  for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
