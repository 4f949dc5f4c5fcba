#pragma once
/// nn::LayerNorm and nn::RMSNorm over the trailing dims `normalized_shape`.
///   nn::LayerNorm ln(512);                                         // weight 1, bias 0
///   nn::LayerNorm ln2(nn::LayerNormOptions({8, 16}).eps(1e-6).bias(false));
///   nn::RMSNorm rms(nn::RMSNormOptions({512}).eps(1e-6));          // x * rsqrt(mean(x^2) + eps) * weight
///   auto n = nn::make_norm(nn::Norm::RMSNorm, 512);                // what layers choosing a norm build
#include <cstdint>
#include <memory>
#include <optional>

#include "init.hpp"
#include "module.hpp"

namespace kiln::nn {

struct LayerNormOptions {
  LayerNormOptions(Shape normalized_shape) : normalized_shape_(std::move(normalized_shape)) {}
  KILN_ARG(Shape, normalized_shape);
  KILN_ARG(double, eps) = 1e-5;
  /// Learnable weight (ones) and, when `bias`, bias (zeros).
  KILN_ARG(bool, elementwise_affine) = true;
  KILN_ARG(bool, bias) = true;
};

class LayerNormImpl : public Module {
 public:
  explicit LayerNormImpl(std::int64_t dim) : LayerNormImpl(LayerNormOptions({dim})) {}
  explicit LayerNormImpl(const LayerNormOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x);

  LayerNormOptions options;
  Tensor weight;  // normalized_shape, or undefined
  Tensor bias;    // normalized_shape, or undefined
};
KILN_MODULE(LayerNorm);

struct RMSNormOptions {
  RMSNormOptions(Shape normalized_shape) : normalized_shape_(std::move(normalized_shape)) {}
  KILN_ARG(Shape, normalized_shape);
  /// Default (nullopt): the machine epsilon of the type the norm computes in (float64's for
  /// float64 input, float32's for float32/bfloat16/float16), as torch.nn.RMSNorm does.
  KILN_ARG(std::optional<double>, eps) = std::nullopt;
  KILN_ARG(bool, elementwise_affine) = true;
};

class RMSNormImpl : public Module {
 public:
  explicit RMSNormImpl(std::int64_t dim) : RMSNormImpl(RMSNormOptions({dim})) {}
  explicit RMSNormImpl(const RMSNormOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x);

  RMSNormOptions options;
  Tensor weight;  // normalized_shape, or undefined
};
KILN_MODULE(RMSNorm);

/// The normalization a composite layer builds (MultiHeadAttention's qk_norm, the transformer
/// layers' norm): `.norm(nn::Norm::RMSNorm)`.
enum class Norm { None, LayerNorm, RMSNorm };
/// "none", "layer_norm" or "rms_norm" (what modules print).
const char* to_string(Norm kind);
/// A LayerNorm (eps default 1e-5, bias when `bias`) or an RMSNorm (eps default: the input
/// compute type's machine epsilon) over (dim,); null for Norm::None.
std::shared_ptr<Module> make_norm(Norm kind, std::int64_t dim, std::optional<double> eps = std::nullopt,
                                  bool bias = true);

}  // namespace kiln::nn
