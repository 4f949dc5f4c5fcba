// Fused optimizer updates: one pass over (param, grad, state...) per parameter, split over
// the thread pool in contiguous chunks. Each formula follows torch.optim's single-tensor path
// (1.13) operation by operation, so float64 trajectories agree to rounding.
#include <cmath>
#include <fmt/format.h>

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

// Calls f.template operator()<b0, b1, ...>() with the runtime flags as compile-time
// constants, so each loop body is branch-free and vectorizes.
template <bool... Bs, typename F>
void with_flags(F&& f) {
  f.template operator()<Bs...>();
}
template <bool... Bs, typename F, typename... Rest>
void with_flags(F&& f, bool b, Rest... rest) {
  if (b) with_flags<Bs..., true>(f, rest...);
  else with_flags<Bs..., false>(f, rest...);
}

// Every kernel: p, g and the state buffers are (N) and contiguous; it updates [b, e).
template <typename T, bool NEG, bool WD, bool MOM, bool FIRST, bool NESTEROV>
void sgd(const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict buf, std::int64_t b, std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = NEG ? -g[i] : g[i];
    if constexpr (WD) d += h.wd * p[i];
    if constexpr (MOM) {
      T m = FIRST ? d : h.momentum * buf[i] + h.one_minus_dampening * d;
      buf[i] = m;
      d = NESTEROV ? d + h.momentum * m : m;
    }
    p[i] -= h.lr * d;
  }
}

template <typename T, bool NEG, bool WD, bool DECOUPLED, bool AMSGRAD>
void adam(const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
          T* __restrict vmax, std::int64_t b, std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = NEG ? -g[i] : g[i];
    T x = p[i];
    if constexpr (DECOUPLED) x *= h.decay;
    if constexpr (WD) d += h.wd * x;
    T mi = h.beta1 * m[i] + h.one_minus_beta1 * d;
    T vi = h.beta2 * v[i] + h.one_minus_beta2 * d * d;
    m[i] = mi;
    v[i] = vi;
    if constexpr (AMSGRAD) {
      T w = vmax[i];
      w = (vi > w || vi != vi) ? vi : w;  // torch.maximum propagates NaN
      vmax[i] = w;
      vi = w;
    }
    T denom = std::sqrt(vi) / h.bc2_sqrt + h.eps;
    p[i] = x - h.step_size * (mi / denom);
  }
}

template <typename T, bool NEG, bool WD, bool MOM, bool CENTERED>
void rmsprop(const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict sq, T* __restrict buf,
             T* __restrict gavg, std::int64_t b, std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = NEG ? -g[i] : g[i];
    if constexpr (WD) d += h.wd * p[i];
    T s = h.alpha * sq[i] + h.one_minus_alpha * d * d;
    sq[i] = s;
    T avg;
    if constexpr (CENTERED) {
      T ga = h.alpha * gavg[i] + h.one_minus_alpha * d;
      gavg[i] = ga;
      avg = std::sqrt(s - ga * ga) + h.eps;
    } else {
      avg = std::sqrt(s) + h.eps;
    }
    if constexpr (MOM) {
      T bi = h.momentum * buf[i] + d / avg;
      buf[i] = bi;
      p[i] -= h.lr * bi;
    } else {
      p[i] -= h.lr * (d / avg);
    }
  }
}

template <typename T, bool NEG, bool WD>
void adagrad(const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict sum, std::int64_t b,
             std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = NEG ? -g[i] : g[i];
    if constexpr (WD) d += h.wd * p[i];
    T s = sum[i] + d * d;
    sum[i] = s;
    p[i] -= h.lr * (d / (std::sqrt(s) + h.eps));  // h.lr is Adagrad's decayed clr
  }
}

template <typename T, bool NEG>
void lion(const Hyper<T>& h, T* __restrict p, const T* __restrict g, T* __restrict m, std::int64_t b, std::int64_t e) {
  for (std::int64_t i = b; i < e; ++i) {
    T d = NEG ? -g[i] : g[i];
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
  const std::int64_t n = u.param.numel();
  const bool wd = u.weight_decay != 0;
  auto split = [n](auto&& body) { parallel_range(n, kParallelGrain, body); };
  switch (u.kind) {
    case OptimKind::SGD:
      with_flags([&]<bool NEG, bool WD, bool MOM, bool FIRST, bool NESTEROV>() {
        split([&](std::int64_t b, std::int64_t e) { sgd<T, NEG, WD, MOM, FIRST, NESTEROV>(h, p, g, s0, b, e); });
      }, u.maximize, wd, u.momentum != 0, u.first_step, u.nesterov);
      break;
    case OptimKind::Adam:
      with_flags([&]<bool NEG, bool WD, bool DECOUPLED, bool AMSGRAD>() {
        split([&](std::int64_t b, std::int64_t e) { adam<T, NEG, WD, DECOUPLED, AMSGRAD>(h, p, g, s0, s1, s2, b, e); });
      }, u.maximize, wd && !u.decoupled_weight_decay, u.decoupled_weight_decay, u.amsgrad);
      break;
    case OptimKind::RMSprop:
      with_flags([&]<bool NEG, bool WD, bool MOM, bool CENTERED>() {
        split([&](std::int64_t b, std::int64_t e) { rmsprop<T, NEG, WD, MOM, CENTERED>(h, p, g, s0, s1, s2, b, e); });
      }, u.maximize, wd, u.momentum > 0, u.centered);
      break;
    case OptimKind::Adagrad:
      with_flags([&]<bool NEG, bool WD>() {
        split([&](std::int64_t b, std::int64_t e) { adagrad<T, NEG, WD>(h, p, g, s0, b, e); });
      }, u.maximize, wd);
      break;
    case OptimKind::Lion:
      with_flags([&]<bool NEG>() {
        split([&](std::int64_t b, std::int64_t e) { lion<T, NEG>(h, p, g, s0, b, e); });
      }, u.maximize);
      break;
  }
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
