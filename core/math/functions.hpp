#pragma once
/// Scalar math that both backends compile (KILN_HD): std:: functions on the host, CUDA's
/// device functions in nvcc's device pass, with float and double overloads. The shared
/// elementwise ops (math/elementwise.hpp) and the optimizer updates call these, never std::
/// directly, so one source serves both backends.
///   float y = kiln::math::exp(x);
///   if (kiln::math::isnan(v)) ...
#include <cmath>
#include <limits>

#include "../host_device.hpp"

namespace kiln::math {

// One float and one double overload per function: ::f##f / ::f on the device, std::f on the host.
#if defined(__CUDA_ARCH__)
#define KILN_MATH_UNARY(name, dev)                    \
  KILN_HD float name(float x) { return ::dev##f(x); } \
  KILN_HD double name(double x) { return ::dev(x); }
#else
#define KILN_MATH_UNARY(name, dev)                     \
  KILN_HD float name(float x) { return std::name(x); } \
  KILN_HD double name(double x) { return std::name(x); }
#endif
KILN_MATH_UNARY(exp, exp)
KILN_MATH_UNARY(log, log)
KILN_MATH_UNARY(sqrt, sqrt)
KILN_MATH_UNARY(tanh, tanh)
KILN_MATH_UNARY(erf, erf)
KILN_MATH_UNARY(sin, sin)
KILN_MATH_UNARY(cos, cos)
KILN_MATH_UNARY(abs, fabs)
KILN_MATH_UNARY(floor, floor)
#undef KILN_MATH_UNARY

#if defined(__CUDA_ARCH__)
KILN_HD float pow(float x, float y) { return ::powf(x, y); }
KILN_HD double pow(double x, double y) { return ::pow(x, y); }
/// The next float after x towards y.
KILN_HD float nextafter(float x, float y) { return ::nextafterf(x, y); }
/// x * y + z rounded once.
KILN_HD double fma(double x, double y, double z) { return ::fma(x, y, z); }
#else
KILN_HD float pow(float x, float y) { return std::pow(x, y); }
KILN_HD double pow(double x, double y) { return std::pow(x, y); }
KILN_HD float nextafter(float x, float y) { return std::nextafter(x, y); }
KILN_HD double fma(double x, double y, double z) { return std::fma(x, y, z); }
#endif

/// NaN test for any arithmetic type (false for integers and bool).
template <typename T>
KILN_HD bool isnan(T x) {
  return x != x;
}

template <typename T>
KILN_HD T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}
template <typename T>
KILN_HD T infinity() {
  return std::numeric_limits<T>::infinity();
}

}  // namespace kiln::math
