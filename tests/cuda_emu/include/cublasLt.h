#pragma once
// Fake cuBLASLt: the descriptor API kiln uses for linear's bias epilogue, on column-major
// matrices. D = alpha op(A) op(B) + beta C, then CUBLASLT_EPILOGUE_BIAS adds bias[row] (one value
// per row of D, packed, in D's type unless CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE says otherwise)
// before the one conversion to D's type; 16-bit A/B/C/D with float32 compute and scalars, as the
// real library's table allows. Attribute sizes, layouts and types are checked as cuBLASLt does
// (CUBLAS_STATUS_INVALID_VALUE / CUBLAS_STATUS_NOT_SUPPORTED); the heuristic offers one algorithm
// for every valid case.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cublas_v2.h"

typedef struct EmuLtContext* cublasLtHandle_t;
inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = reinterpret_cast<cublasLtHandle_t>(0x3);
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

typedef enum {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
  CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
} cublasLtMatmulDescAttributes_t;
typedef enum { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 } cublasLtEpilogue_t;
typedef enum {
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6
} cublasLtMatrixLayoutAttribute_t;
typedef enum {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
} cublasLtMatmulPreferenceAttributes_t;

struct cublasLtMatmulDescOpaque_t {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  std::int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  std::uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  std::int64_t bias_stride = 0;
  std::int32_t bias_type = -1;  // -1: D's type
};
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  std::uint64_t rows, cols;
  std::int64_t ld;
  std::int32_t batch = 1;
  std::int64_t stride = 0;
};
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
struct cublasLtMatmulPreferenceOpaque_t {
  std::uint64_t max_workspace = 0;
  std::uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: the alignment the caller promises
};
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
typedef struct {
  std::uint64_t data[8];
} cublasLtMatmulAlgo_t;
typedef struct {
  cublasLtMatmulAlgo_t algo;
  std::size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;

inline cublasStatus_t emu_lt_invalid(const char* what) {
  std::fprintf(stderr, "EMU cublasLt: invalid value: %s\n", what);
  return CUBLAS_STATUS_INVALID_VALUE;
}

// Copies an attribute whose size must be exactly the documented type's.
template <class T>
inline cublasStatus_t emu_lt_take(T& dst, const void* buf, std::size_t size, const char* what) {
  if (!buf || size != sizeof(T)) return emu_lt_invalid(what);
  std::memcpy(&dst, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute,
                                               cudaDataType_t scale) {
  *d = new cublasLtMatmulDescOpaque_t{compute, scale};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                                     const void* buf, std::size_t size) {
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return emu_lt_take(d->transa, buf, size, "TRANSA (int32_t)");
    case CUBLASLT_MATMUL_DESC_TRANSB: return emu_lt_take(d->transb, buf, size, "TRANSB (int32_t)");
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return emu_lt_take(d->epilogue, buf, size, "EPILOGUE (uint32_t)");
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return emu_lt_take(d->bias, buf, size, "BIAS_POINTER (const void*)");
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
      return emu_lt_take(d->bias_stride, buf, size, "BIAS_BATCH_STRIDE (int64_t)");
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return emu_lt_take(d->bias_type, buf, size, "BIAS_DATA_TYPE (int32_t)");
  }
  return emu_lt_invalid("unknown matmul attribute");
}

inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, std::uint64_t rows,
                                                 std::uint64_t cols, std::int64_t ld) {
  *l = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(const cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                       const void* buf, std::size_t size) {
  if (attr == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) return emu_lt_take(l->batch, buf, size, "BATCH_COUNT (int32_t)");
  if (attr == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET)
    return emu_lt_take(l->stride, buf, size, "STRIDED_BATCH_OFFSET (int64_t)");
  return emu_lt_invalid("unknown layout attribute");
}

inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = new cublasLtMatmulPreferenceOpaque_t{};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                           cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                           std::size_t size) {
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES)
    return emu_lt_take(p->max_workspace, buf, size, "MAX_WORKSPACE_BYTES (uint64_t)");
  if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES)
    return emu_lt_take(p->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, size,
                       "MIN_ALIGNMENT_*_BYTES (uint32_t)");
  return emu_lt_invalid("unknown preference attribute");
}

