// Row kernels: softmax / log-softmax (forward and backward) and layer norm.
// Every tensor here is contiguous; rows are the last dim. bfloat16/float16 inputs run the
// float32 kernels on float32 copies (the statistics stay float32) and round the output once.
#include <fmt/format.h>
#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "../reduced_float.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"
#include "vec_math.hpp"

namespace kiln::cpu {

namespace {

// Calls row(T{}, r) for each of R rows of length N, rows split over threads; float dtypes only.
template <typename F>
void for_each_float_row(DType dt, std::int64_t R, std::int64_t N, F&& row) {
  visit_dtype(dt, [&](auto z) {
    if constexpr (std::is_floating_point_v<decltype(z)>) {
      parallel_range(R, std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(N, 1)),
                     [&](std::int64_t b, std::int64_t e) {
                       for (std::int64_t r = b; r < e; ++r) row(z, r);
                     });
    }
  });
}

template <typename T>
using Row = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <typename T>
using ConstRow = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// Row r of a contiguous (R, N) tensor.
template <typename T>
ConstRow<T> row_of(const Tensor& t, std::int64_t r, std::int64_t N) {
  return ConstRow<T>(static_cast<const T*>(t.raw_data()) + r * N, N);
}
template <typename T>
Row<T> out_row_of(const Tensor& t, std::int64_t r, std::int64_t N) {
  return Row<T>(static_cast<T*>(t.raw_data()) + r * N, N);
}

}  // namespace

void CpuBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
  if (is_reduced_float(x.dtype())) {
    Tensor of = Tensor::empty(out.shape(), kFloat32, out.device());
    softmax(float32_copy(*this, x), of, log);
    copy(out, of);
    return;
  }
  const std::int64_t N = x.dim() ? x.size(-1) : 1, R = N ? x.numel() / N : 0;
  for_each_float_row(x.dtype(), R, N, [&](auto z, std::int64_t r) {
    using T = decltype(z);
    const ConstRow<T> xr = row_of<T>(x, r, N);
    Row<T> yr = out_row_of<T>(out, r, N);
    T m = N ? xr.maxCoeff() : T(0);
    yr = xr - m;
    if (log) {
      // exp goes through a scratch row so the shifted logits stay exact in yr.
      thread_local std::vector<T, Eigen::aligned_allocator<T>>
          scratch;  // 64-B aligned: same reduction order in every process
      scratch.resize(static_cast<std::size_t>(N));
      exp_run(scratch.data(), yr.data(), N);
      T s = ConstRow<T>(scratch.data(), N).sum();
      // (x - m) is exact; folding log(s) into m first would round at m's magnitude.
      yr -= std::log(s);
    } else {
      exp_run(yr.data(), yr.data(), N);
      yr *= T(1) / yr.sum();
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) {
  if (is_reduced_float(y.dtype())) {
    Tensor gf = Tensor::empty(gx.shape(), kFloat32, gx.device());
    softmax_backward(float32_copy(*this, y), float32_copy(*this, gy), gf, log);
    copy(gx, gf);
    return;
  }
  const std::int64_t N = y.dim() ? y.size(-1) : 1, R = N ? y.numel() / N : 0;
  for_each_float_row(y.dtype(), R, N, [&](auto z, std::int64_t r) {
    using T = decltype(z);
    const ConstRow<T> yr = row_of<T>(y, r, N), gr = row_of<T>(gy, r, N);
    Row<T> xr = out_row_of<T>(gx, r, N);
    if (log) {
      exp_run(xr.data(), yr.data(), N);  // softmax, exactly 0 where log-prob is -inf
      xr = gr - xr * gr.sum();
    } else {
      T dot = (gr * yr).sum();
      xr = yr * (gr - dot);
    }
  });
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                            const Tensor& mean, const Tensor& rstd) {
  if (is_reduced_float(x.dtype())) {
    Tensor of = Tensor::empty(out.shape(), kFloat32, out.device());
    layer_norm(float32_copy(*this, x), float32_copy(*this, weight), float32_copy(*this, bias), eps, of, mean, rstd);
    copy(out, of);
    return;
  }
  const std::int64_t R = mean.numel(), N = R ? x.numel() / R : 0;
  for_each_float_row(x.dtype(), R, N, [&](auto z, std::int64_t r) {
    using T = decltype(z);
    const ConstRow<T> xr = row_of<T>(x, r, N);
    Row<T> yr = out_row_of<T>(out, r, N);
    T mu = N ? xr.mean() : T(0);
    T var = N ? (xr - mu).square().mean() : T(0);
    T rs = T(1) / std::sqrt(var + T(eps));
    static_cast<T*>(mean.raw_data())[r] = mu;
    static_cast<T*>(rstd.raw_data())[r] = rs;
    yr = (xr - mu) * rs;
    if (weight.defined()) yr *= row_of<T>(weight, 0, N);
    if (bias.defined()) yr += row_of<T>(bias, 0, N);
  });
}

}  // namespace kiln::cpu
