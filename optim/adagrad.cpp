#include "adagrad.hpp"

#include "update_rules.hpp"

namespace kiln::optim {

namespace {
const UpdateKernels<AdagradStep> kernels{&cpu_update<AdagradStep>, KILN_CUDA_UPDATE(AdagradStep)};
}  // namespace

void Adagrad::check(const AdagradOptions& o, const OptionCheck& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.lr_decay() >= 0, "lr_decay", o.lr_decay(), "must be >= 0");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
  check(o.initial_accumulator_value() >= 0, "initial_accumulator_value", o.initial_accumulator_value(), "must be >= 0");
  check(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
}

void Adagrad::update_param(const AdagradOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) {
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param, o.initial_accumulator_value());
  ++st.step;
  const double clr = o.lr() / (1 + static_cast<double>(st.step - 1) * o.lr_decay());
  run_update(kernels, AdagradStep{clr, o.weight_decay(), o.eps(), o.maximize()}, {param, grad, st.buffers[0]});
}

}  // namespace kiln::optim
