// Batched matmul through cuBLAS (strided batched GEMM; a batch stride of 0 broadcasts),
// float32 optionally in TF32, bfloat16/float16 on tensor cores with float32 accumulation, float64
// in full precision; int64 has its own kernel. linear's bfloat16/float16 bias goes through
// cuBLASLt's bias epilogue: added to the float32 accumulator, rounded once with the product.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>

#include "cuda_backend.hpp"
#include "kernels.hpp"

namespace kiln::cuda {
namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw_error("matmul", fmt::format("cuBLAS {} failed: {}", what, cublasGetStatusString(s)));
}

// A fixed workspace from kiln's allocator, shared by cuBLAS and cuBLASLt (both run on the
// device's one stream): cuBLAS then never allocates on its own, and 32 MiB is what Hopper's
// kernels want.
constexpr std::size_t kWorkspace = std::size_t{32} << 20;

cublasHandle_t handle_for(DeviceContext& ctx) {
  if (!ctx.cublas) {
    cublasHandle_t h = nullptr;
    check_blas(cublasCreate(&h), "cublasCreate");
    check_blas(cublasSetStream(h, ctx.stream), "cublasSetStream");
    ctx.cublas_workspace = ctx.allocator.allocate(kWorkspace);
    check_blas(cublasSetWorkspace(h, ctx.cublas_workspace, kWorkspace), "cublasSetWorkspace");
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

// out = a @ c as cuBLAS computes it: row-major out = a @ c is column-major out^T = c^T a^T,
// (N x M) = (N x K)(K x M). A row-major operand read column-major is already transposed, so
// `trans` flips the op. Operands no leading dimension fits are copied.
struct Gemm {
  Tensor a, c;
  cublasOperation_t opa = CUBLAS_OP_N, opc = CUBLAS_OP_N;
  int m = 0, n = 0, k = 0, lda = 0, ldc = 0, batch = 0;
  long long stra = 0, strc = 0, stro = 0;
};
Gemm gemm_of(CudaBackend& be, const Tensor& a_in, const Tensor& c_in, const Tensor& out) {
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a_in.size(2);
  KILN_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && B <= INT_MAX, "matmul",
             "sizes (B={}, M={}, N={}, K={}) exceed cuBLAS's 32-bit limits", B, M, N, K);
  Gemm g;
  g.a = a_in, g.c = c_in;
  Layout la, lc;
  if (!layout_of(M, K, g.a.stride(1), g.a.stride(2), la)) {
    g.a = contiguous_copy(be, a_in);
    layout_of(M, K, g.a.stride(1), g.a.stride(2), la);
  }
  if (!layout_of(K, N, g.c.stride(1), g.c.stride(2), lc)) {
    g.c = contiguous_copy(be, c_in);
    layout_of(K, N, g.c.stride(1), g.c.stride(2), lc);
  }
  g.opc = lc.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  g.opa = la.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  g.strc = B > 1 ? g.c.stride(0) : 0, g.stra = B > 1 ? g.a.stride(0) : 0, g.stro = M * N;
  g.n = static_cast<int>(N), g.m = static_cast<int>(M), g.k = static_cast<int>(K), g.ldc = static_cast<int>(lc.ld);
  g.lda = static_cast<int>(la.ld), g.batch = static_cast<int>(B);
  return g;
}

cudaDataType_t cuda_type(DType dt) {
  return dt == kBFloat16 ? CUDA_R_16BF : dt == kFloat16 ? CUDA_R_16F : dt == kFloat64 ? CUDA_R_64F : CUDA_R_32F;
}

cublasLtHandle_t lt_handle_for(DeviceContext& ctx) {
  if (!ctx.cublaslt) {
    cublasLtHandle_t h = nullptr;
    check_blas(cublasLtCreate(&h), "cublasLtCreate");
    ctx.cublaslt = h;
  }
  return static_cast<cublasLtHandle_t>(ctx.cublaslt);
}

// out = a @ c + bias on cuBLASLt with CUBLASLT_EPILOGUE_BIAS: the bias (out's dtype, packed,
// one value per row of column-major out^T, i.e. per output feature) joins the float32
// accumulator and the sum is rounded once. False when cuBLASLt offers no kernel for the case.
bool lt_bias_gemm(DeviceContext& ctx, const Gemm& g, const Tensor& bias, const Tensor& out) {
  handle_for(ctx);  // the shared workspace
  cublasLtHandle_t lt = lt_handle_for(ctx);
  const cudaDataType_t dt = cuda_type(out.dtype());
  cublasLtMatmulDesc_t op_raw = nullptr;
  check_blas(cublasLtMatmulDescCreate(&op_raw, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const std::unique_ptr<cublasLtMatmulDescOpaque_t, decltype(&cublasLtMatmulDescDestroy)> op(op_raw,
                                                                                             cublasLtMatmulDescDestroy);
  auto set_op = [&](cublasLtMatmulDescAttributes_t attr, const auto& v) {
    check_blas(cublasLtMatmulDescSetAttribute(op.get(), attr, &v, sizeof(v)), "cublasLtMatmulDescSetAttribute");
  };
  set_op(CUBLASLT_MATMUL_DESC_TRANSA, static_cast<std::int32_t>(g.opc));
  set_op(CUBLASLT_MATMUL_DESC_TRANSB, static_cast<std::int32_t>(g.opa));
  set_op(CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_BIAS));
  set_op(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias.raw_data());
  using LayoutPtr = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, decltype(&cublasLtMatrixLayoutDestroy)>;
  auto layout = [&](int rows, int cols, int ld, long long stride) {
    cublasLtMatrixLayout_t l = nullptr;
    check_blas(cublasLtMatrixLayoutCreate(&l, dt, rows, cols, ld), "cublasLtMatrixLayoutCreate");
    LayoutPtr p(l, cublasLtMatrixLayoutDestroy);
    if (g.batch > 1) {
      const std::int32_t count = g.batch;
      const std::int64_t offset = stride;
      check_blas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)),
                 "cublasLtMatrixLayoutSetAttribute");
      check_blas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                                  sizeof(offset)),
                 "cublasLtMatrixLayoutSetAttribute");
    }
    return p;
  };
  const bool tc = g.opc == CUBLAS_OP_T, ta = g.opa == CUBLAS_OP_T;
  const LayoutPtr ld_c = layout(tc ? g.k : g.n, tc ? g.n : g.k, g.ldc, g.strc);
  const LayoutPtr ld_a = layout(ta ? g.m : g.k, ta ? g.k : g.m, g.lda, g.stra);
  const LayoutPtr ld_out = layout(g.n, g.m, g.n, g.stro);
  cublasLtMatmulPreference_t pref_raw = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref_raw), "cublasLtMatmulPreferenceCreate");
  const std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(&cublasLtMatmulPreferenceDestroy)> pref(
      pref_raw, cublasLtMatmulPreferenceDestroy);
  auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const auto& v) {
    check_blas(cublasLtMatmulPreferenceSetAttribute(pref.get(), attr, &v, sizeof(v)),
               "cublasLtMatmulPreferenceSetAttribute");
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(kWorkspace));
  // The heuristic assumes 256-byte aligned matrices unless told otherwise; views (a sliced
  // input, an offset output) may be aligned to their element size only.
  auto alignment = [](const void* p) {
    const auto u = reinterpret_cast<std::uintptr_t>(p);
    return static_cast<std::uint32_t>(std::min<std::uintptr_t>(256, u & (~u + 1)));
  };
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(g.c.raw_data()));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(g.a.raw_data()));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(out.raw_data()));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(out.raw_data()));
  cublasLtMatmulHeuristicResult_t found{};
  int count = 0;
  if (cublasLtMatmulAlgoGetHeuristic(lt, op.get(), ld_c.get(), ld_a.get(), ld_out.get(), ld_out.get(), pref.get(), 1,
                                     &found, &count) != CUBLAS_STATUS_SUCCESS ||
      count == 0)
    return false;
  const float one = 1.0f, zero = 0.0f;
  check_blas(cublasLtMatmul(lt, op.get(), &one, g.c.raw_data(), ld_c.get(), g.a.raw_data(), ld_a.get(), &zero,
                            out.raw_data(), ld_out.get(), out.raw_data(), ld_out.get(), &found.algo,
                            ctx.cublas_workspace, kWorkspace, ctx.stream),
             "cublasLtMatmul (bias epilogue)");
  return true;
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
  const Gemm m = gemm_of(*this, a_in, c_in, out);
  cublasHandle_t h = handle_for(ctx_);
  if (out.dtype() == kFloat64) {
    const double one = 1.0, zero = 0.0;
    check_blas(cublasGemmStridedBatchedEx(h, m.opc, m.opa, m.n, m.m, m.k, &one, m.c.raw_data(), CUDA_R_64F, m.ldc,
                                          m.strc, m.a.raw_data(), CUDA_R_64F, m.lda, m.stra, &zero, out.raw_data(),
                                          CUDA_R_64F, m.n, m.stro, m.batch, CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT),
               "dgemm");
    return;
  }
  // float32 (optionally TF32), or bfloat16/float16 storage on the tensor cores with float32
  // accumulation and scalars (CUBLAS_COMPUTE_32F), rounded once into the 16-bit output.
  const cudaDataType_t dt = cuda_type(out.dtype());
  const cublasComputeType_t ct = dt == CUDA_R_32F && tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float one = 1.0f, zero = 0.0f;
  check_blas(cublasGemmStridedBatchedEx(h, m.opc, m.opa, m.n, m.m, m.k, &one, m.c.raw_data(), dt, m.ldc, m.strc,
                                        m.a.raw_data(), dt, m.lda, m.stra, &zero, out.raw_data(), dt, m.n, m.stro,
                                        m.batch, ct, CUBLAS_GEMM_DEFAULT),
             dt == CUDA_R_32F ? "sgemm" : "gemm (16-bit)");
}

