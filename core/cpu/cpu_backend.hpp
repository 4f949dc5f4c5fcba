#pragma once
// The CPU backend: Eigen for vectorized math and the BLAS fallback, OpenBLAS
// (loaded at run time) for float GEMM, OpenMP for threads.
#include "../backend.hpp"

namespace kiln::cpu {

class CpuBackend final : public Backend {
 public:
  Allocator& allocator() override { return cpu_allocator(); }
  void copy(const Tensor& dst, const Tensor& src) override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void fill(const Tensor& dst, const Scalar& v) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) override;
  void binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) override;
  void arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values, const Tensor& indices) override;
  void matmul(const Tensor& a, const Tensor& c, const Tensor& out) override;
  void matmul_bias(const Tensor& a, const Tensor& c, const Tensor& bias, const Tensor& out) override;
  void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& gx, const Tensor& gw) override;
  void index_select(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) override;
  void softmax(const Tensor& x, const Tensor& out, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                  const Tensor& mean, const Tensor& rstd) override;
  void random(const Tensor& out, const RandomSpec& spec) override;
  void dropout(const Tensor& x, const Tensor& mask, const Tensor& out, const RandomSpec& spec) override;
  // unary_backward.cpp, norm.cpp
  void unary_backward(UnaryOp op, const Tensor& g, const Tensor& v, const Tensor& gx) override;
  void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) override;
  void rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy, const Tensor& gx,
                         const Tensor& gweight) override;
  // attention.cpp
  void attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights) override;
  void attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                          const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) override;
  void attention_dropout_mask(const AttentionArgs& a, const Tensor& out) override;
  bool attention_has_extensions() const override { return true; }
};

Backend& cpu_backend();

// The bfloat16/float16 seams (shapes and semantics as the Backend methods they serve). Today they
// convert to float32, run the float32 kernels and round each output once; native 16-bit kernels
// replace their bodies.
/// out = a @ c (Backend::matmul) for bfloat16/float16 a, c, out (blas.cpp); with `bias` (N floats)
/// out = a @ c + bias, rounded once.
void reduced_matmul(CpuBackend& be, const Tensor& a, const Tensor& c, const Tensor& out, const float* bias = nullptr);
/// Backend::attention_forward / attention_backward for bfloat16/float16 q, k, v; lse is float32
/// (attention.cpp).
void reduced_attention_forward(CpuBackend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                               const Tensor& weights);
void reduced_attention_backward(CpuBackend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                const Tensor& gout, const Tensor& weights, const Tensor& gweights,
                                const AttentionGrads& grads);

/// Which GEMM kiln uses on the CPU: "openblas (<config>, core <name>)" or "eigen".
const char* blas_info();
void blas_set_num_threads(int n);

}  // namespace kiln::cpu
