#include "rmsprop.hpp"

#include "../core/backend.hpp"

namespace kiln::optim {

void RMSpropOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  f("alpha", alpha_);
  f("eps", eps_);
  f("weight_decay", weight_decay_);
  f("momentum", momentum_);
  bool_field(f, "centered", centered_);
  bool_field(f, "maximize", maximize_);
}

RMSprop::RMSprop(std::vector<Tensor> params, RMSpropOptions defaults)
    : RMSprop(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

RMSprop::RMSprop(std::vector<ParamGroup> groups, RMSpropOptions defaults) : Optimizer("RMSprop", defaults.clone()) {
  init_groups(std::move(groups));
}

void RMSprop::validate(const OptimizerOptions& opts) const {
  const auto& o = options_cast<RMSpropOptions>(opts);
  check_option(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check_option(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
  check_option(o.alpha() >= 0 && o.alpha() <= 1, "alpha", o.alpha(), "must be in [0, 1]");
  check_option(o.momentum() >= 0, "momentum", o.momentum(), "must be >= 0");
  check_option(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

void RMSprop::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  const auto& o = static_cast<const RMSpropOptions&>(opts);
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param);
  if (o.momentum() > 0 && !st.buffers[1].defined()) st.buffers[1] = state_buffer(param);
  if (o.centered() && !st.buffers[2].defined()) st.buffers[2] = state_buffer(param);
  ++st.step;
  OptimUpdate u;
  u.kind = OptimKind::RMSprop;
  u.param = param;
  u.grad = grad;
  u.state[0] = st.buffers[0];
  if (o.momentum() > 0) u.state[1] = st.buffers[1];
  if (o.centered()) u.state[2] = st.buffers[2];
  u.lr = o.lr();
  u.alpha = o.alpha();
  u.eps = o.eps();
  u.weight_decay = o.weight_decay();
  u.momentum = o.momentum();
  u.centered = o.centered();
  u.maximize = o.maximize();
  run_update(u);
}

}  // namespace kiln::optim