// The checks shared by the heuristic and the matmul: shapes that chain, leading dimensions that
// hold their rows, one 16-bit type with float32 compute and scalars, one batch layout, and the
// epilogue's bias pointer.
inline cublasStatus_t emu_lt_check(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                   cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d) {
  if (!op || !a || !b || !c || !d) return emu_lt_invalid("null descriptor");
  const std::uint64_t m = op->transa == CUBLAS_OP_T ? a->cols : a->rows,
                      ka = op->transa == CUBLAS_OP_T ? a->rows : a->cols;
  const std::uint64_t kb = op->transb == CUBLAS_OP_T ? b->cols : b->rows,
                      n = op->transb == CUBLAS_OP_T ? b->rows : b->cols;
  if (ka != kb || d->rows != m || d->cols != n || c->rows != m || c->cols != n)
    return emu_lt_invalid("shapes do not chain");
  for (auto* l : {a, b, c, d})
    if (l->ld < static_cast<std::int64_t>(l->rows > 0 ? l->rows : 1)) return emu_lt_invalid("ld < rows");
  if (a->batch != d->batch || b->batch != d->batch || c->batch != d->batch || d->batch < 1)
    return emu_lt_invalid("batch counts differ");
  if (op->compute != CUBLAS_COMPUTE_32F || op->scale != CUDA_R_32F ||
      (a->type != CUDA_R_16BF && a->type != CUDA_R_16F) || b->type != a->type || c->type != a->type ||
      d->type != a->type) {
    std::fprintf(stderr, "EMU cublasLt: only 16-bit A/B/C/D with float32 compute and scale are emulated\n");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (op->epilogue != CUBLASLT_EPILOGUE_DEFAULT && op->epilogue != CUBLASLT_EPILOGUE_BIAS)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op->epilogue == CUBLASLT_EPILOGUE_BIAS) {
    if (!op->bias) return emu_lt_invalid("CUBLASLT_EPILOGUE_BIAS without a bias pointer");
    if (op->bias_type != -1 && op->bias_type != d->type && op->bias_type != CUDA_R_32F)
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t op,
                                                     cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                     cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                     cublasLtMatmulPreference_t pref, int requested,
                                                     cublasLtMatmulHeuristicResult_t* results, int* returned) {
  *returned = 0;
  if (!pref || requested < 1 || !results) return emu_lt_invalid("heuristic arguments");
  if (const cublasStatus_t s = emu_lt_check(op, a, b, c, d); s != CUBLAS_STATUS_SUCCESS) return s;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].algo.data[0] = 0x1b1a5;  // the one emulated algorithm, needing the promised alignments
  for (int i = 0; i < 4; ++i) results[0].algo.data[1 + i] = pref->align[i];
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                                     cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b,
                                     const void* beta, const void* C, cublasLtMatrixLayout_t c, void* D,
                                     cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t* algo, void*, std::size_t,
                                     cudaStream_t) {
  if (const cublasStatus_t s = emu_lt_check(op, a, b, c, d); s != CUBLAS_STATUS_SUCCESS) return s;
  if (!algo || algo->data[0] != 0x1b1a5) return emu_lt_invalid("algorithm not from the heuristic");
  // A kernel chosen for aligned matrices cannot read a less aligned one (the real library fails
  // or faults): the pointers must keep what the preference promised.
  const void* ptrs[4] = {A, B, C, D};
  for (int i = 0; i < 4; ++i)
    if (reinterpret_cast<std::uintptr_t>(ptrs[i]) % algo->data[1 + i] != 0)
      return emu_lt_invalid("a matrix is less aligned than the heuristic was promised");
  const bool bf = d->type == CUDA_R_16BF;
  auto get = [bf](const void* p, long long i) {
    const auto* u = static_cast<const std::uint16_t*>(p) + i;
    return bf ? __bfloat162float(__nv_bfloat16{*u}) : __half2float(__half{*u});
  };
  const bool ta = op->transa == CUBLAS_OP_T, tb = op->transb == CUBLAS_OP_T,
             bias = op->epilogue == CUBLASLT_EPILOGUE_BIAS;
  const bool bias_f32 = op->bias_type == CUDA_R_32F;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const long long m = static_cast<long long>(d->rows), n = static_cast<long long>(d->cols),
                  k = static_cast<long long>(ta ? a->rows : a->cols);
  for (long long bt = 0; bt < d->batch; ++bt)
    for (long long j = 0; j < n; ++j)
      for (long long i = 0; i < m; ++i) {
        float acc = 0;
        for (long long p = 0; p < k; ++p)
          acc += get(A, bt * a->stride + (ta ? p + i * a->ld : i + p * a->ld)) *
                 get(B, bt * b->stride + (tb ? j + p * b->ld : p + j * b->ld));
        float r = al * acc + (be == 0 ? 0.0f : be * get(C, bt * c->stride + i + j * c->ld));
        if (bias) {
          const long long bi = bt * op->bias_stride + i;
          r += bias_f32 ? static_cast<const float*>(op->bias)[bi] : get(op->bias, bi);
        }
        static_cast<std::uint16_t*>(D)[bt * d->stride + i + j * d->ld] = bf ? __float2bfloat16(r).x : __float2half(r).x;
      }
  return CUBLAS_STATUS_SUCCESS;
}
