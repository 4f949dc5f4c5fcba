#include "lion.hpp"

#include "../core/backend.hpp"

namespace kiln::optim {

void LionOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  f("beta1", betas_.first);
  f("beta2", betas_.second);
  f("weight_decay", weight_decay_);
  bool_field(f, "maximize", maximize_);
}

Lion::Lion(std::vector<Tensor> params, LionOptions defaults)
    : Lion(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

Lion::Lion(std::vector<ParamGroup> groups, LionOptions defaults) : Optimizer("Lion", defaults.clone()) {
  init_groups(std::move(groups));
}

void Lion::validate(const OptimizerOptions& opts) const {
  const auto& o = options_cast<LionOptions>(opts);
  check_option(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check_option(o.betas().first >= 0 && o.betas().first <= 1, "beta1", o.betas().first, "must be in [0, 1]");
  check_option(o.betas().second >= 0 && o.betas().second <= 1, "beta2", o.betas().second, "must be in [0, 1]");
  check_option(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

void Lion::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  const auto& o = static_cast<const LionOptions&>(opts);
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param);
  ++st.step;
  OptimUpdate u;
  u.kind = OptimKind::Lion;
  u.param = param;
  u.grad = grad;
  u.state[0] = st.buffers[0];
  u.lr = o.lr();
  u.weight_decay = o.weight_decay();
  u.beta1 = o.betas().first;
  u.beta2 = o.betas().second;
  u.maximize = o.maximize();
  run_update(u);
}

}  // namespace kiln::optim
