#pragma once
/// Adam and AdamW (torch.optim.Adam / AdamW), with bias correction and the AMSGrad variant.
/// Adam adds weight decay to the gradient (L2); AdamW decays the weights directly,
/// p *= 1 - lr * weight_decay, before the Adam step. AdamW is Adam with decoupled decay: one
/// class template, two names (AdamW's options default to weight_decay 1e-2).
///   optim::Adam opt(net->parameters(), optim::AdamOptions(1e-3).betas({0.9, 0.999}).amsgrad(true));
///   optim::AdamW opt2(net->parameters(), optim::AdamWOptions(3e-4).betas({0.9, 0.95}).weight_decay(0.1));
/// State per parameter: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad) and the step count.
#include "optimizer.hpp"

namespace kiln::optim {

template <bool Decoupled>
class AdamOptionsT final : public OptionsBase<AdamOptionsT<Decoupled>> {
 public:
  static constexpr const char* kKind = Decoupled ? "AdamWOptions" : "AdamOptions";
  AdamOptionsT(double lr = 1e-3) : lr_(lr) {}  // NOLINT: implicit from a learning rate
  KILN_ARG(double, lr);
  KILN_ARG(Betas, betas) = {0.9, 0.999};
  KILN_ARG(double, eps) = 1e-8;
  KILN_ARG(double, weight_decay) = Decoupled ? 1e-2 : 0;
  KILN_ARG(bool, amsgrad) = false;
  KILN_ARG(bool, maximize) = false;

 public:
  void fields(const OptionFieldFn& f) override {
    field(f, "lr", lr_);
    field(f, "betas", betas_);
    field(f, "eps", eps_);
    field(f, "weight_decay", weight_decay_);
    field(f, "amsgrad", amsgrad_);
    field(f, "maximize", maximize_);
  }
};
using AdamOptions = AdamOptionsT<false>;
using AdamWOptions = AdamOptionsT<true>;

template <bool Decoupled>
class AdamT final : public OptimizerBase<AdamT<Decoupled>, AdamOptionsT<Decoupled>> {
  using Base = OptimizerBase<AdamT<Decoupled>, AdamOptionsT<Decoupled>>;

 public:
  using Base::Base;

 private:
  friend Base;
  static constexpr const char* kName = Decoupled ? "AdamW" : "Adam";
  static std::vector<std::string> buffers() { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  static void check(const AdamOptionsT<Decoupled>& o, const OptionCheck& check);
  void update_param(const AdamOptionsT<Decoupled>& o, const Tensor& param, const Tensor& grad, ParamState& st);
};
using Adam = AdamT<false>;
using AdamW = AdamT<true>;

extern template class AdamT<false>;
extern template class AdamT<true>;

}  // namespace kiln::optim
