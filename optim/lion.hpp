#pragma once
/// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a sign update of
/// an interpolated momentum with decoupled weight decay:
///   p *= 1 - lr * wd;  p -= lr * sign(beta1 * m + (1 - beta1) * g);  m = beta2 * m + (1 - beta2) * g
///   optim::Lion opt(net->parameters(), optim::LionOptions(1e-4).betas({0.9, 0.99}).weight_decay(0.1));
/// Use a learning rate 3-10x smaller than AdamW's. State per parameter: exp_avg and the step count.
#include "optimizer.hpp"

namespace kiln::optim {

class LionOptions final : public OptionsBase<LionOptions> {
 public:
  static constexpr const char* kKind = "LionOptions";
  LionOptions(double lr = 1e-4) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(Betas, betas) = {0.9, 0.99};
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(bool, maximize) = false;

 public:
  void fields(const OptionFieldFn& f) override {
    field(f, "lr", lr_);
    field(f, "betas", betas_);
    field(f, "weight_decay", weight_decay_);
    field(f, "maximize", maximize_);
  }
};

class Lion final : public OptimizerBase<Lion, LionOptions> {
 public:
  using OptimizerBase::OptimizerBase;

 private:
  friend OptimizerBase;
  static constexpr const char* kName = "Lion";
  static std::vector<std::string> buffers() { return {"exp_avg"}; }
  static void check(const LionOptions& o, const OptionCheck& check);
  void update_param(const LionOptions& o, const Tensor& param, const Tensor& grad, ParamState& st);
};

}  // namespace kiln::optim
