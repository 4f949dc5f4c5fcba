// Batched matmul through cuBLAS (strided batched GEMM; a batch stride of 0 broadcasts),
// float32 optionally in TF32, bfloat16/float16 on tensor cores with float32 accumulation, float64
// in full precision; int64 has its own kernel.
#include <cublas_v2.h>
#include <fmt/format.h>

#include <climits>

#include "cuda_backend.hpp"
#include "kernels.hpp"

namespace kiln::cuda {
namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw_error("matmul", fmt::format("cuBLAS {} failed: {}", what, cublasGetStatusString(s)));
}

cublasHandle_t handle_for(DeviceContext& ctx) {
  if (!ctx.cublas) {
    cublasHandle_t h = nullptr;
    check_blas(cublasCreate(&h), "cublasCreate");
    check_blas(cublasSetStream(h, ctx.stream), "cublasSetStream");
    // A fixed workspace from kiln's allocator: cuBLAS then never allocates on its own, and
    // 32 MiB is what Hopper's kernels want.
    const std::size_t ws = std::size_t{32} << 20;
    ctx.cublas_workspace = ctx.allocator.allocate(ws);
    check_blas(cublasSetWorkspace(h, ctx.cublas_workspace, ws), "cublasSetWorkspace");
    ctx.cublas = h;
  }
  return static_cast<cublasHandle_t>(ctx.cublas);
}

// How a row-major (rows, cols) operand with element strides (sr, sc) reads as a column-major
// BLAS matrix: `trans` says whether it is stored transposed. False when no leading dimension fits.
struct Layout {
  bool trans = false;  // true: memory is column-major (rows, cols), i.e. the transpose
  std::int64_t ld = 1;
};
bool layout_of(std::int64_t rows, std::int64_t cols, std::int64_t sr, std::int64_t sc, Layout& l) {
  if (cols == 1 || sc == 1) {
    const std::int64_t ld = rows == 1 ? std::max<std::int64_t>(cols, 1) : sr;
    if (ld >= std::max<std::int64_t>(cols, 1) && ld <= INT_MAX) {
      l = {false, ld};
      return true;
    }
  }
  if (rows == 1 || sr == 1) {
    const std::int64_t ld = cols == 1 ? std::max<std::int64_t>(rows, 1) : sc;
    if (ld >= std::max<std::int64_t>(rows, 1) && ld <= INT_MAX) {
      l = {true, ld};
      return true;
    }
  }
  return false;
}

Tensor contiguous_copy(CudaBackend& be, const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  be.copy(c, t);
  return c;
}

}  // namespace

void CudaBackend::matmul(const Tensor& a_in, const Tensor& c_in, const Tensor& out) {
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a_in.size(2);
  if (B == 0 || M == 0 || N == 0) return;
  KILN_CHECK(out.dtype() != kBool, "matmul", "bool tensors are not supported");
  DeviceGuard g(ctx_.index);
  if (K == 0) {
    check(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), ctx_.stream), "matmul");
    return;
  }
  if (out.dtype() == kInt64) {
    const std::int64_t sa[3] = {a_in.stride(0), a_in.stride(1), a_in.stride(2)};
    const std::int64_t sc[3] = {c_in.stride(0), c_in.stride(1), c_in.stride(2)};
    launch_matmul_int64(a_in.data_ptr<std::int64_t>(), c_in.data_ptr<std::int64_t>(), out.data_ptr<std::int64_t>(), B,
                        M, N, K, sa, sc, ctx_.stream);
    check_launch("matmul");
    return;
  }
  KILN_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && B <= INT_MAX, "matmul",
             "sizes (B={}, M={}, N={}, K={}) exceed cuBLAS's 32-bit limits", B, M, N, K);
  Tensor a = a_in, c = c_in;
  Layout la, lc;
  if (!layout_of(M, K, a.stride(1), a.stride(2), la)) {
    a = contiguous_copy(*this, a_in);
    layout_of(M, K, a.stride(1), a.stride(2), la);
  }
  if (!layout_of(K, N, c.stride(1), c.stride(2), lc)) {
    c = contiguous_copy(*this, c_in);
    layout_of(K, N, c.stride(1), c.stride(2), lc);
  }
  // Row-major out = a @ c is column-major out^T = c^T a^T: cuBLAS computes (N x M) = (N x K)(K x M).
  // A row-major operand read column-major is already transposed, so `trans` flips the op.
  cublasHandle_t h = handle_for(ctx_);
  const cublasOperation_t opc = lc.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opa = la.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const long long strc = B > 1 ? c.stride(0) : 0, stra = B > 1 ? a.stride(0) : 0, stro = M * N;
  const int n = static_cast<int>(N), m = static_cast<int>(M), k = static_cast<int>(K), ldc = static_cast<int>(lc.ld),
            lda = static_cast<int>(la.ld), batch = static_cast<int>(B);
  if (out.dtype() == kFloat64) {
    const double one = 1.0, zero = 0.0;
    check_blas(cublasGemmStridedBatchedEx(h, opc, opa, n, m, k, &one, c.raw_data(), CUDA_R_64F, ldc, strc, a.raw_data(),
                                          CUDA_R_64F, lda, stra, &zero, out.raw_data(), CUDA_R_64F, n, stro, batch,
                                          CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT),
               "dgemm");
    return;
  }
  // float32 (optionally TF32), or bfloat16/float16 storage on the tensor cores with float32
  // accumulation and scalars (CUBLAS_COMPUTE_32F), rounded once into the 16-bit output.
  const cudaDataType_t dt = out.dtype() == kBFloat16 ? CUDA_R_16BF : out.dtype() == kFloat16 ? CUDA_R_16F : CUDA_R_32F;
  const cublasComputeType_t ct = dt == CUDA_R_32F && tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float one = 1.0f, zero = 0.0f;
  check_blas(cublasGemmStridedBatchedEx(h, opc, opa, n, m, k, &one, c.raw_data(), dt, ldc, strc, a.raw_data(), dt, lda,
                                        stra, &zero, out.raw_data(), dt, n, stro, batch, ct, CUBLAS_GEMM_DEFAULT),
             dt == CUDA_R_32F ? "sgemm" : "gemm (16-bit)");
}

}  // namespace kiln::cuda
