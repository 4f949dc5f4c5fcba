#pragma once
/// RMSprop (torch.optim.RMSprop): square_avg = alpha * square_avg + (1 - alpha) * g^2, optionally
/// centered (subtracting the squared running mean of g) and with momentum.
///   optim::RMSprop opt(net->parameters(), optim::RMSpropOptions(1e-2).alpha(0.9).momentum(0.5).centered(true));
/// State per parameter: square_avg, momentum_buffer (momentum > 0), grad_avg (centered), step.
#include "optimizer.hpp"

namespace kiln::optim {

class RMSpropOptions final : public OptimizerOptions {
 public:
  static constexpr const char* kKind = "RMSpropOptions";
  RMSpropOptions(double lr = 1e-2) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(double, alpha) = 0.99;
  KILN_ARG(double, eps) = 1e-8;
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(double, momentum) = 0;
  KILN_ARG(bool, centered) = false;
  KILN_ARG(bool, maximize) = false;

 public:
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<RMSpropOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class RMSprop final : public Optimizer {
 public:
  RMSprop(std::vector<Tensor> params, RMSpropOptions defaults = {});
  RMSprop(std::vector<ParamGroup> groups, RMSpropOptions defaults = {});

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"square_avg", "momentum_buffer", "grad_avg"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

}  // namespace kiln::optim
