#pragma once
/// Adagrad (torch.optim.Adagrad): sum += g^2; p -= clr * g / (sqrt(sum) + eps), with the decayed
/// rate clr = lr / (1 + (step - 1) * lr_decay).
///   optim::Adagrad opt(net->parameters(), optim::AdagradOptions(1e-2).lr_decay(1e-3).initial_accumulator_value(0.1));
/// State per parameter: sum (starts at initial_accumulator_value) and the step count.
#include "optimizer.hpp"

namespace kiln::optim {

class AdagradOptions final : public OptionsBase<AdagradOptions> {
 public:
  static constexpr const char* kKind = "AdagradOptions";
  AdagradOptions(double lr = 1e-2) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(double, lr_decay) = 0;
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(double, initial_accumulator_value) = 0;
  KILN_ARG(double, eps) = 1e-10;
  KILN_ARG(bool, maximize) = false;

 public:
  void fields(const OptionFieldFn& f) override {
    field(f, "lr", lr_);
    field(f, "lr_decay", lr_decay_);
    field(f, "weight_decay", weight_decay_);
    field(f, "initial_accumulator_value", initial_accumulator_value_);
    field(f, "eps", eps_);
    field(f, "maximize", maximize_);
  }
};

class Adagrad final : public OptimizerBase<Adagrad, AdagradOptions> {
 public:
  using OptimizerBase::OptimizerBase;

 private:
  friend OptimizerBase;
  static constexpr const char* kName = "Adagrad";
  static std::vector<std::string> buffers() { return {"sum"}; }
  static void check(const AdagradOptions& o, const OptionCheck& check);
  void update_param(const AdagradOptions& o, const Tensor& param, const Tensor& grad, ParamState& st);
};

}  // namespace kiln::optim
