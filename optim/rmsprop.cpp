#include "rmsprop.hpp"

#include "update_rules.hpp"

namespace kiln::optim {

namespace {
const UpdateKernels<RMSpropStep> kernels{&cpu_update<RMSpropStep>, KILN_CUDA_UPDATE(RMSpropStep)};
}  // namespace

void RMSprop::check(const RMSpropOptions& o, const OptionCheck& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
  check(o.alpha() >= 0 && o.alpha() <= 1, "alpha", o.alpha(), "must be in [0, 1]");
  check(o.momentum() >= 0, "momentum", o.momentum(), "must be >= 0");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

void RMSprop::update_param(const RMSpropOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) {
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param);
  if (o.momentum() > 0 && !st.buffers[1].defined()) st.buffers[1] = state_buffer(param);
  if (o.centered() && !st.buffers[2].defined()) st.buffers[2] = state_buffer(param);
  ++st.step;
  const RMSpropStep step{o.lr(), o.alpha(), o.eps(), o.weight_decay(), o.momentum(), o.centered(), o.maximize()};
  run_update(kernels, step,
             {param, grad, st.buffers[0], o.momentum() > 0 ? st.buffers[1] : Tensor(),
              o.centered() ? st.buffers[2] : Tensor()});
}

}  // namespace kiln::optim
