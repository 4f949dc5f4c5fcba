// The bf16 attention kernels' tile product on AMX tiles (attention_bf16_tiles.hpp: amx_gemm).
// One TDPBF16PS multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 float32 sums: 16x the
// multiply-adds of a vdpbf16ps. The operands are already in the tile layouts: A rows hold pairs of
// consecutive reduction indices (a row of 16 pairs is one 64-byte tile row) and B rows hold 16
// pairs per 16 columns (AMX's VNNI layout). A is copied into a zero-padded scratch (16 x 16
// transposes where its pairs are strided), B only when the pair count is not a multiple of 16.
// Full 16-row blocks of C are loaded into and stored from the tiles in place (scaled by alpha
// before, by scale after); a last partial block goes through a scratch tile and dp_tile's epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention_bf16_tiles.hpp"

namespace kiln::cpu::bf16_tiles {
namespace {

#define KILN_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl")))

// One 16 x 16 block of sums (S, row stride 16) into C rows [0, rows), columns [0, 16).
template <bool Acc>
KILN_AMX_TARGET inline void epilogue(const float* S, std::int64_t rows, float* C, std::int64_t ldc, const float* alpha,
                                     float scale) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const __m512 s = _mm512_loadu_ps(S + r * 16);
    float* c = C + r * ldc;
    if (!Acc) _mm512_storeu_ps(c, _mm512_mul_ps(s, _mm512_set1_ps(scale)));
    else if (alpha) _mm512_storeu_ps(c, _mm512_fmadd_ps(_mm512_loadu_ps(c), _mm512_set1_ps(alpha[r]), s));
    else _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), s));
  }
}

// dst (16 x 16, row stride ld) = the transpose of src (16 x 16, row stride ls), 32-bit elements.
KILN_AMX_TARGET inline void transpose16(const u32* src, std::int64_t ls, u32* dst, std::int64_t ld) {
  __m512i r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * ls);
  for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved by element
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // groups of four rows: u[4i + c] holds columns c, c + 4, c + 8, c + 12
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // 128-bit blocks gathered across the four groups
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    _mm512_storeu_si512(dst + c * ld, _mm512_shuffle_i32x4(v0, w0, 0x88));
    _mm512_storeu_si512(dst + (c + 8) * ld, _mm512_shuffle_i32x4(v0, w0, 0xdd));
    _mm512_storeu_si512(dst + (c + 4) * ld, _mm512_shuffle_i32x4(v1, w1, 0x88));
    _mm512_storeu_si512(dst + (c + 12) * ld, _mm512_shuffle_i32x4(v1, w1, 0xdd));
  }
}

// C rows [0, 16) x columns [0, 16 * nc) *= s[r] (one factor per row), or by `scale` without s.
KILN_AMX_TARGET inline void scale_rows(float* C, std::int64_t ldc, int nc, const float* s, float scale) {
  for (int r = 0; r < 16; ++r) {
    const __m512 f = _mm512_set1_ps(s ? s[r] : scale);
    for (int c = 0; c < nc; ++c)
      _mm512_storeu_ps(C + r * ldc + c * 16, _mm512_mul_ps(_mm512_loadu_ps(C + r * ldc + c * 16), f));
  }
}

struct AmxScratch {
  std::vector<u32> a, b;
  alignas(64) float s[4][16 * 16];
};

}  // namespace

