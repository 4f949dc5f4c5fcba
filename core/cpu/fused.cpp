// Row kernels: softmax / log-softmax (forward and backward) and layer norm.
// Every tensor here is contiguous; rows are the last dim.
#include <Eigen/Core>
#include <cmath>
#include <fmt/format.h>
#include <vector>

#include "cpu_backend.hpp"
#include "loops.hpp"
#include "vec_math.hpp"

namespace kiln::cpu {

void CpuBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
  const std::int64_t N = x.dim() ? x.size(-1) : 1, R = N ? x.numel() / N : 0;
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_floating_point_v<T>) {
      using A = Eigen::Array<T, Eigen::Dynamic, 1>;
      const T* xp = x.data_ptr<T>();
      T* op = out.data_ptr<T>();
      parallel_range(R, std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(N, 1)), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t r = b; r < e; ++r) {
          Eigen::Map<const A> xr(xp + r * N, N);
          Eigen::Map<A> yr(op + r * N, N);
          T m = N ? xr.maxCoeff() : T(0);
          yr = xr - m;
          if (log) {
            // exp goes through a scratch row so the shifted logits stay exact in yr.
            thread_local std::vector<T, Eigen::aligned_allocator<T>> scratch;  // 64-B aligned: same reduction order in every process
            scratch.resize(static_cast<std::size_t>(N));
            exp_run(scratch.data(), yr.data(), N);
            T s = Eigen::Map<const A>(scratch.data(), N).sum();
            // (x - m) is exact; folding log(s) into m first would round at m's magnitude.
            yr -= std::log(s);
          } else {
            exp_run(yr.data(), yr.data(), N);
            yr *= T(1) / yr.sum();
          }
        }
      });
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) {
  const std::int64_t N = y.dim() ? y.size(-1) : 1, R = N ? y.numel() / N : 0;
  visit_dtype(y.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_floating_point_v<T>) {
      using A = Eigen::Array<T, Eigen::Dynamic, 1>;
      const T* yp = y.data_ptr<T>();
      const T* gp = gy.data_ptr<T>();
      T* op = gx.data_ptr<T>();
      parallel_range(R, std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(N, 1)), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t r = b; r < e; ++r) {
          Eigen::Map<const A> yr(yp + r * N, N), gr(gp + r * N, N);
          Eigen::Map<A> xr(op + r * N, N);
          if (log) {
            exp_run(xr.data(), yr.data(), N);  // softmax, exactly 0 where log-prob is -inf
            xr = gr - xr * gr.sum();
          } else {
            T dot = (gr * yr).sum();
            xr = yr * (gr - dot);
          }
        }
      });
    }
  });
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                            const Tensor& mean, const Tensor& rstd) {
  const std::int64_t R = mean.numel(), N = R ? x.numel() / R : 0;
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_floating_point_v<T>) {
      using A = Eigen::Array<T, Eigen::Dynamic, 1>;
      const T* xp = x.data_ptr<T>();
      T* op = out.data_ptr<T>();
      T* mp = mean.data_ptr<T>();
      T* rp = rstd.data_ptr<T>();
      const T* wp = weight.defined() ? weight.data_ptr<T>() : nullptr;
      const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
      parallel_range(R, std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(N, 1)), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t r = b; r < e; ++r) {
          Eigen::Map<const A> xr(xp + r * N, N);
          Eigen::Map<A> yr(op + r * N, N);
          T mu = N ? xr.mean() : T(0);
          T var = N ? (xr - mu).square().mean() : T(0);
          T rs = T(1) / std::sqrt(var + T(eps));
          mp[r] = mu;
          rp[r] = rs;
          yr = (xr - mu) * rs;
          if (wp) yr *= Eigen::Map<const A>(wp, N);
          if (bp) yr += Eigen::Map<const A>(bp, N);
        }
      });
    }
  });
}

}  // namespace kiln::cpu
