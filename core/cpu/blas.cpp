// Batched matmul. Float GEMM goes to OpenBLAS, loaded at run time with
// dlopen so kiln can choose its kernel set (see README "OpenBLAS core type");
// Eigen's GEMM is the fallback and handles int64.
#include <dlfcn.h>

#include <fmt/format.h>
#include <Eigen/Core>
#include <cstdlib>
#include <mutex>
#include <string>

#include "cpu_backend.hpp"
#include "gemm_lowp.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {

enum CblasOrder { RowMajor = 101 };
enum CblasTrans { NoTrans = 111, Trans = 112 };
using sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using dgemm_t = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*,
                         int);
using set_threads_t = void (*)(int);
using get_str_t = char* (*)();

struct Blas {
  sgemm_t sgemm = nullptr;
  dgemm_t dgemm = nullptr;
  set_threads_t set_threads = nullptr;
  std::string info = "eigen";
};

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

Blas load_blas() {
  Blas b;
  if (const char* off = std::getenv("KILN_BLAS"); off && std::string(off) == "eigen") return b;
  // The core type is chosen when OpenBLAS loads. kiln picks the widest kernels the CPU
  // runs (an inherited OPENBLAS_CORETYPE=Haswell halves GEMM speed on AVX-512 parts);
  // KILN_OPENBLAS_CORETYPE overrides the choice. The process environment is restored after.
  std::string core;
  if (const char* c = std::getenv("KILN_OPENBLAS_CORETYPE")) core = c;
  else if (cpu_has_avx512()) core = "SkylakeX";
  const char* prev = std::getenv("OPENBLAS_CORETYPE");
  std::string prev_val = prev ? prev : "";
  if (!core.empty()) setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  void* h = nullptr;
  // The OpenMP build shares kiln's thread pool; the pthread build would add a second one.
  for (const char* name :
       {"/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", "libopenblasp.so.0", "libopenblas.so.0"}) {
    h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (h) break;
  }
  if (!core.empty()) {
    if (prev) setenv("OPENBLAS_CORETYPE", prev_val.c_str(), 1);
    else unsetenv("OPENBLAS_CORETYPE");
  }
  if (!h) return b;
  b.sgemm = reinterpret_cast<sgemm_t>(dlsym(h, "cblas_sgemm"));
  b.dgemm = reinterpret_cast<dgemm_t>(dlsym(h, "cblas_dgemm"));
  b.set_threads = reinterpret_cast<set_threads_t>(dlsym(h, "openblas_set_num_threads"));
  auto corename = reinterpret_cast<get_str_t>(dlsym(h, "openblas_get_corename"));
  auto config = reinterpret_cast<get_str_t>(dlsym(h, "openblas_get_config"));
  if (!b.sgemm || !b.dgemm) {
    b.sgemm = nullptr;
    b.dgemm = nullptr;
    return b;
  }
  b.info = fmt::format("openblas ({}, core {})", config ? config() : "?", corename ? corename() : "?");
  if (b.set_threads) b.set_threads(get_num_threads());
  return b;
}

Blas& blas() {
  static Blas b = load_blas();
  return b;
}

// How a (rows, cols) matrix view maps to a BLAS operand; copies when neither layout fits.
struct MatArg {
  bool trans = false;
  std::int64_t ld = 0;
};
bool blas_layout(std::int64_t rows, std::int64_t cols, std::int64_t rs, std::int64_t cs, MatArg& m) {
  if (cs == 1 && (rs >= std::max<std::int64_t>(cols, 1) || rows == 1)) {
    m = {false, std::max<std::int64_t>(rows == 1 ? cols : rs, 1)};
    return true;
  }
  if (rs == 1 && (cs >= std::max<std::int64_t>(rows, 1) || cols == 1)) {
    m = {true, std::max<std::int64_t>(cols == 1 ? rows : cs, 1)};
    return true;
  }
  return false;
}

// x (batch, rows, cols) as BLAS takes it: x itself where its strides fit (m says how), else a
// contiguous copy.
Tensor blas_operand(CpuBackend& be, const Tensor& x, std::int64_t rows, std::int64_t cols, MatArg& m) {
  if (blas_layout(rows, cols, x.stride(1), x.stride(2), m)) return x;
  Tensor copy = Tensor::empty(x.shape(), x.dtype(), x.device());
  be.copy(copy, x);
  blas_layout(rows, cols, copy.stride(1), copy.stride(2), m);
  return copy;
}

template <typename T>
void eigen_gemm(const T* a, std::int64_t ars, std::int64_t acs, const T* c, std::int64_t crs, std::int64_t ccs, T* o,
                std::int64_t M, std::int64_t K, std::int64_t N, bool accumulate) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Str = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<const Mat, 0, Str> A(a, M, K, Str(ars, acs));
  Eigen::Map<const Mat, 0, Str> C(c, K, N, Str(crs, ccs));
  Eigen::Map<Mat> O(o, M, N);
  if (accumulate) O.noalias() += A * C;
  else O.noalias() = A * C;
}

}  // namespace

