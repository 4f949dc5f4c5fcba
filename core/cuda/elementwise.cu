// Elementwise kernels: copy (with dtype conversion), fill, unary, binary, compare, where.
// One kernel per (dtype, index width); the op is a runtime switch, uniform across a launch,
// which keeps the number of instantiations (and compile time) small. Every kernel walks an
// Iter: a contiguous fast path (offset = index) or per-operand strided offsets.
#include <cmath>
#include <cstring>

#include "device_util.cuh"

namespace kiln::cuda {
namespace {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) return v != S(0);
  else return static_cast<D>(v);
}

template <typename T>
__device__ __forceinline__ T int_pow(T base, T e) {
  if (e < 0) return base == 1 ? T(1) : (base == -1 ? ((e & 1) ? T(-1) : T(1)) : T(0));
  T r = 1;
  while (e > 0) {
    if (e & 1) r *= base;
    base *= base;
    e >>= 1;
  }
  return r;
}

// Mirrors the CPU backend's scalar_unary (core/cpu/elementwise.cpp) op for op.
template <typename T>
__device__ T unary_value(UnaryOp op, T x, double a, double b) {
  if constexpr (std::is_same_v<T, bool>) {
    return op == UnaryOp::LogicalNot ? !x : x;
  } else if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Abs: return x < 0 ? -x : x;
      case UnaryOp::Sign: return T((x > 0) - (x < 0));
      case UnaryOp::Relu: return x > 0 ? x : 0;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Clamp: {
        T r = x;
        if (!is_nan(a) && r < T(a)) r = T(a);
        if (!is_nan(b) && r > T(b)) r = T(b);
        return r;
      }
      case UnaryOp::Step: return static_cast<double>(x) > a ? 1 : 0;
      case UnaryOp::PowScalar: {  // a negative exponent gives 1, as on the CPU
        T r = 1, base = x;
        for (auto e = static_cast<std::int64_t>(a); e > 0; e >>= 1) {
          if (e & 1) r *= base;
          base *= base;
        }
        return r;
      }
      default: return x;
    }
  } else {
    switch (op) {
      case UnaryOp::Neg: return -x;
      case UnaryOp::Exp: return exp(x);
      case UnaryOp::Log: return log(x);
      case UnaryOp::Sqrt: return sqrt(x);
      case UnaryOp::Rsqrt: return T(1) / sqrt(x);
      case UnaryOp::Abs: return fabs(x);
      case UnaryOp::Sign: return is_nan(x) ? x : T((x > 0) - (x < 0));
      case UnaryOp::Tanh: return tanh(x);
      case UnaryOp::Sigmoid: return T(1) / (T(1) + exp(-x));
      case UnaryOp::Relu: return x > 0 ? x : (is_nan(x) ? x : T(0));
      case UnaryOp::GeluErf: return T(0.5) * x * (T(1) + erf(x * T(kSqrt1_2)));
      case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
      case UnaryOp::Silu: return x / (T(1) + exp(-x));
      case UnaryOp::Erf: return erf(x);
      case UnaryOp::Reciprocal: return T(1) / x;
      case UnaryOp::Square: return x * x;
      case UnaryOp::Sin: return sin(x);
      case UnaryOp::Cos: return cos(x);
      case UnaryOp::LogicalNot: return x == T(0);
      case UnaryOp::PowScalar: return a == 2.0 ? x * x : a == 0.5 ? sqrt(x) : pow(x, T(a));
      case UnaryOp::Clamp: {
        T r = x;
        if (!is_nan(a) && r < T(a)) r = T(a);
        if (!is_nan(b) && r > T(b)) r = T(b);
        return r;
      }
      case UnaryOp::Step: return x > T(a) ? T(1) : T(0);
    }
    return x;
  }
}

template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;  // NaN
  }
  return a > b ? a : b;
}
template <typename T>
__device__ __forceinline__ T nan_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;
  }
  return a < b ? a : b;
}

