#include "normalization.hpp"

#include "functional.hpp"

namespace kiln::nn {

namespace {
void check_shape(const Shape& s, const char* op) {
  bool ok = !s.empty();
  for (auto d : s) ok = ok && d > 0;
  KILN_CHECK(ok, op, "normalized_shape must be non-empty with positive sizes, got {}", shape_str(s));
}

std::string shape_repr(const Shape& s) { return shape_str(s); }
}  // namespace

LayerNormImpl::LayerNormImpl(const LayerNormOptions& options_) : Module("LayerNorm"), options(options_) {
  check_shape(options.normalized_shape(), "LayerNorm");
  KILN_CHECK(options.eps() >= 0, "LayerNorm", "eps must be >= 0, got {}", options.eps());
  reset();
}

void LayerNormImpl::reset() {
  const bool affine = options.elementwise_affine();
  weight = register_parameter("weight", affine ? empty(options.normalized_shape()) : Tensor(), affine);
  bias = register_parameter("bias", affine && options.bias() ? empty(options.normalized_shape()) : Tensor(),
                            affine && options.bias());
  reset_parameters();
}

void LayerNormImpl::reset_parameters() {
  if (weight.defined()) init::ones_(weight);
  if (bias.defined()) init::zeros_(bias);
}

std::string LayerNormImpl::extra_repr() const {
  return fmt::format("{}, eps={}, elementwise_affine={}, bias={}", shape_repr(options.normalized_shape()),
                     options.eps(), options.elementwise_affine(), options.bias());
}

Tensor LayerNormImpl::forward(const Tensor& x) {
  check_floating_input("LayerNorm", x);
  return layer_norm(x, options.normalized_shape(), weight, bias, options.eps());
}

RMSNormImpl::RMSNormImpl(const RMSNormOptions& options_) : Module("RMSNorm"), options(options_) {
  check_shape(options.normalized_shape(), "RMSNorm");
  if (auto e = options.eps()) KILN_CHECK(*e >= 0, "RMSNorm", "eps must be >= 0, got {}", *e);
  reset();
}

void RMSNormImpl::reset() {
  const bool affine = options.elementwise_affine();
  weight = register_parameter("weight", affine ? empty(options.normalized_shape()) : Tensor(), affine);
  reset_parameters();
}

void RMSNormImpl::reset_parameters() {
  if (weight.defined()) init::ones_(weight);
}

std::string RMSNormImpl::extra_repr() const {
  std::string eps = options.eps() ? fmt::format("{}", *options.eps()) : "auto";
  return fmt::format("{}, eps={}, elementwise_affine={}", shape_repr(options.normalized_shape()), eps,
                     options.elementwise_affine());
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  check_floating_input("RMSNorm", x);
  return functional::rms_norm(x, options.normalized_shape(), weight, options.eps());
}

const char* to_string(Norm kind) {
  switch (kind) {
    case Norm::LayerNorm: return "layer_norm";
    case Norm::RMSNorm: return "rms_norm";
    case Norm::None: break;
  }
  return "none";
}

std::shared_ptr<Module> make_norm(Norm kind, std::int64_t dim, std::optional<double> eps, bool bias) {
  switch (kind) {
    case Norm::LayerNorm: return LayerNorm(LayerNormOptions({dim}).eps(eps.value_or(1e-5)).bias(bias)).ptr();
    case Norm::RMSNorm: return RMSNorm(RMSNormOptions({dim}).eps(eps)).ptr();
    case Norm::None: break;
  }
  return nullptr;
}

}  // namespace kiln::nn
