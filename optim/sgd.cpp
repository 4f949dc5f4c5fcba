#include "sgd.hpp"

#include "../core/backend.hpp"

namespace kiln::optim {

void SGDOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  f("momentum", momentum_);
  f("dampening", dampening_);
  f("weight_decay", weight_decay_);
  bool_field(f, "nesterov", nesterov_);
  bool_field(f, "maximize", maximize_);
}

SGD::SGD(std::vector<Tensor> params, SGDOptions defaults) : SGD(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions defaults) : Optimizer("SGD", defaults.clone()) {
  init_groups(std::move(groups));
}

void SGD::validate(const OptimizerOptions& opts) const {
  const auto& o = options_cast<SGDOptions>(opts);
  check_option(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check_option(o.momentum() >= 0, "momentum", o.momentum(), "must be >= 0");
  check_option(o.dampening() >= 0 && o.dampening() <= 1, "dampening", o.dampening(), "must be in [0, 1]");
  check_option(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
  if (o.nesterov()) {
    check_option(o.momentum() > 0, "momentum for nesterov", o.momentum(), "Nesterov momentum needs momentum > 0");
    check_option(o.dampening() == 0, "dampening for nesterov", o.dampening(), "Nesterov momentum needs dampening 0");
  }
}

void SGD::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  const auto& o = static_cast<const SGDOptions&>(opts);
  OptimUpdate u;
  u.kind = OptimKind::SGD;
  u.param = param;
  u.grad = grad;
  u.lr = o.lr();
  u.weight_decay = o.weight_decay();
  u.momentum = o.momentum();
  u.dampening = o.dampening();
  u.nesterov = o.nesterov();
  u.maximize = o.maximize();
  if (o.momentum() != 0) {
    if (!st.buffers[0].defined()) {
      st.buffers[0] = state_buffer(param);
      u.first_step = true;  // torch starts the buffer at the (decayed) gradient itself
    }
    u.state[0] = st.buffers[0];
  }
  ++st.step;
  run_update(u);
}

}  // namespace kiln::optim
