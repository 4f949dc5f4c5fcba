#include "feedforward.hpp"

namespace kiln::nn {

FeedForwardImpl::FeedForwardImpl(const FeedForwardOptions& options_) : Module("FeedForward"), options(options_) {
  KILN_CHECK(options.dim() > 0 && options.hidden_dim() >= 0 && options.out_dim() >= 0, "FeedForward",
             "need dim > 0, hidden_dim >= 0 and out_dim >= 0, got dim={} hidden_dim={} out_dim={}", options.dim(),
             options.hidden_dim(), options.out_dim());
  reset();
}

void FeedForwardImpl::reset() {
  const std::int64_t d = options.dim(), h = hidden_dim();
  fc1 = register_module("fc1", Linear(LinearOptions(d, h).bias(options.bias())));
  if (options.gated()) gate = register_module("gate", Linear(LinearOptions(d, h).bias(options.bias())));
  dropout = register_module("dropout", Dropout(options.dropout()));
  fc2 = register_module("fc2", Linear(LinearOptions(h, out_dim()).bias(options.bias())));
}

std::string FeedForwardImpl::extra_repr() const {
  return fmt::format("dim={}, hidden_dim={}, out_dim={}, activation={}, gated={}", options.dim(), hidden_dim(),
                     out_dim(), to_string(options.activation()), options.gated());
}

Tensor FeedForwardImpl::forward(const Tensor& x) {
  check_floating_input("FeedForward", x);
  KILN_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == options.dim(), "FeedForward",
             "expected input (..., {}), got shape {}", options.dim(), x.defined() ? shape_str(x.shape()) : "undefined");
  Tensor h = fc1(x);
  h = options.gated() ? functional::activation(gate(x), options.activation()) * h
                      : functional::activation(h, options.activation());
  return fc2(dropout(h));
}

}  // namespace kiln::nn
