#include "lion.hpp"

#include "update_rules.hpp"

namespace kiln::optim {

namespace {
const UpdateKernels<LionStep> kernels{&cpu_update<LionStep>, KILN_CUDA_UPDATE(LionStep)};
}  // namespace

void Lion::check(const LionOptions& o, const OptionCheck& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.betas().first >= 0 && o.betas().first <= 1, "beta1", o.betas().first, "must be in [0, 1]");
  check(o.betas().second >= 0 && o.betas().second <= 1, "beta2", o.betas().second, "must be in [0, 1]");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

void Lion::update_param(const LionOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) {
  if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param);
  ++st.step;
  const LionStep step{o.lr(), o.betas().first, o.betas().second, o.weight_decay(), o.maximize()};
  run_update(kernels, step, {param, grad, st.buffers[0]});
}

}  // namespace kiln::optim
