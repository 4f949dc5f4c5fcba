#pragma once
/// The update rules of kiln's optimizers, each written once as a KILN_HD functor (see
/// fused.hpp): the CPU runs them from sgd.cpp, adam.cpp, ..., CUDA from fused_kernels.cu. Each
/// formula follows torch.optim's single-tensor path (1.13) operation by operation, so float64
/// trajectories agree to rounding; hyper-parameters are cast to the parameter's precision, like
/// torch's scalar arguments. A step's flags become the rule's template parameters, so every
/// loop body is branch-free. Pointers: param, grad, then the state buffers the optimizer names.
///   AdamStep s{...};
///   s.with_rule<float>([&](const auto& rule) { foreach_cpu<float>(rule, tensors); });
#include <cmath>
#include <cstdint>

#include "../core/host_device.hpp"
#include "fused.hpp"

namespace kiln::optim {

namespace rules {
template <typename T>
KILN_HD T grad_of(const T* g, std::int64_t i, bool negate) {
  return negate ? -g[i] : g[i];
}
}  // namespace rules

// ---- SGD: buffer momentum_buffer ----
template <typename T, bool NEG, bool WD, bool MOM, bool FIRST, bool NESTEROV>
struct SGDRule {
  T lr, wd, momentum, one_minus_dampening;
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* buf, T*, T*) const {
    T d = rules::grad_of(g, i, NEG);
    if constexpr (WD) d += wd * p[i];
    if constexpr (MOM) {
      const T m = FIRST ? d : momentum * buf[i] + one_minus_dampening * d;
      buf[i] = m;
      d = NESTEROV ? d + momentum * m : m;
    }
    p[i] -= lr * d;
  }
};

struct SGDStep {
  double lr, weight_decay, momentum, dampening;
  bool nesterov, maximize;
  bool first_step;  // the momentum buffer starts at the (decayed) gradient, as in torch
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags(
        [&]<bool NEG, bool WD, bool MOM, bool FIRST, bool NESTEROV>() {
          run(SGDRule<T, NEG, WD, MOM, FIRST, NESTEROV>{T(lr), T(weight_decay), T(momentum), T(1 - dampening)});
        },
        maximize, weight_decay != 0, momentum != 0, first_step, nesterov);
  }
};

// ---- Adam, AdamW: buffers exp_avg, exp_avg_sq, max_exp_avg_sq ----
template <typename T, bool NEG, bool WD, bool DECOUPLED, bool AMSGRAD>
struct AdamRule {
  T wd, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt, decay;
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* m, T* v, T* vmax) const {
    T d = rules::grad_of(g, i, NEG);
    T x = p[i];
    if constexpr (DECOUPLED) x *= decay;
    if constexpr (WD) d += wd * x;
    const T mi = beta1 * m[i] + one_minus_beta1 * d;
    T vi = beta2 * v[i] + one_minus_beta2 * d * d;
    m[i] = mi;
    v[i] = vi;
    if constexpr (AMSGRAD) {
      T w = vmax[i];
      w = (vi > w || vi != vi) ? vi : w;  // torch.maximum propagates NaN
      vmax[i] = w;
      vi = w;
    }
    const T denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = x - step_size * (mi / denom);
  }
};

struct AdamStep {
  double lr, beta1, beta2, eps, weight_decay;
  double bias_correction1, bias_correction2;  // 1 - beta^step
  bool amsgrad, maximize;
  bool decoupled;  // AdamW: p *= 1 - lr * wd before the Adam update
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags(
        [&]<bool NEG, bool WD, bool DECOUPLED, bool AMSGRAD>() {
          run(AdamRule<T, NEG, WD, DECOUPLED, AMSGRAD>{T(weight_decay), T(beta1), T(1 - beta1), T(beta2), T(1 - beta2),
                                                       T(eps), T(lr / bias_correction1), T(std::sqrt(bias_correction2)),
                                                       T(1 - lr * weight_decay)});
        },
        maximize, weight_decay != 0 && !decoupled, decoupled, amsgrad);
  }
};

// ---- RMSprop: buffers square_avg, momentum_buffer, grad_avg ----
template <typename T, bool NEG, bool WD, bool MOM, bool CENTERED>
struct RMSpropRule {
  T lr, wd, alpha, one_minus_alpha, eps, momentum;
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* sq, T* buf, T* gavg) const {
    T d = rules::grad_of(g, i, NEG);
    if constexpr (WD) d += wd * p[i];
    const T s = alpha * sq[i] + one_minus_alpha * d * d;
    sq[i] = s;
    T avg;
    if constexpr (CENTERED) {
      const T ga = alpha * gavg[i] + one_minus_alpha * d;
      gavg[i] = ga;
      avg = std::sqrt(s - ga * ga) + eps;
    } else {
      avg = std::sqrt(s) + eps;
    }
    if constexpr (MOM) {
      const T b = momentum * buf[i] + d / avg;
      buf[i] = b;
      p[i] -= lr * b;
    } else {
      p[i] -= lr * (d / avg);
    }
  }
};

struct RMSpropStep {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags(
        [&]<bool NEG, bool WD, bool MOM, bool CENTERED>() {
          run(RMSpropRule<T, NEG, WD, MOM, CENTERED>{T(lr), T(weight_decay), T(alpha), T(1 - alpha), T(eps),
                                                     T(momentum)});
        },
        maximize, weight_decay != 0, momentum > 0, centered);
  }
};

// ---- Adagrad: buffer sum ----
template <typename T, bool NEG, bool WD>
struct AdagradRule {
  T clr, wd, eps;  // clr: the decayed rate lr / (1 + (step - 1) * lr_decay)
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* sum, T*, T*) const {
    T d = rules::grad_of(g, i, NEG);
    if constexpr (WD) d += wd * p[i];
    const T s = sum[i] + d * d;
    sum[i] = s;
    p[i] -= clr * (d / (std::sqrt(s) + eps));
  }
};

struct AdagradStep {
  double clr, weight_decay, eps;
  bool maximize;
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags(
        [&]<bool NEG, bool WD>() {
          run(AdagradRule<T, NEG, WD>{T(clr), T(weight_decay), T(eps)});
        },
        maximize, weight_decay != 0);
  }
};

// ---- Lion: buffer exp_avg ----
template <typename T, bool NEG>
struct LionRule {
  T lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay;
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* m, T*, T*) const {
    const T d = rules::grad_of(g, i, NEG);
    const T c = beta1 * m[i] + one_minus_beta1 * d;
    const T s = c > 0 ? T(1) : c < 0 ? T(-1) : c;  // sign, NaN stays NaN
    p[i] = p[i] * decay - lr * s;
    m[i] = beta2 * m[i] + one_minus_beta2 * d;
  }
};

struct LionStep {
  double lr, beta1, beta2, weight_decay;
  bool maximize;
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags(
        [&]<bool NEG>() {
          run(LionRule<T, NEG>{T(lr), T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(1 - lr * weight_decay)});
        },
        maximize);
  }
};

}  // namespace kiln::optim
