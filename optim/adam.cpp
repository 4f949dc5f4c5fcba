#include "adam.hpp"

#include <cmath>

#include "update_rules.hpp"

namespace kiln::optim {

namespace {
const UpdateKernels<AdamStep> kernels{&cpu_update<AdamStep>, KILN_CUDA_UPDATE(AdamStep)};
}  // namespace

template <bool Decoupled>
void AdamT<Decoupled>::check(const AdamOptionsT<Decoupled>& o, const OptionCheck& check) {
  check(o.lr() >= 0, "learning rate", o.lr(), "must be >= 0");
  check(o.eps() >= 0, "eps", o.eps(), "must be >= 0");
  check(o.betas().first >= 0 && o.betas().first < 1, "beta1", o.betas().first, "must be in [0, 1)");
  check(o.betas().second >= 0 && o.betas().second < 1, "beta2", o.betas().second, "must be in [0, 1)");
  check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0");
}

template <bool Decoupled>
void AdamT<Decoupled>::update_param(const AdamOptionsT<Decoupled>& o, const Tensor& param, const Tensor& grad,
                                    ParamState& st) {
  for (int k = 0; k < 2; ++k)
    if (!st.buffers[k].defined()) st.buffers[k] = this->state_buffer(param);
  if (o.amsgrad() && !st.buffers[2].defined()) st.buffers[2] = this->state_buffer(param);
  ++st.step;
  const auto [beta1, beta2] = o.betas();
  const double step = static_cast<double>(st.step);
  const AdamStep s{o.lr(),
                   beta1,
                   beta2,
                   o.eps(),
                   o.weight_decay(),
                   1 - std::pow(beta1, step),
                   1 - std::pow(beta2, step),
                   o.amsgrad(),
                   o.maximize(),
                   Decoupled};
  this->run_update(kernels, s, {param, grad, st.buffers[0], st.buffers[1], o.amsgrad() ? st.buffers[2] : Tensor()});
}

template class AdamT<false>;
template class AdamT<true>;

}  // namespace kiln::optim
