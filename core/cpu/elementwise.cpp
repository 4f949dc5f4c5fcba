// Elementwise kernels: unary (Eigen-vectorized on contiguous float runs),
// binary, compare, where.
#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>
#include <cmath>
#include <limits>
#include <fmt/format.h>

#include "cpu_backend.hpp"
#include "loops.hpp"
#include "vec_math.hpp"

namespace kiln::cpu {
namespace {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

template <typename T>
inline T scalar_unary(UnaryOp op, T x, double a, double b) {
  if constexpr (std::is_same_v<T, bool>) {
    switch (op) {
      case UnaryOp::LogicalNot: return !x;
      case UnaryOp::Abs: case UnaryOp::Relu: case UnaryOp::Square: return x;
      default: return x;
    }
  } else if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Abs: return x < 0 ? -x : x;
      case UnaryOp::Sign: return T((x > 0) - (x < 0));
      case UnaryOp::Relu: return x > 0 ? x : 0;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Clamp: {
        T r = x;
        if (!std::isnan(a) && r < T(a)) r = T(a);
        if (!std::isnan(b) && r > T(b)) r = T(b);
        return r;
      }
      case UnaryOp::Step: return double(x) > a ? 1 : 0;
      case UnaryOp::PowScalar: {
        T r = 1, base = x;
        auto e = static_cast<std::int64_t>(a);
        while (e > 0) { if (e & 1) r *= base; base *= base; e >>= 1; }
        return r;
      }
      default: return x;
    }
  } else {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Exp: return std::exp(x);
      case UnaryOp::Log: return std::log(x);
      case UnaryOp::Sqrt: return std::sqrt(x);
      case UnaryOp::Rsqrt: return T(1) / std::sqrt(x);
      case UnaryOp::Abs: return std::abs(x);
      case UnaryOp::Sign: return std::isnan(x) ? x : T((x > 0) - (x < 0));
      case UnaryOp::Tanh: return std::tanh(x);
      case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
      case UnaryOp::Relu: return x > 0 ? x : (std::isnan(x) ? x : T(0));
      case UnaryOp::GeluErf: return T(0.5) * x * (T(1) + std::erf(x * T(kSqrt1_2)));
      case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
      case UnaryOp::Silu: return x / (T(1) + std::exp(-x));
      case UnaryOp::Erf: return std::erf(x);
      case UnaryOp::Reciprocal: return T(1) / x;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Sin: return std::sin(x);
      case UnaryOp::Cos: return std::cos(x);
      case UnaryOp::LogicalNot: return x == T(0);
      case UnaryOp::PowScalar: return a == 2.0 ? x * x : a == 0.5 ? std::sqrt(x) : std::pow(x, T(a));
      case UnaryOp::Clamp: {
        T r = x;
        if (!std::isnan(a) && r < T(a)) r = T(a);
        if (!std::isnan(b) && r > T(b)) r = T(b);
        return r;
      }
      case UnaryOp::Step: return x > T(a) ? T(1) : T(0);
    }
    return x;
  }
}

// Vectorized contiguous float/double runs through Eigen's packet math; false if not covered.
template <typename T>
bool eigen_unary(UnaryOp op, T* o, const T* i, std::int64_t n) {
  if constexpr (!std::is_floating_point_v<T>) {
    return false;
  } else {
    using A = Eigen::Array<T, Eigen::Dynamic, 1>;
    using L = std::numeric_limits<T>;
    Eigen::Map<const A> x(i, n);
    Eigen::Map<A> y(o, n);
    switch (op) {
      case UnaryOp::Exp: {
        // Below lo the result is subnormal or 0; above hi Eigen's argument clamp bites.
        exp_run(o, i, n);
        return true;
      }
      case UnaryOp::Log:
        y = x.log();
        fix_edges(o, i, n, [](T v) { return v < L::min(); }, [](T v) { return std::log(v); });
        return true;
      // Sqrt is left to std::sqrt: Eigen's fast-math packet sqrt (rsqrt + Newton) is not correctly
      // rounded (1 ulp off for ~40% of inputs) and gives NaN for inf.
      case UnaryOp::Rsqrt: y = x.rsqrt(); return true;
      case UnaryOp::Tanh: y = x.tanh(); return true;
      case UnaryOp::Sigmoid: y = x.logistic(); return true;
      case UnaryOp::Silu: y = x * x.logistic(); return true;
      case UnaryOp::Erf: y = x.erf(); return true;
      case UnaryOp::GeluErf: y = T(0.5) * x * (T(1) + (x * T(kSqrt1_2)).erf()); return true;
      case UnaryOp::GeluTanh:
        y = T(0.5) * x * (T(1) + (T(kSqrt2OverPi) * (x + T(0.044715) * x.cube())).tanh());
        return true;
      case UnaryOp::Sin: y = x.sin(); return true;
      case UnaryOp::Cos: y = x.cos(); return true;
      default: return false;
    }
  }
}

template <typename T, typename F>
inline void binary_run(T* o, const T* x, const T* y, std::int64_t n, std::int64_t so, std::int64_t sx,
                       std::int64_t sy, F f) {
  if (so == 1 && sx == 1 && sy == 1) {
    for (std::int64_t k = 0; k < n; ++k) o[k] = f(x[k], y[k]);
  } else if (so == 1 && sx == 1 && sy == 0) {
    const T yv = *y;
    for (std::int64_t k = 0; k < n; ++k) o[k] = f(x[k], yv);
  } else if (so == 1 && sx == 0 && sy == 1) {
    const T xv = *x;
    for (std::int64_t k = 0; k < n; ++k) o[k] = f(xv, y[k]);
  } else {
    for (std::int64_t k = 0; k < n; ++k) o[k * so] = f(x[k * sx], y[k * sy]);
  }
}

