#pragma once
// Fake cuBLAS: column-major strided batched GEMM with cuBLAS's argument checks.
#include "cuda_runtime_api.h"
#include <cmath>
#include "cuda_bf16.h"
#include "cuda_fp16.h"
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
typedef cudaDataType cudaDataType_t;
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
typedef struct cublasContext* cublasHandle_t;
inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = reinterpret_cast<cublasHandle_t>(0x2); return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void*, std::size_t) { return CUBLAS_STATUS_SUCCESS; }
inline const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "ok" : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_NOT_SUPPORTED";
}
inline float emu_tf32(float x) {  // keep 10 mantissa bits (round to nearest even-ish)
  unsigned u; std::memcpy(&u, &x, 4);
  u = (u + 0x1000u) & ~0x1FFFu;
  std::memcpy(&x, &u, 4);
  return x;
}
template <class T>
inline void emu_gemm(bool ta, bool tb, int m, int n, int k, T alpha, const T* A, int lda, long long sa, const T* B, int ldb,
                     long long sb, T beta, T* C, int ldc, long long sc, int batch, bool tf32) {
  for (int b = 0; b < batch; ++b)
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double acc = 0;
        for (int p = 0; p < k; ++p) {
          T a = ta ? A[b * sa + p + static_cast<long long>(i) * lda] : A[b * sa + i + static_cast<long long>(p) * lda];
          T bb = tb ? B[b * sb + j + static_cast<long long>(p) * ldb] : B[b * sb + p + static_cast<long long>(j) * ldb];
          if constexpr (sizeof(T) == 4) if (tf32) { a = emu_tf32(a); bb = emu_tf32(bb); }
          acc += static_cast<double>(a) * bb;
        }
        T& c = C[b * sc + i + static_cast<long long>(j) * ldc];
        c = static_cast<T>(alpha * acc + (beta == T(0) ? 0.0 : static_cast<double>(beta * c)));
      }
}
inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                                 int k, const void* alpha, const void* A, cudaDataType at, int lda,
                                                 long long sa, const void* B, cudaDataType, int ldb, long long sb,
                                                 const void* beta, void* C, cudaDataType, int ldc, long long sc,
                                                 int batch, cublasComputeType_t ct, cublasGemmAlgo_t) {
  const int arows = ta ? k : m, brows = tb ? n : k;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, arows) || ldb < std::max(1, brows) || ldc < std::max(1, m)) {
    std::fprintf(stderr, "EMU cublas: invalid value m=%d n=%d k=%d lda=%d ldb=%d ldc=%d ta=%d tb=%d\n", m, n, k, lda,
                 ldb, ldc, ta, tb);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (at == CUDA_R_16F || at == CUDA_R_16BF) {  // 16-bit storage, float32 compute and scalars
    const bool bf = at == CUDA_R_16BF;
    auto get = [bf](const void* p, long long i) {
      const auto* u = static_cast<const std::uint16_t*>(p) + i;
      return bf ? __bfloat162float(__nv_bfloat16{*u}) : __half2float(__half{*u});
    };
    for (int b = 0; b < batch; ++b)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
          float acc = 0;
          for (int p = 0; p < k; ++p)
            acc += get(A, b * sa + (ta ? p + static_cast<long long>(i) * lda : i + static_cast<long long>(p) * lda)) *
                   get(B, b * sb + (tb ? j + static_cast<long long>(p) * ldb : p + static_cast<long long>(j) * ldb));
          const long long o = b * sc + i + static_cast<long long>(j) * ldc;
          const float beta_v = *static_cast<const float*>(beta);
          const float r = *static_cast<const float*>(alpha) * acc + (beta_v == 0 ? 0.0f : beta_v * get(C, o));
          static_cast<std::uint16_t*>(C)[o] = bf ? __float2bfloat16(r).x : __float2half(r).x;
        }
  } else if (at == CUDA_R_32F)
    emu_gemm<float>(ta, tb, m, n, k, *static_cast<const float*>(alpha), static_cast<const float*>(A), lda, sa,
                    static_cast<const float*>(B), ldb, sb, *static_cast<const float*>(beta), static_cast<float*>(C), ldc,
                    sc, batch, ct == CUBLAS_COMPUTE_32F_FAST_TF32);
  else
    emu_gemm<double>(ta, tb, m, n, k, *static_cast<const double*>(alpha), static_cast<const double*>(A), lda, sa,
                     static_cast<const double*>(B), ldb, sb, *static_cast<const double*>(beta), static_cast<double*>(C),
                     ldc, sc, batch, false);
  return CUBLAS_STATUS_SUCCESS;
}
