#pragma once
/// RMSprop (torch.optim.RMSprop): square_avg = alpha * square_avg + (1 - alpha) * g^2, optionally
/// centered (subtracting the squared running mean of g) and with momentum.
///   optim::RMSprop opt(net->parameters(), optim::RMSpropOptions(1e-2).alpha(0.9).momentum(0.5).centered(true));
/// State per parameter: square_avg, momentum_buffer (momentum > 0), grad_avg (centered), step.
#include "optimizer.hpp"

namespace kiln::optim {

class RMSpropOptions final : public OptionsBase<RMSpropOptions> {
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
  void fields(const OptionFieldFn& f) override {
    field(f, "lr", lr_);
    field(f, "alpha", alpha_);
    field(f, "eps", eps_);
    field(f, "weight_decay", weight_decay_);
    field(f, "momentum", momentum_);
    field(f, "centered", centered_);
    field(f, "maximize", maximize_);
  }
};

class RMSprop final : public OptimizerBase<RMSprop, RMSpropOptions> {
 public:
  using OptimizerBase::OptimizerBase;

 private:
  friend OptimizerBase;
  static constexpr const char* kName = "RMSprop";
  static std::vector<std::string> buffers() { return {"square_avg", "momentum_buffer", "grad_avg"}; }
  static void check(const RMSpropOptions& o, const OptionCheck& check);
  void update_param(const RMSpropOptions& o, const Tensor& param, const Tensor& grad, ParamState& st);
};

}  // namespace kiln::optim