// bfloat16/float16: the bias joins the float32 accumulator and the output is rounded once (as the
// CPU's gemm_lowp and oneDNN do), through cuBLASLt's bias epilogue; where cuBLASLt has no
// kernel for the case, out starts as the bias rows and the GEMM adds the product to them
// (beta = 1): the same one rounding. float32/float64 keep matmul then add.
void CudaBackend::matmul_bias(const Tensor& a_in, const Tensor& c_in, const Tensor& bias, const Tensor& out) {
  if (out.dtype() != kBFloat16 && out.dtype() != kFloat16) {
    Backend::matmul_bias(a_in, c_in, bias, out);
    return;
  }
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a_in.size(2);
  if (B == 0 || M == 0 || N == 0) return;
  KILN_CHECK(bias.dtype() == out.dtype(), "linear", "bias dtype {} must match the output's {}",
             dtype_name(bias.dtype()), dtype_name(out.dtype()));
  DeviceGuard guard(ctx_.index);
  const Tensor b = bias.stride(0) == 1 ? bias : contiguous_copy(*this, bias);
  const Tensor rows = Tensor::make_view(b, out.shape(), {0, 0, 1}, b.offset());  // bias on every row
  if (K == 0) {  // an empty product: out is the bias (exact, same dtype)
    copy(out, rows);
    return;
  }
  const Gemm m = gemm_of(*this, a_in, c_in, out);
  if (lt_bias_gemm(ctx_, m, b, out)) return;
  copy(out, rows);
  const cudaDataType_t dt = cuda_type(out.dtype());
  const float one = 1.0f;
  check_blas(cublasGemmStridedBatchedEx(handle_for(ctx_), m.opc, m.opa, m.n, m.m, m.k, &one, m.c.raw_data(), dt, m.ldc,
                                        m.strc, m.a.raw_data(), dt, m.lda, m.stra, &one, out.raw_data(), dt, m.n,
                                        m.stro, m.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "gemm (16-bit, bias rows)");
}

}  // namespace kiln::cuda
