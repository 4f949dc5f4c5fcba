#include "adagrad.hpp"

#include "../core/backend.hpp"

namespace kiln::optim {

void AdagradOptions::fields(const OptionFieldFn& f) {
  f("lr", lr_);
  f("lr_decay", lr_decay_);
  f("weight_decay", weight_decay_);
  f("initial_accumulator_value", initial_accumulator_value_);
  f("eps", eps_);
  bool_field(f, "maximize", maximize_);
}

Adagrad::Adagrad(std::vector<Tensor> params, AdagradOptions defaults)
    : Adagrad(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

Adagrad::Adagrad(std::vector<ParamGroup> groups, AdagradOptions defaults) : Optimizer("Adagrad", defaults.clone()) {
  init_groups(std::move(groups));
}

void Adagrad::validate(const OptimizerOptions& opts) const {
  const auto& o = options_cast<AdagradOptions>(opts);
  check_option(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check_option(o.lr_decay() >= 0, "lr_decay", o.lr_decay(), "must be >= 0");
  check_option(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
  check_option(o.initial_accumulator_value() >= 0, "initial_accumulator_value", o.initial_accumulator_value(),
               "must be >= 0");
  check_option(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
}

void Adagrad::update(const OptimizerOptions& opts, const Tensor& param, const Tensor& grad, ParamState& st) {
  const auto& o = static_cast<const AdagradOptions&>(opts);
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param, o.initial_accumulator_value());
  ++st.step;
  OptimUpdate u;
  u.kind = OptimKind::Adagrad;
  u.param = param;
  u.grad = grad;
  u.state[0] = st.buffers[0];
  u.lr = o.lr() / (1 + static_cast<double>(st.step - 1) * o.lr_decay());
  u.weight_decay = o.weight_decay();
  u.eps = o.eps();
  u.maximize = o.maximize();
  run_update(u);
}

}  // namespace kiln::optim
