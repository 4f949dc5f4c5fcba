#pragma once
/// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay
/// (torch.optim.SGD): d = g + wd * p; buf = momentum * buf + (1 - dampening) * d (buf = d on the
/// first step); d = nesterov ? d + momentum * buf : buf; p -= lr * d.
///   optim::SGD opt(net->parameters(), optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(1e-4));
#include "optimizer.hpp"

namespace kiln::optim {

class SGDOptions final : public OptimizerOptions {
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
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<SGDOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class SGD final : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions defaults);
  SGD(std::vector<ParamGroup> groups, SGDOptions defaults);

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

}  // namespace kiln::optim
