// Fused optimizer updates: one pass over (param, grad, state...) per parameter, split over
// the thread pool in contiguous chunks. Each formula follows torch.optim's single-tensor path
// (1.13) operation by operation, so float64 trajectories agree to rounding.
#include <cmath>
#include <fmt/format.h>
#include <type_traits>

#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Hyper-parameters in the parameter's precision, like torch's scalar arguments.
template <typename T>
struct Hyper {
  T lr, wd, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, momentum, one_minus_dampening, alpha,
      one_minus_alpha, step_size, bc2_sqrt, decay;
  explicit Hyper(const OptimUpdate& u)
      : lr(T(u.lr)), wd(T(u.weight_decay)), beta1(T(u.beta1)), one_minus_beta1(T(1 - u.beta1)), beta2(T(u.beta2)),
        one_minus_beta2(T(1 - u.beta2)), eps(T(u.eps)), momentum(T(u.momentum)),
        one_minus_dampening(T(1 - u.dampening)), alpha(T(u.alpha)), one_minus_alpha(T(1 - u.alpha)),
        step_size(T(u.lr / u.bias_correction1)), bc2_sqrt(T(std::sqrt(u.bias_correction2))),
        decay(T(1 - u.lr * u.weight_decay)) {}
};

// x (N): p, g, state buffers
template <typename T>
void sgd(const OptimUpdate& u, const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict buf,
         std::int64_t b, std::int64_t e) {
  const bool wd = u.weight_decay != 0, mom = u.momentum != 0;
  for (std::int64_t i = b; i < e; ++i) {
    T d = u.maximize ? -g[i] : g[i];
    if (wd) d += h.wd * p[i];
    if (mom) {
      T m = u.first_step ? d : h.momentum * buf[i] + h.one_minus_dampening * d;
      buf[i] = m;
      d = u.nesterov ? d + h.momentum * m : m;
    }
    p[i] -= h.lr * d;
  }
}

template <typename T>
void adam(const OptimUpdate& u, const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict m,
          T* __restrict v, T* __restrict vmax, std::int64_t b, std::int64_t e) {
  const bool coupled_wd = u.weight_decay != 0 && !u.decoupled_weight_decay;
  const bool decoupled = u.decoupled_weight_decay;
  for (std::int64_t i = b; i < e; ++i) {
    T d = u.maximize ? -g[i] : g[i];
    T x = p[i];
    if (decoupled) x *= h.decay;
    if (coupled_wd) d += h.wd * x;
    T mi = h.beta1 * m[i] + h.one_minus_beta1 * d;
    T vi = h.beta2 * v[i] + h.one_minus_beta2 * d * d;
    m[i] = mi;
    v[i] = vi;
    if (u.amsgrad) {
      T w = vmax[i];
      if (vi > w || std::isnan(vi)) w = vi;  // torch.maximum propagates NaN
      vmax[i] = w;
      vi = w;
    }
    T denom = std::sqrt(vi) / h.bc2_sqrt + h.eps;
    p[i] = x - h.step_size * (mi / denom);
  }
}

template <typename T>
void rmsprop(const OptimUpdate& u, const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict sq,
             T* __restrict buf, T* __restrict gavg, std::int64_t b, std::int64_t e) {
  const bool wd = u.weight_decay != 0, mom = u.momentum > 0;
  for (std::int64_t i = b; i < e; ++i) {
    T d = u.maximize ? -g[i] : g[i];
    if (wd) d += h.wd * p[i];
    T s = h.alpha * sq[i] + h.one_minus_alpha * d * d;
    sq[i] = s;
    T avg;
    if (u.centered) {
      T ga = h.alpha * gavg[i] + h.one_minus_alpha * d;
      gavg[i] = ga;
      avg = std::sqrt(s - ga * ga) + h.eps;
    } else {
      avg = std::sqrt(s) + h.eps;
    }
    if (mom) {
      T bi = h.momentum * buf[i] + d / avg;
      buf[i] = bi;
      p[i] -= h.lr * bi;
    } else {
      p[i] -= h.lr * (d / avg);
    }
  }
}

template <typename T>
void adagrad(const OptimUpdate& u, const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict sum,
             std::int64_t b, std::int64_t e) {
  const bool wd = u.weight_decay != 0;
  for (std::int64_t i = b; i < e; ++i) {
    T d = u.maximize ? -g[i] : g[i];
    if (wd) d += h.wd * p[i];
    T s = sum[i] + d * d;
    sum[i] = s;
    p[i] -= h.lr * (d / (std::sqrt(s) + h.eps));  // h.lr is Adagrad's decayed clr
  }
}

template <typename T>
void lion(const OptimUpdate& u, const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict m,
          std::int64_t b, std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = u.maximize ? -g[i] : g[i];
    T c = h.beta1 * m[i] + h.one_minus_beta1 * d;
    T s = c > 0 ? T(1) : c < 0 ? T(-1) : c;  // sign, NaN stays NaN
    p[i] = p[i] * h.decay - h.lr * s;
    m[i] = h.beta2 * m[i] + h.one_minus_beta2 * d;
  }
}

template <typename T>
void run(const OptimUpdate& u) {
  const Hyper<T> h(u);
  T* p = u.param.data_ptr<T>();
  const T* g = u.grad.data_ptr<T>();
  T* s0 = ptr<T>(u.state[0]);
  T* s1 = ptr<T>(u.state[1]);
  T* s2 = ptr<T>(u.state[2]);
  parallel_range(u.param.numel(), kParallelGrain, [&](std::int64_t b, std::int64_t e) {
    switch (u.kind) {
      case OptimKind::SGD: sgd<T>(u, h, p, g, s0, b, e); break;
      case OptimKind::Adam: adam<T>(u, h, p, g, s0, s1, s2, b, e); break;
      case OptimKind::RMSprop: rmsprop<T>(u, h, p, g, s0, s1, s2, b, e); break;
      case OptimKind::Adagrad: adagrad<T>(u, h, p, g, s0, b, e); break;
      case OptimKind::Lion: lion<T>(u, h, p, g, s0, b, e); break;
    }
  });
}

}  // namespace

void CpuBackend::optim_update(const OptimUpdate& u) {
  switch (u.param.dtype()) {
    case kFloat32: run<float>(u); break;
    case kFloat64: run<double>(u); break;
    default: throw_error("optim_update", fmt::format("parameters must be float32 or float64, got {}", dtype_name(u.param.dtype())));
  }
}

}  // namespace kiln::cpu
