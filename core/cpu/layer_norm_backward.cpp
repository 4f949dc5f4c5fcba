// Backend::layer_norm_backward: gx, gweight and gbias in one pass over the rows (the autograd op
// used to build them from ~12 tensor ops over activation-sized tensors). xhat is recomputed
// from x and the forward's mean/rstd. Rows are cut into blocks whose number depends only on the
// row count; each block sums its rows' gy xhat and gy into its own partial row and the partials
// are added in block order, so gweight/gbias do not depend on the thread count.
// bfloat16/float16 compute in float32 (converted a row at a time); float64 in float64.
#include <Eigen/Core>
#include <algorithm>
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

template <typename T>
void layer_norm_backward_impl(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                              const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) {
  using C = math::compute_t<T>;
  const std::int64_t R = x.size(0), N = x.size(1);
  const bool want_gw = gweight.defined(), want_gb = gbias.defined();
  const T* xp = static_cast<const T*>(x.raw_data());
  const T* gp = static_cast<const T*>(gy.raw_data());
  const C* mp = static_cast<const C*>(mean.raw_data());
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
      Xh = (X - mp[r]) * rs;
      if (wp) Gh = G * Eigen::Map<const Arr<C>>(wp, N);
      else Gh = G;
      if (gx.defined()) {
        const C m1 = Gh.sum() / C(N), m2 = (Gh * Xh).sum() / C(N);
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
    if constexpr (is_float_storage_v<T>) layer_norm_backward_impl<T>(x, weight, mean, rstd, gy, gx, gweight, gbias);
  });
}

}  // namespace kiln::cpu
