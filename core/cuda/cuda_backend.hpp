#pragma once
// The CUDA backend: cuBLAS for float GEMMs, kiln's own kernels (core/cuda/*.cu) for the rest.
// One instance per GPU; every call enqueues work on the device's stream and returns, except
// copies to the host, which wait for their data.
#include "runtime.hpp"

namespace kiln::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(DeviceContext& ctx) : ctx_(ctx) {}
  Allocator& allocator() override { return ctx_.allocator; }
  // Each method is defined beside the kernels it launches; a new fused op adds its
  // declaration here and its kernel + method in one .cu file.
  // backend.cpp: no kernels of its own
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy_from_pinned(const Tensor& dst, const Tensor& src) override;
  // elementwise.cu
  void copy(const Tensor& dst, const Tensor& src) override;
  void fill(const Tensor& dst, const Scalar& v) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) override;
  void binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) override;
  void unary_backward(UnaryOp op, const Tensor& g, const Tensor& v, const Tensor& gx) override;
  // reduce.cu
  void reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) override;
  void arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values, const Tensor& indices) override;
  void softmax(const Tensor& x, const Tensor& out, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                  const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) override;
  void rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy, const Tensor& gx,
                         const Tensor& gweight) override;
  // index.cu
  void index_select(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) override;
  void random(const Tensor& out, const RandomSpec& spec) override;
  void dropout(const Tensor& x, const Tensor& mask, const Tensor& out, const RandomSpec& spec) override;
  // blas.cpp
  void matmul(const Tensor& a, const Tensor& c, const Tensor& out) override;
  void matmul_bias(const Tensor& a, const Tensor& c, const Tensor& bias, const Tensor& out) override;
  // attention.cpp
  void attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights) override;
  void attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                          const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) override;
  void attention_dropout_mask(const AttentionArgs& a, const Tensor& out) override;

  DeviceContext& context() { return ctx_; }
  cudaStream_t stream() const { return ctx_.stream; }

 private:
  DeviceContext& ctx_;
};

}  // namespace kiln::cuda
