#pragma once
/// Adam and AdamW (torch.optim.Adam / AdamW), with bias correction and the AMSGrad variant.
/// Adam adds weight decay to the gradient (L2); AdamW decays the weights directly,
/// p *= 1 - lr * weight_decay, before the Adam step.
///   optim::Adam opt(net->parameters(), optim::AdamOptions(1e-3).betas({0.9, 0.999}).amsgrad(true));
///   optim::AdamW opt2(net->parameters(), optim::AdamWOptions(3e-4).betas({0.9, 0.95}).weight_decay(0.1));
/// State per parameter: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad) and the step count.
#include <utility>

#include "optimizer.hpp"

namespace kiln::optim {

using Betas = std::pair<double, double>;

class AdamOptions final : public OptimizerOptions {
 public:
  static constexpr const char* kKind = "AdamOptions";
  AdamOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(Betas, betas) = {0.9, 0.999};
  KILN_ARG(double, eps) = 1e-8;
  KILN_ARG(double, weight_decay) = 0;
  KILN_ARG(bool, amsgrad) = false;
  KILN_ARG(bool, maximize) = false;

 public:
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdamOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class AdamWOptions final : public OptimizerOptions {
 public:
  static constexpr const char* kKind = "AdamWOptions";
  AdamWOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(Betas, betas) = {0.9, 0.999};
  KILN_ARG(double, eps) = 1e-8;
  KILN_ARG(double, weight_decay) = 1e-2;
  KILN_ARG(bool, amsgrad) = false;
  KILN_ARG(bool, maximize) = false;

 public:
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdamWOptions>(*this); }
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  void fields(const OptionFieldFn& f) override;
  const char* kind() const override { return kKind; }
};

class Adam final : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions defaults = {});
  Adam(std::vector<ParamGroup> groups, AdamOptions defaults = {});

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

class AdamW final : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions defaults = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions defaults = {});

 protected:
  void validate(const OptimizerOptions& o) const override;
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override;
};

}  // namespace kiln::optim
