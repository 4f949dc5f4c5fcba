#pragma once
/// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a sign update of
/// an interpolated momentum with decoupled weight decay:
///   p *= 1 - lr * wd;  p -= lr * sign(beta1 * m + (1 - beta1) * g);  m = beta2 * m + (1 - beta2) * g
///   optim::Lion opt(net->parameters(), optim::LionOptions(1e-4).betas({0.9, 0.99}).weight_decay(0.1));
/// Use a learning rate 3-10x smaller than AdamW's. State per parameter: exp_avg and the step count.
#include "adam.hpp"

namespace kiln::optim {

class LionOptions final : public OptimizerOptions {
 public:
  static constexpr const char* kKind = "LionOptions";
  LionOptions(double lr = 1e-4) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(Betas, betas) = {0.9, 0.99};
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(bool, maximize) = false;

 public:
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<LionOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class Lion final : public Optimizer {
 public:
  Lion(std::vector<Tensor> params, LionOptions defaults = {});
  Lion(std::vector<ParamGroup> groups, LionOptions defaults = {});

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"exp_avg"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

}  // namespace kiln::optim