void sgemm_rowmajor(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const float* a,
                    std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (blas().sgemm) {
    blas().sgemm(RowMajor, ta ? Trans : NoTrans, tb ? Trans : NoTrans, int(M), int(N), int(K), alpha, a, int(lda), b,
                 int(ldb), beta, c, int(ldc));
    return;
  }
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Str = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<const Mat, 0, Str> A(a, M, K, ta ? Str(1, lda) : Str(lda, 1));
  Eigen::Map<const Mat, 0, Str> B(b, K, N, tb ? Str(1, ldb) : Str(ldb, 1));
  Eigen::Map<Mat, 0, Eigen::OuterStride<>> C(c, M, N, Eigen::OuterStride<>(ldc));
  if (beta == 0.0f) C.noalias() = alpha * (A * B);  // as BLAS: C's old contents (NaN too) ignored
  else C = beta * C + alpha * (A * B);
}

const char* blas_info() { return blas().info.c_str(); }
void blas_set_num_threads(int n) {
  if (blas().set_threads) blas().set_threads(n);
}

// bfloat16/float16: gemm_lowp (oneDNN bf16 where bf16 dot products pay, see bf16_dot.hpp; else
// a float32 GEMM on converted operands), float32 accumulation (bias included), one rounding into
// `out`.
void reduced_matmul(CpuBackend& be, const Tensor& a, const Tensor& c, const Tensor& out, const float* bias) {
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  MatArg ma, mc;
  const Tensor A = blas_operand(be, a, M, K, ma), C = blas_operand(be, c, K, N, mc);
  GemmDims d;
  d.batch = B, d.M = M, d.N = N, d.K = K, d.ta = ma.trans, d.tb = mc.trans;
  d.lda = ma.ld, d.sa = B > 1 ? A.stride(0) : 0, d.ldb = mc.ld, d.sb = B > 1 ? C.stride(0) : 0, d.ldc = N, d.sc = M * N;
  d.bias = bias;
  if (out.dtype() == kBFloat16) gemm_lowp(d, A.data_ptr<BFloat16>(), C.data_ptr<BFloat16>(), out.data_ptr<BFloat16>());
  else gemm_lowp(d, A.data_ptr<Half>(), C.data_ptr<Half>(), out.data_ptr<Half>());
}

namespace {

// Linear's backward where 16-bit GEMMs run in float32 (gemm_lowp_widens): g is converted once and
// both GEMMs read that copy; x and w are converted inside their GEMM as before. The products,
// their summation and the one rounding of each output are those of two reduced_matmul calls.
template <typename T>
void reduced_linear_backward(CpuBackend& be, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& gx,
                             const Tensor& gw) {
  const std::int64_t R = g.size(0), N = g.size(1);
  auto m3 = [](const Tensor& t) {
    return Tensor::make_view(t, {1, t.size(0), t.size(1)}, {0, t.stride(0), t.stride(1)}, t.offset());
  };
  MatArg mg;
  const Tensor G = blas_operand(be, m3(g), R, N, mg);
  // The float32 copy keeps g's stored orientation: (R, N) rows, or (N, R) rows when transposed.
  const Tensor gf = widen_matrices(G.data_ptr<T>(), 1, mg.trans ? N : R, mg.trans ? R : N, mg.ld, 0);
  const LowpOperand<T> ga{G.data_ptr<T>(), gf.data_ptr<float>(), mg.trans ? R : N, 0};
  auto run = [&](const Tensor& b, bool ta, const Tensor& out) {  // out = op(g) @ b
    const std::int64_t M = out.size(0), Nn = out.size(1), Kk = ta ? R : N;
    MatArg mb;
    const Tensor B = blas_operand(be, m3(b), Kk, Nn, mb);
    GemmDims d;
    d.M = M, d.N = Nn, d.K = Kk, d.ta = ta != mg.trans, d.tb = mb.trans, d.lda = mg.ld, d.ldb = mb.ld, d.ldc = Nn;
    gemm_lowp(d, ga, LowpOperand<T>{B.data_ptr<T>()}, out.data_ptr<T>());
  };
  if (gx.defined()) run(w, false, gx);
  if (gw.defined()) run(x, true, gw);
}

// out[b] = a[b] @ c[b] (+ out[b] when `accumulate`: BLAS beta = 1) for float32/float64/int64.
template <typename T>
void dense_matmul(CpuBackend& be, const Tensor& a, const Tensor& c, const Tensor& out, bool accumulate) {
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  T* o = out.data_ptr<T>();
  if (K == 0) {
    if (!accumulate) std::fill(o, o + B * M * N, T(0));
    return;
  }
  MatArg ma, mc;
  const Tensor A = blas_operand(be, a, M, K, ma), C = blas_operand(be, c, K, N, mc);
  const T* pa = A.data_ptr<T>();
  const T* pc = C.data_ptr<T>();
  const std::int64_t sa = A.stride(0), sc = C.stride(0);
  const T beta = accumulate ? T(1) : T(0);
  auto one = [&](std::int64_t b) {
    const T* ab = pa + b * sa;
    const T* cb = pc + b * sc;
    T* ob = o + b * M * N;
    if constexpr (std::is_same_v<T, float>) {
      if (blas().sgemm) {
        blas().sgemm(RowMajor, ma.trans ? Trans : NoTrans, mc.trans ? Trans : NoTrans, int(M), int(N), int(K), 1.0f, ab,
                     int(ma.ld), cb, int(mc.ld), beta, ob, int(N));
        return;
      }
    } else if constexpr (std::is_same_v<T, double>) {
      if (blas().dgemm) {
        blas().dgemm(RowMajor, ma.trans ? Trans : NoTrans, mc.trans ? Trans : NoTrans, int(M), int(N), int(K), 1.0, ab,
                     int(ma.ld), cb, int(mc.ld), beta, ob, int(N));
        return;
      }
    }
    eigen_gemm<T>(ab, A.stride(1), A.stride(2), cb, C.stride(1), C.stride(2), ob, M, K, N, accumulate);
  };
  // Small matrices: one GEMM per thread over the batch; large ones: threaded GEMM each.
  const std::int64_t flops = M * N * K;
  if (B > 1 && flops < (std::int64_t{1} << 21)) {
    parallel_range(B, std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(flops, 1)),
                   [&](std::int64_t b0, std::int64_t b1) {
                     for (std::int64_t b = b0; b < b1; ++b) one(b);
                   });
  } else {
    for (std::int64_t b = 0; b < B; ++b) one(b);
  }
}

}  // namespace

