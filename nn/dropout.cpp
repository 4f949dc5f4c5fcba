#include "dropout.hpp"

namespace kiln::nn {

DropoutImpl::DropoutImpl(const DropoutOptions& options_) : Module("Dropout"), options(options_) {
  KILN_CHECK(options.p() >= 0.0 && options.p() <= 1.0, "Dropout", "probability must be in [0, 1], got {}", options.p());
}

std::string DropoutImpl::extra_repr() const { return fmt::format("p={}", options.p()); }

// Checked in eval mode too (where dropout returns its input), so a dtype bug shows in either mode.
Tensor DropoutImpl::forward(const Tensor& x) {
  check_floating_input("Dropout", x);
  return dropout(x, options.p(), is_training(), options.generator());
}

}  // namespace kiln::nn
