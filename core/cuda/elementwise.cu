// Elementwise kernels and the backend methods that launch them: copy (with dtype conversion),
// fill, unary, unary_backward, binary, compare, where. The scalar math is core/math/elementwise.hpp's, shared
// with the CPU backend. One kernel per (dtype, index width); the op is a runtime switch,
// uniform across a launch, which keeps the number of instantiations (and compile time) small.
// Every kernel walks an Iter: a contiguous fast path (offset = index) or strided offsets.
#include <cmath>
#include <cstring>

#include "../math/elementwise.hpp"
#include "../math/unary_grad.hpp"
#include "cuda_backend.hpp"
#include "device_util.cuh"

namespace kiln::cuda {
namespace {

using math::convert;

// ---- kernels ----
template <typename D, typename I>
__global__ void copy_kernel(Iter<2> it, DType src) {
  D* o = static_cast<D*>(it.data[0]);
  const void* x = it.data[1];
  auto f = [&](const I(&off)[2]) {
    D v;
    switch (src) {
      case DType::Bool: v = convert<D>(static_cast<const bool*>(x)[off[1]]); break;
      case DType::Int64: v = convert<D>(static_cast<const std::int64_t*>(x)[off[1]]); break;
      case DType::Float32: v = convert<D>(static_cast<const float*>(x)[off[1]]); break;
      case DType::BFloat16: v = convert<D>(static_cast<const BFloat16*>(x)[off[1]]); break;
      case DType::Float16: v = convert<D>(static_cast<const Half*>(x)[off[1]]); break;
      default: v = convert<D>(static_cast<const double*>(x)[off[1]]); break;
    }
    o[off[0]] = v;
  };
  iter_loop<2, I>(it, f);
}

template <typename T, typename I>
__global__ void fill_kernel(Iter<1> it, T v) {
  T* o = static_cast<T*>(it.data[0]);
  auto f = [&](const I(&off)[1]) { o[off[0]] = v; };
  iter_loop<1, I>(it, f);
}

// out[i] = op(x[i]) or op(x[i], y[i]) for N = 2 or 3 operands: inputs of type T converted to
// their compute type, the result stored as O (T for arithmetic, bool for compare and not).
template <typename O, typename T, typename I, typename Op, int N>
__global__ void map_kernel(Iter<N> it, Op op) {
  using C = math::compute_t<T>;
  O* o = static_cast<O*>(it.data[0]);
  const T* x = static_cast<const T*>(it.data[1]);
  const T* y = static_cast<const T*>(it.data[N - 1]);
  auto f = [&](const I(&off)[N]) {
    if constexpr (N == 2) o[off[0]] = static_cast<O>(op(static_cast<C>(x[off[1]])));
    else o[off[0]] = static_cast<O>(op(static_cast<C>(x[off[1]]), static_cast<C>(y[off[N - 1]])));
  };
  iter_loop<N, I>(it, f);
}

template <typename T, typename I>
__global__ void where_kernel(Iter<4> it) {
  T* o = static_cast<T*>(it.data[0]);
  const bool* c = static_cast<const bool*>(it.data[1]);
  const T* x = static_cast<const T*>(it.data[2]);
  const T* y = static_cast<const T*>(it.data[3]);
  auto f = [&](const I(&off)[4]) { o[off[0]] = c[off[1]] ? x[off[2]] : y[off[3]]; };
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

template <typename O, typename T, int N, typename Op>
void launch_map(const Iter<N>& it, cudaStream_t s, Op op) {
  launch_iter(it, s, map_kernel<O, T, std::uint32_t, Op, N>, map_kernel<O, T, std::int64_t, Op, N>, op);
}

}  // namespace

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.raw_data() != src.raw_data())
      check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream),
            "copy");
    return;
  }
  const Iter<2> it = make_iter<2>(dst.shape(), {&dst, &src}, "copy");
  dispatch(dst.dtype(), [&](auto z) {
    using D = decltype(z);
    launch_iter(it, ctx_.stream, copy_kernel<D, std::uint32_t>, copy_kernel<D, std::int64_t>, src.dtype());
  });
  check_launch("copy");
}

void CudaBackend::fill(const Tensor& dst, const Scalar& v) {
  if (dst.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  const Iter<1> it = make_iter<1>(dst.shape(), {&dst}, "fill");
  dispatch(dst.dtype(), [&](auto z) {
    using T = decltype(z);
    launch_iter(it, ctx_.stream, fill_kernel<T, std::uint32_t>, fill_kernel<T, std::int64_t>, v.to<T>());
  });
  check_launch("fill");
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  const Iter<2> it = make_iter<2>(out.shape(), {&out, &x}, "unary");
  if (op == UnaryOp::LogicalNot && x.dtype() != DType::Bool) {
    dispatch(x.dtype(), [&](auto z) { launch_map<bool, decltype(z)>(it, ctx_.stream, math::IsZero{}); });
  } else {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      launch_map<T, T>(it, ctx_.stream, math::Unary{op, a, b});
    });
  }
  check_launch("unary");
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& g, const Tensor& v, const Tensor& gx) {
  if (gx.numel() == 0) return;
  DeviceGuard guard(ctx_.index);
  const Iter<3> it = make_iter<3>(gx.shape(), {&gx, &g, &v}, "unary_backward");
  dispatch_floating(gx.dtype(), [&](auto z) {
    using T = decltype(z);
    launch_map<T, T>(it, ctx_.stream, math::UnaryGrad{op});
  });
  check_launch("unary_backward");
}

void CudaBackend::binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  const Iter<3> it = make_iter<3>(out.shape(), {&out, &x, &y}, "binary");
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    launch_map<T, T>(it, ctx_.stream, math::Binary{op});
  });
  check_launch("binary");
}

void CudaBackend::compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  const Iter<3> it = make_iter<3>(out.shape(), {&out, &x, &y}, "compare");
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    launch_map<bool, T>(it, ctx_.stream, math::Compare{op});
  });
  check_launch("compare");
}

void CudaBackend::where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  const Iter<4> it = make_iter<4>(out.shape(), {&out, &cond, &x, &y}, "where");
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    launch_iter(it, ctx_.stream, where_kernel<T, std::uint32_t>, where_kernel<T, std::int64_t>);
  });
  check_launch("where");
}

}  // namespace kiln::cuda
