#pragma once
// Batched GEMM on 16-bit float inputs (BFloat16, Half) with float32 accumulation, output in the
// input type or in float32 (internal to core/cpu). bf16 runs on oneDNN's matmul when kiln is
// built with it and the CPU has fast native bf16 dot products (AMX, or AVX512-BF16 where
// bf16_dot.hpp measured it faster than float32 FMA); otherwise, and
// for Half (oneDNN 2.6 has no fast fp16 CPU matmul), the inputs are converted to float32 and the
// float GEMM (OpenBLAS or Eigen) runs: op(B) whole, op(A) and the rounded output panel by panel
// in a per-thread scratch where op(B) is small beside them, the panels spread over the threads.
// Both paths give float32-accumulated results.
// An operand used by several GEMMs can be widened once (widen_matrices) and passed with its
// float32 copy (LowpOperand::wide), which the float32 path then reads instead of converting again.
//   GemmDims d{.batch = 1, .M = m, .N = n, .K = k, .lda = k, .ldb = n, .ldc = n};
//   gemm_lowp(d, a, b, c);   // c = a @ b
#include <cstdint>
#include <string>

#include "../half.hpp"

namespace kiln {
class Tensor;
}

namespace kiln::cpu {

/// C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i] for i < batch; op(A) is (M, K): A[m * lda + k],
/// or A[k * lda + m] when ta; op(B) is (K, N): B[k * ldb + n], or B[n * ldb + k] when tb; C is
/// (M, N) with row stride ldc. sa/sb/sc step between batch items (0: the same matrix for all; C
/// needs sc != 0 when batch > 1). beta == 0 ignores C's old contents (NaN included).
/// bias (N floats, needs alpha == 1 and beta == 0) is added to every row in float32 before C is rounded: a
/// linear layer's output rounds once, not once after the product and again after the bias.
struct GemmDims {
  std::int64_t batch = 1, M = 0, N = 0, K = 0;
  bool ta = false, tb = false;
  std::int64_t lda = 0, sa = 0, ldb = 0, sb = 0, ldc = 0, sc = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* bias = nullptr;
};

/// T is BFloat16 or Half; O is T or float.
template <typename T, typename O>
void gemm_lowp(const GemmDims& d, const T* a, const T* b, O* c);

/// A gemm_lowp operand: its 16-bit values (laid out as GemmDims says), and optionally their
/// float32 values in the same orientation with row stride wide_ld and item stride wide_s.
template <typename T>
struct LowpOperand {
  const T* data = nullptr;
  const float* wide = nullptr;
  std::int64_t wide_ld = 0, wide_s = 0;
};

/// gemm_lowp where the float32 path takes an operand's `wide` copy as it is (same result: the
/// same float values reach the same float GEMMs); the bf16 oneDNN path reads `data`.
template <typename T, typename O>
void gemm_lowp(const GemmDims& d, const LowpOperand<T>& a, const LowpOperand<T>& b, O* c);

/// True when gemm_lowp on bf16 (bf16 = true) or Half inputs converts them to float32 on this
/// machine (no bf16 oneDNN kernels): then widening an operand once for several GEMMs saves work.
bool gemm_lowp_widens(bool bf16);

/// The `items` (rows, cols) matrices at src (row stride ld, item stride s) as dense float32
/// (row stride cols, item stride rows * cols), converted in parallel.
template <typename T>
Tensor widen_matrices(const T* src, std::int64_t items, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                      std::int64_t s);

/// The path gemm_lowp takes for bf16 (bf16 = true) or Half inputs on this machine and why, e.g.
/// "onednn 2.6.3 (avx512_core_bf16); bf16 dot products on (auto; ...)" or "float32 conversion; ...".
std::string gemm_lowp_path(bool bf16);

/// Float GEMM of blas.cpp (OpenBLAS or Eigen), row-major, same conventions as GemmDims (one item).
void sgemm_rowmajor(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const float* a,
                    std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

}  // namespace kiln::cpu
