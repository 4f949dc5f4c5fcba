#include "activation.hpp"

namespace kiln::nn {

GELUImpl::GELUImpl(const GELUOptions& options_) : Module("GELU"), options(options_) {
  KILN_CHECK(options.approximate() == "none" || options.approximate() == "tanh", "GELU",
             "approximate must be 'none' or 'tanh', got '{}'", options.approximate());
}

std::string GELUImpl::extra_repr() const {
  return options.approximate() == "none" ? std::string() : fmt::format("approximate='{}'", options.approximate());
}

}  // namespace kiln::nn