// Mirrors CpuBackend::binary.
template <typename T>
__device__ T binary_value(BinaryOp op, T x, T y) {
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

template <typename T>
__device__ __forceinline__ bool compare_value(CompareOp op, T a, T b) {
  switch (op) {
    case CompareOp::Eq: return a == b;
    case CompareOp::Ne: return a != b;
    case CompareOp::Lt: return a < b;
    case CompareOp::Le: return a <= b;
    case CompareOp::Gt: return a > b;
    case CompareOp::Ge: return a >= b;
  }
  return false;
}

// ---- kernels ----
template <typename D, typename I>
__global__ void copy_kernel(Iter<2> it, DType src) {
  D* o = static_cast<D*>(it.data[0]);
  const void* x = it.data[1];
  auto f = [&](const I (&off)[2]) {
    D v;
    switch (src) {
      case DType::Bool: v = convert<D>(static_cast<const bool*>(x)[off[1]]); break;
      case DType::Int64: v = convert<D>(static_cast<const std::int64_t*>(x)[off[1]]); break;
      case DType::Float32: v = convert<D>(static_cast<const float*>(x)[off[1]]); break;
      default: v = convert<D>(static_cast<const double*>(x)[off[1]]); break;
    }
    o[off[0]] = v;
  };
  iter_loop<2, I>(it, f);
}

template <typename T, typename I>
__global__ void fill_kernel(Iter<1> it, T v) {
  T* o = static_cast<T*>(it.data[0]);
  auto f = [&](const I (&off)[1]) { o[off[0]] = v; };
  iter_loop<1, I>(it, f);
}

template <typename T, typename I>
__global__ void unary_kernel(Iter<2> it, UnaryOp op, double a, double b) {
  T* o = static_cast<T*>(it.data[0]);
  const T* x = static_cast<const T*>(it.data[1]);
  auto f = [&](const I (&off)[2]) { o[off[0]] = unary_value<T>(op, x[off[1]], a, b); };
  iter_loop<2, I>(it, f);
}

// LogicalNot of a non-bool x: bool out.
template <typename T, typename I>
__global__ void not_kernel(Iter<2> it) {
  bool* o = static_cast<bool*>(it.data[0]);
  const T* x = static_cast<const T*>(it.data[1]);
  auto f = [&](const I (&off)[2]) { o[off[0]] = x[off[1]] == T(0); };
  iter_loop<2, I>(it, f);
}

template <typename T, typename I>
__global__ void binary_kernel(Iter<3> it, BinaryOp op) {
  T* o = static_cast<T*>(it.data[0]);
  const T* x = static_cast<const T*>(it.data[1]);
  const T* y = static_cast<const T*>(it.data[2]);
  auto f = [&](const I (&off)[3]) { o[off[0]] = binary_value<T>(op, x[off[1]], y[off[2]]); };
  iter_loop<3, I>(it, f);
}

template <typename T, typename I>
__global__ void compare_kernel(Iter<3> it, CompareOp op) {
  bool* o = static_cast<bool*>(it.data[0]);
  const T* x = static_cast<const T*>(it.data[1]);
  const T* y = static_cast<const T*>(it.data[2]);
  auto f = [&](const I (&off)[3]) { o[off[0]] = compare_value<T>(op, x[off[1]], y[off[2]]); };
  iter_loop<3, I>(it, f);
}

template <typename T, typename I>
__global__ void where_kernel(Iter<4> it) {
  T* o = static_cast<T*>(it.data[0]);
  const bool* c = static_cast<const bool*>(it.data[1]);
  const T* x = static_cast<const T*>(it.data[2]);
  const T* y = static_cast<const T*>(it.data[3]);
  auto f = [&](const I (&off)[4]) { o[off[0]] = c[off[1]] ? x[off[2]] : y[off[3]]; };
  iter_loop<4, I>(it, f);
}

// Launches kernel<I> with 32-bit indices when they fit.
template <int N, typename K32, typename K64, typename... Args>
void launch_iter(const Iter<N>& it, cudaStream_t s, K32 k32, K64 k64, Args... args) {
  if (it.numel == 0) return;
  const unsigned grid = grid_for(it.numel);
  if (it.use32) k32<<<grid, kThreads, 0, s>>>(it, args...);
  else k64<<<grid, kThreads, 0, s>>>(it, args...);
}

}  // namespace

void launch_copy(const Iter<2>& it, DType dst, DType src, cudaStream_t s) {
  dispatch(dst, [&](auto z) {
    using D = decltype(z);
    launch_iter(it, s, copy_kernel<D, std::uint32_t>, copy_kernel<D, std::int64_t>, src);
  });
}

void launch_fill(const Iter<1>& it, DType dt, std::uint64_t bits, cudaStream_t s) {
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    launch_iter(it, s, fill_kernel<T, std::uint32_t>, fill_kernel<T, std::int64_t>, v);
  });
}

void launch_unary(UnaryOp op, const Iter<2>& it, DType dt, DType xdt, double a, double b, cudaStream_t s) {
  if (op == UnaryOp::LogicalNot && xdt != DType::Bool) {
    dispatch(xdt, [&](auto z) {
      using T = decltype(z);
      launch_iter(it, s, not_kernel<T, std::uint32_t>, not_kernel<T, std::int64_t>);
    });
    return;
  }
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    launch_iter(it, s, unary_kernel<T, std::uint32_t>, unary_kernel<T, std::int64_t>, op, a, b);
  });
}

void launch_binary(BinaryOp op, const Iter<3>& it, DType dt, cudaStream_t s) {
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    launch_iter(it, s, binary_kernel<T, std::uint32_t>, binary_kernel<T, std::int64_t>, op);
  });
}

void launch_compare(CompareOp op, const Iter<3>& it, DType dt, cudaStream_t s) {
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    launch_iter(it, s, compare_kernel<T, std::uint32_t>, compare_kernel<T, std::int64_t>, op);
  });
}

void launch_where(const Iter<4>& it, DType dt, cudaStream_t s) {
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    launch_iter(it, s, where_kernel<T, std::uint32_t>, where_kernel<T, std::int64_t>);
  });
}

}  // namespace kiln::cuda
