// Row-norm kernels beside fused.cpp's layer_norm forward: Backend::layer_norm_backward (gx,
// gweight and gbias in one pass over the rows; the autograd op used to build them from ~12 tensor
// ops over activation-sized tensors) and Backend::rms_norm / rms_norm_backward (the same row pass
// without centering: mean 0 and no mean(gxhat) term). xhat is recomputed from x and the forward's
// statistics. Rows are cut into blocks whose number depends only on the row count; each block sums
// its rows' gy xhat and gy into its own partial row and the partials are added in block order, so
// gweight/gbias do not depend on the thread count.
// bfloat16/float16 compute in float32 (converted a row at a time); float64 in float64.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../math/elementwise.hpp"
#include "convert.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {

constexpr std::int64_t kMaxBlocks = 64, kMinBlockRows = 16;

template <typename C>
using Arr = Eigen::Array<C, Eigen::Dynamic, 1>;
// Eigen picks a sum's order from the data's alignment: the row buffers are aligned alike on
// every thread, so a row's sums do not depend on which thread ran it.
template <typename C>
using Buf = std::vector<C, Eigen::aligned_allocator<C>>;

// A row of T as compute type C: the row itself when T == C, else converted into buf.
template <typename C, typename T>
const C* row_as(const T* p, std::int64_t n, Buf<C>& buf) {
  if constexpr (std::is_same_v<T, C>) {
    return p;
  } else {
    buf.resize(static_cast<std::size_t>(n));
    load_float(p, buf.data(), n);
    return buf.data();
  }
}

// y = x rstd weight a row at a time, rows split over threads (each row's sum of squares is one
// Eigen reduction: the same result on any thread).
template <typename T>
void rms_norm_impl(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) {
  using C = math::compute_t<T>;
  const std::int64_t R = rstd.numel(), N = R ? x.numel() / R : 0;
  const T* xp = static_cast<const T*>(x.raw_data());
  T* op = static_cast<T*>(out.raw_data());
  C* rp = static_cast<C*>(rstd.raw_data());
  Buf<C> wbuf;
  const C* wp = weight.defined() ? row_as<C>(static_cast<const T*>(weight.raw_data()), N, wbuf) : nullptr;
  parallel_range(R, std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(N, 1)),
                 [&](std::int64_t b, std::int64_t e) {
                   thread_local Buf<C> xb, ob;
                   for (std::int64_t r = b; r < e; ++r) {
                     Eigen::Map<const Arr<C>> X(row_as<C>(xp + r * N, N, xb), N);
                     const C ms = N ? X.square().sum() / C(N) : C(0);
                     const C rs = C(1) / std::sqrt(ms + C(eps));
                     rp[r] = rs;
                     C* yr;  // the output row itself, or a float32 row rounded into it below
                     if constexpr (std::is_same_v<T, C>) {
                       yr = op + r * N;
                     } else {
                       ob.resize(static_cast<std::size_t>(N));
                       yr = ob.data();
                     }
                     Eigen::Map<Arr<C>> Y(yr, N);
                     if (wp) Y = X * rs * Eigen::Map<const Arr<C>>(wp, N);
                     else Y = X * rs;
                     if constexpr (!std::is_same_v<T, C>) store_float(ob.data(), op + r * N, N);
                   }
                 });
}

// mean undefined: the RMS norm's backward (xhat = x rstd, no mean(gxhat) term, no gbias).
template <typename T>
void norm_backward_impl(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                        const Tensor& gx, const Tensor& gweight, const Tensor& gbias) {
  using C = math::compute_t<T>;
  const std::int64_t R = x.size(0), N = x.size(1);
  const bool want_gw = gweight.defined(), want_gb = gbias.defined();
  const T* xp = static_cast<const T*>(x.raw_data());
  const T* gp = static_cast<const T*>(gy.raw_data());
  const C* mp = mean.defined() ? static_cast<const C*>(mean.raw_data()) : nullptr;
  const C* rp = static_cast<const C*>(rstd.raw_data());
  Buf<C> wbuf;
  const C* wp = weight.defined() ? row_as<C>(static_cast<const T*>(weight.raw_data()), N, wbuf) : nullptr;

  const std::int64_t rows_per = std::max(kMinBlockRows, (R + kMaxBlocks - 1) / kMaxBlocks);
  const std::int64_t blocks = (R + rows_per - 1) / rows_per;
  std::vector<C> pw(want_gw ? static_cast<std::size_t>(blocks * N) : 0, C(0));
  std::vector<C> pb(want_gb ? static_cast<std::size_t>(blocks * N) : 0, C(0));

  auto block = [&](std::int64_t b) {
    thread_local Buf<C> xb, gyb, xh, gh, ob;
    xh.resize(static_cast<std::size_t>(N));
    gh.resize(static_cast<std::size_t>(N));
    Eigen::Map<Arr<C>> Xh(xh.data(), N), Gh(gh.data(), N);
    const std::int64_t r0 = b * rows_per, r1 = std::min(R, r0 + rows_per);
    for (std::int64_t r = r0; r < r1; ++r) {
      Eigen::Map<const Arr<C>> X(row_as<C>(xp + r * N, N, xb), N), G(row_as<C>(gp + r * N, N, gyb), N);
      const C rs = rp[r];
      if (mp) Xh = (X - mp[r]) * rs;
      else Xh = X * rs;
      if (wp) Gh = G * Eigen::Map<const Arr<C>>(wp, N);
      else Gh = G;
      if (gx.defined()) {
        const C m1 = mp ? Gh.sum() / C(N) : C(0), m2 = (Gh * Xh).sum() / C(N);
        T* out = static_cast<T*>(gx.raw_data()) + r * N;
        if constexpr (std::is_same_v<T, C>) {
          Eigen::Map<Arr<C>>(out, N) = rs * (Gh - m1 - Xh * m2);
        } else {
          ob.resize(static_cast<std::size_t>(N));
          Eigen::Map<Arr<C>>(ob.data(), N) = rs * (Gh - m1 - Xh * m2);
          store_float(ob.data(), out, N);
        }
      }
      if (want_gw) Eigen::Map<Arr<C>>(pw.data() + b * N, N) += G * Xh;
      if (want_gb) Eigen::Map<Arr<C>>(pb.data() + b * N, N) += G;
    }
  };
  // A block is rows_per * N elements of ~10 flops each: a few blocks per thread at least.
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, rows_per * N));
  parallel_range(blocks, grain, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) block(b);
  });

  // The partial rows summed in block order (0 for R == 0), rounded once to the output dtype.
  auto finish = [&](const std::vector<C>& part, const Tensor& out) {
    Arr<C> acc = Arr<C>::Zero(N);
    for (std::int64_t b = 0; b < blocks; ++b) acc += Eigen::Map<const Arr<C>>(part.data() + b * N, N);
    T* o = static_cast<T*>(out.raw_data());
    if constexpr (std::is_same_v<T, C>) std::copy(acc.data(), acc.data() + N, o);
    else store_float(acc.data(), o, N);
  };
  if (want_gw) finish(pw, gweight);
  if (want_gb) finish(pb, gbias);
}

}  // namespace

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                     const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (is_float_storage_v<T>) norm_backward_impl<T>(x, weight, mean, rstd, gy, gx, gweight, gbias);
  });
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (is_float_storage_v<T>) rms_norm_impl<T>(x, weight, eps, out, rstd);
  });
}

void CpuBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy,
                                   const Tensor& gx, const Tensor& gweight) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (is_float_storage_v<T>) norm_backward_impl<T>(x, weight, Tensor(), rstd, gy, gx, gweight, Tensor());
  });
}

}  // namespace kiln::cpu