void CpuBackend::matmul(const Tensor& a, const Tensor& c, const Tensor& out) {
  const std::int64_t B = out.size(0), M = out.size(1), N = out.size(2);
  if (B == 0 || M == 0 || N == 0) return;
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_same_v<T, bool>) throw_error("matmul", "bool tensors are not supported");
    else if constexpr (is_reduced_float_v<T>) reduced_matmul(*this, a, c, out);
    else dense_matmul<T>(*this, a, c, out, false);
  });
}

void CpuBackend::linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& gx,
                                 const Tensor& gw) {
  const DType dt = g.dtype();
  if (!is_reduced_float(dt) || !gemm_lowp_widens(dt == kBFloat16) || g.numel() == 0 || w.size(1) == 0) {
    Backend::linear_backward(g, x, w, gx, gw);
    return;
  }
  if (dt == kBFloat16) reduced_linear_backward<BFloat16>(*this, g, x, w, gx, gw);
  else reduced_linear_backward<Half>(*this, g, x, w, gx, gw);
}

// float32/float64: out's rows start as the bias and the GEMM adds the product onto them (beta = 1),
// which spares BLAS's zeroing pass and a separate broadcast add over the output. bfloat16/float16:
// the bias joins the float32 accumulator before the one rounding (as oneDNN's and cuBLASLt's bias
// epilogues do), not a rounded product plus a rounded add.
void CpuBackend::matmul_bias(const Tensor& a, const Tensor& c, const Tensor& bias, const Tensor& out) {
  const std::int64_t rows = out.size(0) * out.size(1), N = out.size(2);
  if (rows == 0 || N == 0) return;
  if (out.dtype() == kBFloat16 || out.dtype() == kFloat16) {
    Tensor fb = Tensor::empty({N}, kFloat32, Device::cpu());
    copy(fb, bias);
    reduced_matmul(*this, a, c, out, fb.data_ptr<float>());
    return;
  }
  if (out.dtype() != kFloat32 && out.dtype() != kFloat64) {
    Backend::matmul_bias(a, c, bias, out);
    return;
  }
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* pb = bias.data_ptr<T>();
      const std::int64_t bs = bias.stride(0);
      T* o = out.data_ptr<T>();
      parallel_range(rows, std::max<std::int64_t>(1, kParallelGrain / N), [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r) {
          T* row = o + r * N;
          if (bs == 1) std::copy(pb, pb + N, row);
          else
            for (std::int64_t j = 0; j < N; ++j) row[j] = pb[j * bs];
        }
      });
      dense_matmul<T>(*this, a, c, out, true);
    }
  });
}

}  // namespace kiln::cpu
