#include "sgd.hpp"

#include "update_rules.hpp"

namespace kiln::optim {

namespace {
const UpdateKernels<SGDStep> kernels{&cpu_update<SGDStep>, KILN_CUDA_UPDATE(SGDStep)};
}  // namespace

void SGD::check(const SGDOptions& o, const OptionCheck& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.momentum() >= 0, "momentum", o.momentum(), "must be >= 0");
  check(o.dampening() >= 0 && o.dampening() <= 1, "dampening", o.dampening(), "must be in [0, 1]");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
  if (o.nesterov()) {
    check(o.momentum() > 0, "momentum for nesterov", o.momentum(), "Nesterov momentum needs momentum > 0");
    check(o.dampening() == 0, "dampening for nesterov", o.dampening(), "Nesterov momentum needs dampening 0");
  }
}

void SGD::update_param(const SGDOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) {
  bool first = false;
  if (o.momentum() != 0 && !st.buffers[0].defined()) {
    st.buffers[0] = state_buffer(param);
    first = true;
  }
  ++st.step;
  const SGDStep step{o.lr(), o.weight_decay(), o.momentum(), o.dampening(), o.nesterov(), o.maximize(), first};
  run_update(kernels, step, {param, grad, o.momentum() != 0 ? st.buffers[0] : Tensor()});
}

}  // namespace kiln::optim
