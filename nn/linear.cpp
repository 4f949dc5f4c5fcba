#include "linear.hpp"

#include <cmath>

namespace kiln::nn {

LinearImpl::LinearImpl(const LinearOptions& options_) : Module("Linear"), options(options_) {
  KILN_CHECK(options.in_features() >= 0 && options.out_features() >= 0, "Linear",
             "in_features and out_features must be >= 0, got {} and {}", options.in_features(), options.out_features());
  reset();
}

void LinearImpl::reset() {
  weight = register_parameter("weight", empty({options.out_features(), options.in_features()}));
  bias = register_parameter("bias", options.bias() ? empty({options.out_features()}) : Tensor(), options.bias());
  reset_parameters();
}

void LinearImpl::reset_parameters() {
  Generator* gen = options.generator();
  if (options.weight_init()) options.weight_init()(weight, gen);
  else init::kaiming_uniform_(weight, std::sqrt(5.0), "fan_in", "leaky_relu", gen);  // = U(-1/sqrt(in), 1/sqrt(in))
  if (!bias.defined()) return;
  if (options.bias_init()) {
    options.bias_init()(bias, gen);
  } else {
    std::int64_t fan_in = options.in_features();
    double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    init::uniform_(bias, -bound, bound, gen);
  }
}

std::string LinearImpl::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", options.in_features(), options.out_features(),
                     options.bias());
}

Tensor LinearImpl::forward(const Tensor& x) {
  check_floating_input("Linear", x);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == options.in_features(), "Linear",
             "input of shape {} does not match weight of shape {}: expected last dim in_features={}, got {}",
             shape_str(x.shape()), shape_str(weight.shape()), options.in_features(), x.dim() ? x.size(-1) : 0);
  return linear(x, weight, bias);
}

}  // namespace kiln::nn
