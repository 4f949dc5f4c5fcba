// Elementwise kernels: unary (Eigen-vectorized on contiguous float runs), binary, compare,
// where. The scalar math is core/math/elementwise.hpp's, shared with the CUDA kernels.
// bfloat16/float16 runs are converted to float32 in chunks, computed by the float32 code and
// rounded once on the way out.
#include <fmt/format.h>
#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <unsupported/Eigen/SpecialFunctions>

#include "../math/elementwise.hpp"
#include "convert.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"
#include "vec_math.hpp"

namespace kiln::cpu {
namespace {

using math::kSqrt1_2;
using math::kSqrt2OverPi;

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
        fix_edges(
            o, i, n, [](T v) { return v < L::min(); }, [](T v) { return std::log(v); });
        return true;
      // Sqrt is left to std::sqrt: Eigen's fast-math packet sqrt (rsqrt + Newton) is not correctly
      // rounded (1 ulp off for ~40% of inputs) and gives NaN for inf.
      case UnaryOp::Rsqrt: y = x.rsqrt(); return true;
      case UnaryOp::Tanh: y = x.tanh(); return true;
      case UnaryOp::Sigmoid:
      case UnaryOp::Silu: {
        // 1 / (1 + exp(-x)) and x / (1 + exp(-x)) through exp_run, as PyTorch computes them:
        // Eigen's logistic() is a fast approximation (float32: 3e-4 relative error at x = -8.75).
        constexpr std::int64_t kChunk = 512;
        T e[kChunk];
        for (std::int64_t k0 = 0; k0 < n; k0 += kChunk) {
          const std::int64_t m = std::min(kChunk, n - k0);
          Eigen::Map<const A> xc(i + k0, m);
          Eigen::Map<A> ec(e, m), yc(o + k0, m);
          ec = -xc;
          exp_run(e, e, m);
          if (op == UnaryOp::Sigmoid) yc = T(1) / (T(1) + ec);
          else yc = xc / (T(1) + ec);
        }
        return true;
      }
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
inline void binary_run(T* o, const T* x, const T* y, std::int64_t n, std::int64_t so, std::int64_t sx, std::int64_t sy,
                       F f) {
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

// Chunk length of the float32 staging buffers of the 16-bit float loops (on the stack).
constexpr std::int64_t kChunk = 256;

// dst[k] = float(p[k * stride]) for k < n (stride 0 broadcasts).
template <typename T>
void gather_float(const T* p, std::int64_t stride, std::int64_t n, float* dst) {
  convert_run(dst, 1, p, stride, n);
}
template <typename T>
void scatter_float(const float* src, T* p, std::int64_t stride, std::int64_t n) {
  convert_run(p, stride, src, 1, n);
}

// A bfloat16/float16 unary run through float32 chunks.
template <typename T>
void reduced_unary_run(UnaryOp op, const math::Unary& f, T* o, const T* i, std::int64_t n, std::int64_t so,
                       std::int64_t si) {
  float in[kChunk], res[kChunk];
  for (std::int64_t b = 0; b < n; b += kChunk) {
    const std::int64_t m = std::min(kChunk, n - b);
    gather_float(i + b * si, si, m, in);
    if (!eigen_unary<float>(op, res, in, m))
      for (std::int64_t k = 0; k < m; ++k) res[k] = f(in[k]);
    scatter_float(res, o + b * so, so, m);
  }
}

// f computes in compute_t<T>; 16-bit float runs go through float32 chunks.
template <typename T, typename F>
void run_binary(const Tensor& x, const Tensor& y, const Tensor& out, F f) {
  strided_loop<3>(out.shape(), make_operands<3>({&out, &x, &y}), [f](auto p, std::int64_t n, auto st) {
    constexpr std::int64_t s = sizeof(T);
    T* o = reinterpret_cast<T*>(p[0]);
    const T* a = reinterpret_cast<const T*>(p[1]);
    const T* b = reinterpret_cast<const T*>(p[2]);
    if constexpr (is_reduced_float_v<T>) {
      float fa[kChunk], fb[kChunk], fo[kChunk];
      for (std::int64_t c = 0; c < n; c += kChunk) {
        const std::int64_t m = std::min(kChunk, n - c);
        gather_float(a + c * (st[1] / s), st[1] / s, m, fa);
        gather_float(b + c * (st[2] / s), st[2] / s, m, fb);
        binary_run(fo, fa, fb, m, 1, 1, 1, f);
        scatter_float(fo, o + c * (st[0] / s), st[0] / s, m);
      }
    } else {
      binary_run(o, a, b, n, st[0] / s, st[1] / s, st[2] / s, f);
    }
  });
}

// Calls f(std::integral_constant<BinaryOp, op>{}).
template <typename F>
void visit_binary_op(BinaryOp op, F&& f) {
  using B = BinaryOp;
  switch (op) {
    case B::Add: f(std::integral_constant<B, B::Add>{}); break;
    case B::Sub: f(std::integral_constant<B, B::Sub>{}); break;
    case B::Mul: f(std::integral_constant<B, B::Mul>{}); break;
    case B::Div: f(std::integral_constant<B, B::Div>{}); break;
    case B::Pow: f(std::integral_constant<B, B::Pow>{}); break;
    case B::Maximum: f(std::integral_constant<B, B::Maximum>{}); break;
    case B::Minimum: f(std::integral_constant<B, B::Minimum>{}); break;
    case B::LogicalAnd: f(std::integral_constant<B, B::LogicalAnd>{}); break;
    case B::LogicalOr: f(std::integral_constant<B, B::LogicalOr>{}); break;
  }
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  if (op == UnaryOp::LogicalNot && x.dtype() != kBool) {
    visit_dtype(x.dtype(), [&](auto z) {
      using T = decltype(z);
      strided_loop<2>(out.shape(), make_operands<2>({&out, &x}), [](auto p, std::int64_t n, auto st) {
        for (std::int64_t k = 0; k < n; ++k)
          *reinterpret_cast<bool*>(p[0] + k * st[0]) =
              math::IsZero{}(math::compute_t<T>(*reinterpret_cast<const T*>(p[1] + k * st[1])));
      });
    });
    return;
  }
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    const math::Unary f{op, a, b};
    strided_loop<2>(
        out.shape(), make_operands<2>({&out, &x}),
        [op, f](auto p, std::int64_t n, auto st) {
          T* o = reinterpret_cast<T*>(p[0]);
          const T* i = reinterpret_cast<const T*>(p[1]);
          std::int64_t so = st[0] / std::int64_t(sizeof(T)), si = st[1] / std::int64_t(sizeof(T));
          if constexpr (is_reduced_float_v<T>) {
            reduced_unary_run(op, f, o, i, n, so, si);
          } else if (so == 1 && si == 1) {
            if (eigen_unary<T>(op, o, i, n)) return;
            for (std::int64_t k = 0; k < n; ++k) o[k] = f(i[k]);
          } else {
            for (std::int64_t k = 0; k < n; ++k) o[k * so] = f(i[k * si]);
          }
        },
        8192);
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    // The op as a compile-time constant: each op gets its own (vectorizable) run loop.
    visit_binary_op(op, [&](auto c) {
      using C = math::compute_t<T>;
      run_binary<T>(x, y, out, [](C a, C b) -> C { return math::Binary{decltype(c)::value}(a, b); });
    });
  });
}

void CpuBackend::compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using C = math::compute_t<T>;
    strided_loop<3>(out.shape(), make_operands<3>({&out, &x, &y}), [op](auto p, std::int64_t n, auto st) {
      const math::Compare f{op};
      for (std::int64_t k = 0; k < n; ++k)
        *reinterpret_cast<bool*>(p[0] + k * st[0]) =
            f(C(*reinterpret_cast<const T*>(p[1] + k * st[1])), C(*reinterpret_cast<const T*>(p[2] + k * st[2])));
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
