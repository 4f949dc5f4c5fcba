#pragma once
/// The scalar math of every unary, binary and compare op, written once for both backends:
/// the CPU backend's scalar (reference) path and the CUDA kernels call these functors. The op
/// is a runtime value, uniform across a loop or launch, so each backend instantiates one loop
/// per dtype; a loop with the op fixed at compile time (the CPU's binary runs) folds the switch.
///   kiln::math::Unary f{kiln::UnaryOp::Clamp, 0.0, 6.0};
///   float y = f(x);                                   // clamp(x, 0, 6)
///   bool lt = kiln::math::Compare{kiln::CompareOp::Lt}(a, b);
/// A storage type computes in compute_t<T> (T itself for bool, int64, float32, float64); the
/// loops convert on load and store, so a low-precision float type plugs in by mapping its
/// ComputeType to float.
#include <cstdint>
#include <type_traits>

#include "../backend.hpp"
#include "functions.hpp"

namespace kiln::math {

/// The type the ops compute in for storage type T.
template <typename T>
struct ComputeType {
  using type = T;
};
template <>
struct ComputeType<BFloat16> {
  using type = float;
};
template <>
struct ComputeType<Half> {
  using type = float;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

/// D from S as a copy between dtypes does it: to bool is `v != 0`, else static_cast.
template <typename D, typename S>
KILN_HD D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) return v != S(0);
  else return static_cast<D>(v);
}

inline constexpr double kSqrt1_2 = 0.70710678118654752440;
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;

/// x ** e for integers; a negative e gives 0 unless |x| == 1 (as integer division would).
template <typename T>
KILN_HD T int_pow(T base, T e) {
  if (e < 0) return base == 1 ? T(1) : (base == -1 ? ((e & 1) ? T(-1) : T(1)) : T(0));
  T r = 1;
  while (e > 0) {
    if (e & 1) r *= base;
    base *= base;
    e >>= 1;
  }
  return r;
}

/// clamp(x, lo, hi) where a NaN bound is no bound.
template <typename T>
KILN_HD T clamp_value(T x, double lo, double hi) {
  T r = x;
  if (!isnan(lo) && r < T(lo)) r = T(lo);
  if (!isnan(hi) && r > T(hi)) r = T(hi);
  return r;
}

/// out = op(x) for one kiln::UnaryOp; a and b are the op's scalars (PowScalar, Clamp, Step).
struct Unary {
  UnaryOp op;
  double a = 0, b = 0;

  template <typename T>
  KILN_HD T operator()(T x) const {
    if constexpr (std::is_same_v<T, bool>) return op == UnaryOp::LogicalNot ? !x : x;
    else if constexpr (std::is_integral_v<T>) return integral(x);
    else return floating(x);
  }

 private:
  template <typename T>
  KILN_HD T integral(T x) const {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Abs: return x < 0 ? -x : x;
      case UnaryOp::Sign: return T((x > 0) - (x < 0));
      case UnaryOp::Relu: return x > 0 ? x : 0;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Clamp: return clamp_value(x, a, b);
      case UnaryOp::Step: return static_cast<double>(x) > a ? 1 : 0;
      case UnaryOp::PowScalar: {  // a negative exponent gives 1
        T r = 1, base = x;
        for (auto e = static_cast<std::int64_t>(a); e > 0; e >>= 1) {
          if (e & 1) r *= base;
          base *= base;
        }
        return r;
      }
      default: return x;
    }
  }

  template <typename T>
  KILN_HD T floating(T x) const {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Exp: return exp(x);
      case UnaryOp::Log: return log(x);
      case UnaryOp::Sqrt: return sqrt(x);
      case UnaryOp::Rsqrt: return T(1) / sqrt(x);
      case UnaryOp::Abs: return abs(x);
      case UnaryOp::Sign: return isnan(x) ? x : T((x > 0) - (x < 0));
      case UnaryOp::Tanh: return tanh(x);
      case UnaryOp::Sigmoid: return T(1) / (T(1) + exp(-x));
      case UnaryOp::Relu: return x > 0 ? x : (isnan(x) ? x : T(0));
      case UnaryOp::GeluErf: return T(0.5) * x * (T(1) + erf(x * T(kSqrt1_2)));
      case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
      case UnaryOp::Silu: return x / (T(1) + exp(-x));
      case UnaryOp::Hardswish: return x <= T(-3) ? -T(0) : x >= T(3) ? x : x * (x + T(3)) / T(6);
      case UnaryOp::Erf: return erf(x);
      case UnaryOp::Reciprocal: return T(1) / x;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Sin: return sin(x);
      case UnaryOp::Cos: return cos(x);
      case UnaryOp::LogicalNot: return x == T(0);
      case UnaryOp::PowScalar: return a == 2.0 ? x * x : a == 0.5 ? sqrt(x) : pow(x, T(a));
      case UnaryOp::Clamp: return clamp_value(x, a, b);
      case UnaryOp::Step: return x > T(a) ? T(1) : T(0);
    }
    return x;
  }
};

/// x == 0: LogicalNot of a non-bool x (the result is bool).
struct IsZero {
  template <typename T>
  KILN_HD bool operator()(T x) const {
    return x == T(0);
  }
};

/// Maximum/minimum that propagate NaN (torch.maximum / torch.minimum).
template <typename T>
KILN_HD T nan_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (isnan(a) || isnan(b)) return quiet_nan<T>();
  }
  return a > b ? a : b;
}
template <typename T>
KILN_HD T nan_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (isnan(a) || isnan(b)) return quiet_nan<T>();
  }
  return a < b ? a : b;
}

/// out = x op y for one kiln::BinaryOp. Integer division by 0 gives 0; bool Mul is and,
/// bool Pow is x || !y.
struct Binary {
  BinaryOp op;

  template <typename T>
  KILN_HD T operator()(T x, T y) const {
    switch (op) {
      case BinaryOp::Add: return static_cast<T>(x + y);
      case BinaryOp::Sub: return static_cast<T>(x - y);
      case BinaryOp::Mul:
        if constexpr (std::is_same_v<T, bool>) return x && y;
        else return x * y;
      case BinaryOp::Div:
        if constexpr (std::is_floating_point_v<T>) return x / y;
        else return y == 0 ? T(0) : T(x / y);
      case BinaryOp::Pow:
        if constexpr (std::is_floating_point_v<T>) return pow(x, y);
        else if constexpr (std::is_same_v<T, bool>) return x || !y;
        else return int_pow<T>(x, y);
      case BinaryOp::Maximum: return nan_max(x, y);
      case BinaryOp::Minimum: return nan_min(x, y);
      case BinaryOp::LogicalAnd: return T(x != T(0) && y != T(0));
      case BinaryOp::LogicalOr: return T(x != T(0) || y != T(0));
    }
    return x;
  }
};

/// out (bool) = x op y for one kiln::CompareOp.
struct Compare {
  CompareOp op;

  template <typename T>
  KILN_HD bool operator()(T x, T y) const {
    switch (op) {
      case CompareOp::Eq: return x == y;
      case CompareOp::Ne: return x != y;
      case CompareOp::Lt: return x < y;
      case CompareOp::Le: return x <= y;
      case CompareOp::Gt: return x > y;
      case CompareOp::Ge: return x >= y;
    }
    return false;
  }
};

}  // namespace kiln::math
