#pragma once
/// Adagrad (torch.optim.Adagrad): sum += g^2; p -= clr * g / (sqrt(sum) + eps), with the decayed
/// rate clr = lr / (1 + (step - 1) * lr_decay).
///   optim::Adagrad opt(net->parameters(), optim::AdagradOptions(1e-2).lr_decay(1e-3).initial_accumulator_value(0.1));
/// State per parameter: sum (starts at initial_accumulator_value) and the step count.
#include "optimizer.hpp"

namespace kiln::optim {

class AdagradOptions final : public OptimizerOptions {
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
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdagradOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class Adagrad final : public Optimizer {
 public:
  Adagrad(std::vector<Tensor> params, AdagradOptions defaults = {});
  Adagrad(std::vector<ParamGroup> groups, AdagradOptions defaults = {});

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"sum"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

}  // namespace kiln::optim
