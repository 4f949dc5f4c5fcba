// Backend::unary_backward: gx = g * f'(v) for the activations in one pass (the autograd ops used
// to build it from 6-10 activation-sized tensor ops). The formulas are core/math/unary_grad.hpp's;
// here they run as Eigen packet math on chunks of contiguous float/double, with strided operands
// and bfloat16/float16 gathered into float32 (or float64) chunks first and rounded once on store.
#include <Eigen/Core>
#include <cstdint>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>

#include "../math/unary_grad.hpp"
#include "convert.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"
#include "vec_math.hpp"

namespace kiln::cpu {
namespace {

// Elements per chunk: the stack buffers of one chunk stay in L1.
constexpr std::int64_t kChunk = 512;

// o[k] = g[k] * f'(v[k]) for k < n <= kChunk, contiguous; o aliases neither input.
template <typename T>
void grad_chunk(UnaryOp op, T* o, const T* g, const T* v, std::int64_t n) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const A> G(g, n), V(v, n);
  Eigen::Map<A> O(o, n);
  switch (op) {
    case UnaryOp::GeluErf: {
      T arg[kChunk], e[kChunk];
      Eigen::Map<A>(arg, n) = T(-0.5) * V.square();
      exp_run(e, arg, n);  // std::exp where Eigen's packet exp is wrong (large |v|)
      O = G * (T(0.5) * (T(1) + (V * T(math::kSqrt1_2)).erf()) + V * T(math::kInvSqrt2Pi) * Eigen::Map<A>(e, n));
      return;
    }
    case UnaryOp::GeluTanh: {
      T t[kChunk];
      Eigen::Map<A> Tt(t, n);
      Tt = (T(math::kSqrt2OverPi) * (V + T(math::kGeluTanhC) * V.cube())).tanh();
      O = G * (T(0.5) * (T(1) + Tt) + T(0.5) * V * (T(1) - Tt.square()) * T(math::kSqrt2OverPi) *
                                          (T(1) + T(3 * math::kGeluTanhC) * V.square()));
      return;
    }
    case UnaryOp::Silu: {
      // sigmoid as 1 / (1 + exp(-v)) through exp_run: Eigen's packet exp clamps its argument,
      // which would leave a tiny nonzero sigmoid for very negative float64 v.
      T arg[kChunk], s[kChunk];
      Eigen::Map<A>(arg, n) = -V;
      exp_run(s, arg, n);
      Eigen::Map<A> S(s, n);
      S = T(1) / (T(1) + S);
      O = G * S * (T(1) + V * (T(1) - S));
      return;
    }
    case UnaryOp::Sigmoid: O = G * V * (T(1) - V); return;
    case UnaryOp::Tanh: O = G * (T(1) - V.square()); return;
    case UnaryOp::Relu: O = G * (V > T(0)).template cast<T>(); return;
    default: {
      const math::UnaryGrad f{op};
      for (std::int64_t k = 0; k < n; ++k) o[k] = f(g[k], v[k]);
    }
  }
}

// dst[k] = C(p[k * s]) for k < n.
template <typename C, typename T>
void load_run(const T* p, std::int64_t s, std::int64_t n, C* dst) {
  if constexpr (is_reduced_float_v<T>) {
    if (s == 1) return load_float(p, dst, n);
  }
  for (std::int64_t k = 0; k < n; ++k) dst[k] = static_cast<C>(p[k * s]);
}
template <typename C, typename T>
void store_run(const C* src, T* p, std::int64_t s, std::int64_t n) {
  if constexpr (is_reduced_float_v<T>) {
    if (s == 1) return store_float(src, p, n);
  }
  for (std::int64_t k = 0; k < n; ++k) p[k * s] = T(src[k]);
}

// One innermost run of the strided loop: contiguous float/double in place, the rest via chunks.
template <typename T>
void grad_run(UnaryOp op, T* o, const T* g, const T* v, std::int64_t n, std::int64_t so, std::int64_t sg,
              std::int64_t sv) {
  using C = math::compute_t<T>;
  for (std::int64_t b = 0; b < n; b += kChunk) {
    const std::int64_t m = std::min(kChunk, n - b);
    if constexpr (std::is_same_v<T, C>) {
      if (so == 1 && sg == 1 && sv == 1) {
        grad_chunk<C>(op, o + b, g + b, v + b, m);
        continue;
      }
    }
    C gc[kChunk], vc[kChunk], oc[kChunk];
    load_run(g + b * sg, sg, m, gc);
    load_run(v + b * sv, sv, m, vc);
    grad_chunk<C>(op, oc, gc, vc, m);
    store_run(oc, o + b * so, so, m);
  }
}

}  // namespace

void CpuBackend::unary_backward(UnaryOp op, const Tensor& g, const Tensor& v, const Tensor& gx) {
  visit_dtype(gx.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (is_float_storage_v<T>) {
      // Transcendental ops cost ~10x a copy per element: a smaller grain than the plain loops'.
      strided_loop<3>(
          gx.shape(), make_operands<3>({&gx, &g, &v}),
          [op](auto p, std::int64_t n, auto st) {
            constexpr std::int64_t s = sizeof(T);
            grad_run(op, reinterpret_cast<T*>(p[0]), reinterpret_cast<const T*>(p[1]), reinterpret_cast<const T*>(p[2]),
                     n, st[0] / s, st[1] / s, st[2] / s);
          },
          8192);
    }
  });
}

}  // namespace kiln::cpu