template <typename T>
inline T ipow(T base, T e) {
  if (e < 0) return base == 1 ? 1 : (base == -1 ? ((e & 1) ? -1 : 1) : 0);
  T r = 1;
  while (e > 0) { if (e & 1) r *= base; base *= base; e >>= 1; }
  return r;
}

template <typename T, typename F>
void run_binary(const Tensor& x, const Tensor& y, const Tensor& out, F f) {
  strided_loop<3>(out.shape(), make_operands<3>({&out, &x, &y}), [f](auto p, std::int64_t n, auto st) {
    constexpr std::int64_t s = sizeof(T);
    binary_run(reinterpret_cast<T*>(p[0]), reinterpret_cast<const T*>(p[1]), reinterpret_cast<const T*>(p[2]), n,
               st[0] / s, st[1] / s, st[2] / s, f);
  });
}

template <typename T>
inline T nan_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
  }
  return a > b ? a : b;
}
template <typename T>
inline T nan_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
  }
  return a < b ? a : b;
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  if (op == UnaryOp::LogicalNot && x.dtype() != kBool) {
    visit_dtype(x.dtype(), [&](auto z) {
      using T = decltype(z);
      strided_loop<2>(out.shape(), make_operands<2>({&out, &x}), [](auto p, std::int64_t n, auto st) {
        for (std::int64_t k = 0; k < n; ++k)
          *reinterpret_cast<bool*>(p[0] + k * st[0]) = *reinterpret_cast<const T*>(p[1] + k * st[1]) == T(0);
      });
    });
    return;
  }
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    strided_loop<2>(out.shape(), make_operands<2>({&out, &x}), [op, a, b](auto p, std::int64_t n, auto st) {
      T* o = reinterpret_cast<T*>(p[0]);
      const T* i = reinterpret_cast<const T*>(p[1]);
      std::int64_t so = st[0] / std::int64_t(sizeof(T)), si = st[1] / std::int64_t(sizeof(T));
      if (so == 1 && si == 1) {
        if (eigen_unary<T>(op, o, i, n)) return;
        for (std::int64_t k = 0; k < n; ++k) o[k] = scalar_unary<T>(op, i[k], a, b);
      } else {
        for (std::int64_t k = 0; k < n; ++k) o[k * so] = scalar_unary<T>(op, i[k * si], a, b);
      }
    }, 8192);
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    switch (op) {
      case BinaryOp::Add: run_binary<T>(x, y, out, [](T a, T b) -> T { return a + b; }); break;
      case BinaryOp::Sub: run_binary<T>(x, y, out, [](T a, T b) -> T { return a - b; }); break;
      case BinaryOp::Mul:
        if constexpr (std::is_same_v<T, bool>) run_binary<T>(x, y, out, [](T a, T b) -> T { return a && b; });
        else run_binary<T>(x, y, out, [](T a, T b) -> T { return a * b; });
        break;
      case BinaryOp::Div:
        if constexpr (std::is_floating_point_v<T>) run_binary<T>(x, y, out, [](T a, T b) -> T { return a / b; });
        else run_binary<T>(x, y, out, [](T a, T b) -> T { return b == 0 ? T(0) : T(a / b); });
        break;
      case BinaryOp::Pow:
        if constexpr (std::is_floating_point_v<T>) run_binary<T>(x, y, out, [](T a, T b) -> T { return std::pow(a, b); });
        else if constexpr (std::is_same_v<T, bool>) run_binary<T>(x, y, out, [](T a, T b) -> T { return a || !b; });
        else run_binary<T>(x, y, out, [](T a, T b) -> T { return ipow(a, b); });
        break;
      case BinaryOp::Maximum: run_binary<T>(x, y, out, [](T a, T b) -> T { return nan_max(a, b); }); break;
      case BinaryOp::Minimum: run_binary<T>(x, y, out, [](T a, T b) -> T { return nan_min(a, b); }); break;
      case BinaryOp::LogicalAnd: run_binary<T>(x, y, out, [](T a, T b) -> T { return T(a != T(0) && b != T(0)); }); break;
      case BinaryOp::LogicalOr: run_binary<T>(x, y, out, [](T a, T b) -> T { return T(a != T(0) || b != T(0)); }); break;
    }
  });
}

void CpuBackend::compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    strided_loop<3>(out.shape(), make_operands<3>({&out, &x, &y}), [op](auto p, std::int64_t n, auto st) {
      for (std::int64_t k = 0; k < n; ++k) {
        T a = *reinterpret_cast<const T*>(p[1] + k * st[1]);
        T b = *reinterpret_cast<const T*>(p[2] + k * st[2]);
        bool r = false;
        switch (op) {
          case CompareOp::Eq: r = a == b; break;
          case CompareOp::Ne: r = a != b; break;
          case CompareOp::Lt: r = a < b; break;
          case CompareOp::Le: r = a <= b; break;
          case CompareOp::Gt: r = a > b; break;
          case CompareOp::Ge: r = a >= b; break;
        }
        *reinterpret_cast<bool*>(p[0] + k * st[0]) = r;
      }
    });
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) {
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    strided_loop<4>(out.shape(), make_operands<4>({&out, &cond, &x, &y}), [](auto p, std::int64_t n, auto st) {
      for (std::int64_t k = 0; k < n; ++k) {
        bool c = *reinterpret_cast<const bool*>(p[1] + k * st[1]);
        *reinterpret_cast<T*>(p[0] + k * st[0]) =
            c ? *reinterpret_cast<const T*>(p[2] + k * st[2]) : *reinterpret_cast<const T*>(p[3] + k * st[3]);
      }
    });
  });
}

}  // namespace kiln::cpu
