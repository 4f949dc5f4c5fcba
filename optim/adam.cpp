#include "adam.hpp"

#include <cmath>

#include "../core/backend.hpp"

namespace kiln::optim {
namespace {

void beta_fields(Betas& betas, const OptionFieldFn& f) {
  f("beta1", betas.first);
  f("beta2", betas.second);
}

// check(ok, what, value, requirement) is the optimizer's check_option.
template <typename O, typename Check>
void validate_adam(const O& o, Check&& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
  check(o.betas().first >= 0 && o.betas().first < 1, "beta1", o.betas().first, "must be in [0, 1)");
  check(o.betas().second >= 0 && o.betas().second < 1, "beta2", o.betas().second, "must be in [0, 1)");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled;
};

template <typename O>
AdamArgs args_of(const O& o, bool decoupled) {
  return {o.lr(), o.betas().first, o.betas().second, o.eps(), o.weight_decay(), o.amsgrad(), o.maximize(), decoupled};
}

// Shared by Adam and AdamW: state slots exp_avg, exp_avg_sq, max_exp_avg_sq.
template <typename Run>
void adam_update(const AdamArgs& a, const Tensor& param, const Tensor& grad, ParamState& st, Run&& run) {
  for (int k = 0; k < 2; ++k)
    if (!st.buffers[k].defined()) st.buffers[k] = full(param.shape(), 0.0, TensorOptions(param.dtype()).device(param.device()));
  if (a.amsgrad && !st.buffers[2].defined())
    st.buffers[2] = full(param.shape(), 0.0, TensorOptions(param.dtype()).device(param.device()));
  ++st.step;
  OptimUpdate u;
  u.kind = OptimKind::Adam;
  u.param = param;
  u.grad = grad;
  u.state[0] = st.buffers[0];
  u.state[1] = st.buffers[1];
  if (a.amsgrad) u.state[2] = st.buffers[2];
  u.lr = a.lr;
  u.weight_decay = a.weight_decay;
  u.beta1 = a.beta1;
  u.beta2 = a.beta2;
  u.eps = a.eps;
  const double step = static_cast<double>(st.step);
  u.bias_correction1 = 1 - std::pow(a.beta1, step);
  u.bias_correction2 = 1 - std::pow(a.beta2, step);
  u.amsgrad = a.amsgrad;
  u.maximize = a.maximize;
  u.decoupled_weight_decay = a.decoupled;
  run(u);
}

}  // namespace

void AdamOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  beta_fields(betas_, f);
  f("eps", eps_);
  f("weight_decay", weight_decay_);
  bool_field(f, "amsgrad", amsgrad_);
  bool_field(f, "maximize", maximize_);
}

void AdamWOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  beta_fields(betas_, f);
  f("eps", eps_);
  f("weight_decay", weight_decay_);
  bool_field(f, "amsgrad", amsgrad_);
  bool_field(f, "maximize", maximize_);
}

Adam::Adam(std::vector<Tensor> params, AdamOptions defaults)
    : Adam(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions defaults) : Optimizer("Adam", defaults.clone()) {
  init_groups(std::move(groups));
}
void Adam::validate(const OptimizerOptions& opts) const {
  validate_adam(options_cast<AdamOptions>(opts), [this](bool ok, const char* w, double v, const char* r) { check_option(ok, w, v, r); });
}
void Adam::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  adam_update(args_of(static_cast<const AdamOptions&>(opts), false), param, grad, st,
              [&](OptimUpdate& u) { run_update(u); });
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions defaults)
    : AdamW(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}
AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions defaults) : Optimizer("AdamW", defaults.clone()) {
  init_groups(std::move(groups));
}
void AdamW::validate(const OptimizerOptions& opts) const {
  validate_adam(options_cast<AdamWOptions>(opts), [this](bool ok, const char* w, double v, const char* r) { check_option(ok, w, v, r); });
}
void AdamW::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  adam_update(args_of(static_cast<const AdamWOptions&>(opts), true), param, grad, st,
              [&](OptimUpdate& u) { run_update(u); });
}

}  // namespace kiln::optim