template <bool Acc>
KILN_AMX_TARGET void amx_gemm(std::int64_t M, std::int64_t N, std::int64_t P, const u32* A, std::int64_t ars,
                              std::int64_t aps, const u32* B, std::int64_t ldb, float* C, std::int64_t ldc,
                              const float* alpha, float scale) {
  if (M <= 0 || N <= 0) return;
  if (P <= 0) {  // an empty sum
    alignas(64) float zero[16 * 16] = {};
    for (std::int64_t m0 = 0; m0 < M; m0 += 16)
      for (std::int64_t n0 = 0; n0 < N; n0 += 16)
        epilogue<Acc>(zero, std::min<std::int64_t>(16, M - m0), C + m0 * ldc + n0, ldc, alpha ? alpha + m0 : nullptr,
                      scale);
    return;
  }
  thread_local AmxScratch sc;
  const std::int64_t Mp = (M + 15) / 16 * 16, Pp = (P + 15) / 16 * 16;
  // A as (Mp, Pp) pairs, row-major, zero padded. A strided A (the backward's transposed
  // operands) is read along its contiguous rows: the scratch (at most a few KiB) stays in L1.
  if (sc.a.size() < static_cast<std::size_t>(Mp * Pp)) sc.a.resize(static_cast<std::size_t>(Mp * Pp));
  u32* a = sc.a.data();
  if (aps == 1) {
    for (std::int64_t r = 0; r < M; ++r) {
      std::memcpy(a + r * Pp, A + r * ars, static_cast<std::size_t>(P) * sizeof(u32));
      std::fill(a + r * Pp + P, a + (r + 1) * Pp, 0u);
    }
  } else if (ars == 1) {  // A stored (P, M): transposed 16 x 16 blocks at a time
    const std::int64_t P16 = P / 16 * 16, M16 = M / 16 * 16;
    for (std::int64_t p = 0; p < P16; p += 16)
      for (std::int64_t r = 0; r < M16; r += 16) transpose16(A + p * aps + r, aps, a + r * Pp + p, Pp);
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t r = p < P16 ? M16 : 0; r < M; ++r) a[r * Pp + p] = A[r + p * aps];
    for (std::int64_t r = 0; r < M; ++r) std::fill(a + r * Pp + P, a + (r + 1) * Pp, 0u);
  } else {
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t r = 0; r < M; ++r) a[r * Pp + p] = A[r * ars + p * aps];
    for (std::int64_t r = 0; r < M; ++r) std::fill(a + r * Pp + P, a + (r + 1) * Pp, 0u);
  }
  std::fill(a + M * Pp, a + Mp * Pp, 0u);
  // B as (Pp, N) pairs when P is not a multiple of 16 (the padding pairs are 0).
  const u32* bb = B;
  std::int64_t ldbb = ldb;
  if (Pp != P) {
    sc.b.assign(static_cast<std::size_t>(Pp * N), 0u);
    for (std::int64_t p = 0; p < P; ++p)
      std::memcpy(sc.b.data() + p * N, B + p * ldb, static_cast<std::size_t>(N) * sizeof(u32));
    bb = sc.b.data();
    ldbb = N;
  }
  // tmm0-3: the sums of four 16-column blocks, tmm4: the A tile, tmm5: the B tile.
  static const AmxTileConfig cfg(6);
  _tile_loadconfig(&cfg);
  const long astride = static_cast<long>(Pp * sizeof(u32)), bstride = static_cast<long>(ldbb * sizeof(u32));
  for (std::int64_t m0 = 0; m0 < M; m0 += 16) {
    const u32* arow = a + m0 * Pp;
    const std::int64_t rows = std::min<std::int64_t>(16, M - m0);
    const bool direct = rows == 16;  // C's 16 rows are tiles' rows: load and store them in place
    for (std::int64_t n0 = 0; n0 < N; n0 += 64) {
      const int nc = static_cast<int>(std::min<std::int64_t>(4, (N - n0) / 16));
      float* cb = C + m0 * ldc + n0;
      const long cstride = static_cast<long>(ldc * sizeof(float));
      if (Acc && direct) {
        if (alpha) scale_rows(cb, ldc, nc, alpha + m0, 1.0f);
        _tile_loadd(0, cb, cstride);
        if (nc > 1) _tile_loadd(1, cb + 16, cstride);
        if (nc > 2) _tile_loadd(2, cb + 32, cstride);
        if (nc > 3) _tile_loadd(3, cb + 48, cstride);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (std::int64_t p0 = 0; p0 < Pp; p0 += 16) {
        _tile_loadd(4, arow + p0, astride);
        const u32* brow = bb + p0 * ldbb + n0;
        _tile_loadd(5, brow, bstride);
        _tile_dpbf16ps(0, 4, 5);
        if (nc > 1) {
          _tile_loadd(5, brow + 16, bstride);
          _tile_dpbf16ps(1, 4, 5);
        }
        if (nc > 2) {
          _tile_loadd(5, brow + 32, bstride);
          _tile_dpbf16ps(2, 4, 5);
        }
        if (nc > 3) {
          _tile_loadd(5, brow + 48, bstride);
          _tile_dpbf16ps(3, 4, 5);
        }
      }
      if (direct) {
        _tile_stored(0, cb, cstride);
        if (nc > 1) _tile_stored(1, cb + 16, cstride);
        if (nc > 2) _tile_stored(2, cb + 32, cstride);
        if (nc > 3) _tile_stored(3, cb + 48, cstride);
        if (!Acc && scale != 1.0f) scale_rows(cb, ldc, nc, nullptr, scale);
        continue;
      }
      _tile_stored(0, sc.s[0], 64);
      if (nc > 1) _tile_stored(1, sc.s[1], 64);
      if (nc > 2) _tile_stored(2, sc.s[2], 64);
      if (nc > 3) _tile_stored(3, sc.s[3], 64);
      for (int c = 0; c < nc; ++c) epilogue<Acc>(sc.s[c], rows, cb + c * 16, ldc, alpha ? alpha + m0 : nullptr, scale);
    }
  }
  _tile_release();
}

template void amx_gemm<false>(std::int64_t, std::int64_t, std::int64_t, const u32*, std::int64_t, std::int64_t,
                              const u32*, std::int64_t, float*, std::int64_t, const float*, float);
template void amx_gemm<true>(std::int64_t, std::int64_t, std::int64_t, const u32*, std::int64_t, std::int64_t,
                             const u32*, std::int64_t, float*, std::int64_t, const float*, float);

}  // namespace kiln::cpu::bf16_tiles
