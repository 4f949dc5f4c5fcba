#pragma once
/// The fused backward of the activation ops (Backend::unary_backward), written once for both
/// backends: gx = g * f'(v), where v is the op's input x, or its output y for Tanh and Sigmoid
/// (their derivatives are cheapest in y). The CPU backend's scalar path and the CUDA kernel call
/// this; the CPU's vectorized runs (core/cpu/unary_backward.cpp) evaluate the same formulas.
///   float gx = kiln::math::UnaryGrad{kiln::UnaryOp::GeluErf}(g, x);
/// NaN and Inf propagate as in the composite g * f'(v) (an infinite x gives NaN for gelu/silu,
/// as 0 * inf does there).
#include "../backend.hpp"
#include "elementwise.hpp"
#include "functions.hpp"

namespace kiln::math {

inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
inline constexpr double kGeluTanhC = 0.044715;

/// Whether `op` has a fused backward, and whether it reads the output y (else the input x).
KILN_HD constexpr bool has_unary_grad(UnaryOp op) {
  switch (op) {
    case UnaryOp::GeluErf:
    case UnaryOp::GeluTanh:
    case UnaryOp::Silu:
    case UnaryOp::Sigmoid:
    case UnaryOp::Tanh:
    case UnaryOp::Relu:
    case UnaryOp::Hardswish: return true;
    default: return false;
  }
}
KILN_HD constexpr bool unary_grad_uses_output(UnaryOp op) { return op == UnaryOp::Sigmoid || op == UnaryOp::Tanh; }

/// d gelu / dx = Phi(x) + x phi(x).
template <typename T>
KILN_HD T gelu_erf_grad(T x) {
  const T cdf = T(0.5) * (T(1) + erf(x * T(kSqrt1_2)));
  return cdf + x * (T(kInvSqrt2Pi) * exp(T(-0.5) * x * x));
}

/// d/dx of 0.5 x (1 + tanh(u)), u = k (x + c x^3): 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
template <typename T>
KILN_HD T gelu_tanh_grad(T x) {
  const T x2 = x * x;
  const T t = tanh(T(kSqrt2OverPi) * (x + T(kGeluTanhC) * x2 * x));
  const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * x2);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

/// d (x sigmoid(x)) / dx = s (1 + x (1 - s)).
template <typename T>
KILN_HD T silu_grad(T x) {
  const T s = T(1) / (T(1) + exp(-x));
  return s * (T(1) + x * (T(1) - s));
}

/// PyTorch's convention at the kinks: -3 and 3 both take the middle piece x / 3 + 1/2.
template <typename T>
KILN_HD T hardswish_grad(T x) {
  return x < T(-3) ? T(0) : (x <= T(3) ? x / T(3) + T(0.5) : T(1));
}

struct UnaryGrad {
  UnaryOp op;

  template <typename T>
  KILN_HD T operator()(T g, T v) const {
    switch (op) {
      case UnaryOp::GeluErf: return g * gelu_erf_grad(v);
      case UnaryOp::GeluTanh: return g * gelu_tanh_grad(v);
      case UnaryOp::Silu: return g * silu_grad(v);
      case UnaryOp::Sigmoid: return g * (v * (T(1) - v));
      case UnaryOp::Tanh: return g * (T(1) - v * v);
      case UnaryOp::Relu: return g * (v > T(0) ? T(1) : T(0));  // g * step(x): NaN g stays NaN
      case UnaryOp::Hardswish: return g * hardswish_grad(v);
      default: return quiet_nan<T>();  // not reached: callers check has_unary_grad
    }
  }
};

}  // namespace kiln::math
