#include "activation.hpp"

namespace kiln::nn {

GELUImpl::GELUImpl(const GELUOptions& options_) : Module("GELU"), options(options_) {
  KILN_CHECK(options.approximate() == "none" || options.approximate() == "tanh", "GELU",
             "approximate must be 'none' or 'tanh', got '{}'", options.approximate());
}

std::string GELUImpl::extra_repr() const {
  return options.approximate() == "none" ? std::string() : fmt::format("approximate='{}'", options.approximate());
}

Tensor GELUImpl::forward(const Tensor& x) {
  check_floating_input("GELU", x);
  return gelu(x, options.approximate());
}

Tensor SiLUImpl::forward(const Tensor& x) {
  check_floating_input("SiLU", x);
  return silu(x);
}

Tensor TanhImpl::forward(const Tensor& x) {
  check_floating_input("Tanh", x);
  return kiln::tanh(x);
}

Tensor SigmoidImpl::forward(const Tensor& x) {
  check_floating_input("Sigmoid", x);
  return sigmoid(x);
}

}  // namespace kiln::nn
