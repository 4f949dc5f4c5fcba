#pragma once
/// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay
/// (torch.optim.SGD): d = g + wd * p; buf = momentum * buf + (1 - dampening) * d (buf = d on the
/// first step); d = nesterov ? d + momentum * buf : buf; p -= lr * d.
///   optim::SGD opt(net->parameters(), optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(1e-4));
#include "optimizer.hpp"

namespace kiln::optim {

class SGDOptions final : public OptionsBase<SGDOptions> {
 public:
  static constexpr const char* kKind = "SGDOptions";
  SGDOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(double, momentum) = 0;
  KILN_ARG(double, dampening) = 0;
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(bool, nesterov) = false;
  KILN_ARG(bool, maximize) = false;

 public:
  void fields(const OptionFieldFn& f) override {
    field(f, "lr", lr_);
    field(f, "momentum", momentum_);
    field(f, "dampening", dampening_);
    field(f, "weight_decay", weight_decay_);
    field(f, "nesterov", nesterov_);
    field(f, "maximize", maximize_);
  }
};

class SGD final : public OptimizerBase<SGD, SGDOptions> {
 public:
  using OptimizerBase::OptimizerBase;

 private:
  friend OptimizerBase;
  static constexpr const char* kName = "SGD";
  static std::vector<std::string> buffers() { return {"momentum_buffer"}; }
  static void check(const SGDOptions& o, const OptionCheck& check);
  void update_param(const SGDOptions& o, const Tensor& param, const Tensor& grad, ParamState& st);
};

}  // namespace kiln::optim
