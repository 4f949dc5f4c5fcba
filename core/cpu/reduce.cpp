// Reductions over any set of dims, and arg max/min along one dim. bfloat16/float16 values
// are accumulated in float32 (compute_t) and the result rounded once, as PyTorch does.
#include <fmt/format.h>
#include <cmath>
#include <limits>

#include "../math/elementwise.hpp"
#include "../math/reduce.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {

using math::MaxOp;
using math::MinOp;
using math::ProdOp;
using math::SumOp;

// Sum-like reduce of a strided run with 16 independent lanes (vectorizes, better rounding);
// Op combines values of the accumulator type A.
template <typename T, typename Op, typename A = math::compute_t<T>>
A reduce_run(const T* p, std::int64_t n, std::int64_t stride) {
  constexpr int L = 16;
  A acc[L];
  for (int l = 0; l < L; ++l) acc[l] = Op::init();
  std::int64_t k = 0;
  if (stride == 1) {
    for (; k + L <= n; k += L)
      for (int l = 0; l < L; ++l) acc[l] = Op::apply(acc[l], A(p[k + l]));
  }
  A r = Op::init();
  for (; k < n; ++k) r = Op::apply(r, A(p[k * stride]));
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = Op::apply(acc[l], acc[l + w]);
  return Op::apply(acc[0], r);
}

// Offset (elements) of flat index i in (shape, strides).
inline std::int64_t offset_of(std::int64_t i, const Shape& shape, const Strides& st) {
  std::int64_t off = 0;
  for (std::size_t d = shape.size(); d-- > 0;) {
    off += (i % shape[d]) * st[d];
    i /= shape[d];
  }
  return off;
}

template <typename T, typename Op>
void reduce_impl(const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out, bool mean) {
  using A = math::compute_t<T>;
  const ReduceDims g = split_reduce_dims(x.shape(), x.strides(), dims);
  const std::int64_t M = numel_of(g.kept_shape), R = numel_of(g.red_shape);
  T* o = out.data_ptr<T>();
  const T* base = x.data_ptr<T>();
  auto kept = coalesce_dims<1>(g.kept_shape, {g.kept_strides.data()});
  auto red = coalesce_dims<1>(g.red_shape, {g.red_strides.data()});
  const Shape &ks = kept.shape, &rs = red.shape;
  const Strides &kst = kept.strides[0], &rst = red.strides[0];
  const double scale = mean ? 1.0 / static_cast<double>(R) : 1.0;
  auto finish = [&](A v) -> T {
    if constexpr (std::is_floating_point_v<A>) return T(mean ? A(v * scale) : v);
    else return v;
  };
  if (R == 0) {
    for (std::int64_t m = 0; m < M; ++m) o[m] = T(mean ? A(std::numeric_limits<double>::quiet_NaN()) : Op::init());
    return;
  }
  const bool red_run = rs.size() <= 1;  // reduced elements form one strided run
  const bool kept_inner_contig = !kst.empty() && kst.back() == 1 && ks.back() >= 16;
  if (red_run && (rs.empty() || rst[0] == 1 || !kept_inner_contig)) {
    // One (possibly strided) run per output.
    std::int64_t rstride = rs.empty() ? 1 : rst[0];
    parallel_range(M, std::max<std::int64_t>(1, kParallelGrain / std::max<std::int64_t>(R, 1)),
                   [&](std::int64_t b, std::int64_t e) {
                     for (std::int64_t m = b; m < e; ++m)
                       o[m] = finish(reduce_run<T, Op>(base + offset_of(m, ks, kst), R, rstride));
                   });
    return;
  }
  if (kept_inner_contig) {
    // Vectorize across the contiguous innermost kept dim; walk every reduced offset.
    std::int64_t inner = ks.back();
    Shape ko(ks.begin(), ks.end() - 1);
    Strides kost(kst.begin(), kst.end() - 1);
    std::int64_t outer = M / inner;
    std::vector<std::int64_t> roff(static_cast<std::size_t>(R));
    for (std::int64_t r = 0; r < R; ++r) roff[r] = offset_of(r, rs, rst);
    const std::int64_t chunk = 256;
    std::int64_t nchunks = (inner + chunk - 1) / chunk;
    parallel_range(outer * nchunks, std::max<std::int64_t>(1, kParallelGrain / (chunk * R)),
                   [&](std::int64_t b, std::int64_t e) {
                     A acc[chunk];
                     for (std::int64_t w = b; w < e; ++w) {
                       std::int64_t oi = w / nchunks, c0 = (w % nchunks) * chunk;
                       std::int64_t len = std::min(chunk, inner - c0);
                       const T* src = base + offset_of(oi, ko, kost) + c0;
                       for (std::int64_t j = 0; j < len; ++j) acc[j] = Op::init();
                       std::int64_t r = 0;
                       // Four rows per pass over acc (added in row order, as one at a time).
                       for (; r + 4 <= R; r += 4) {
                         const T *q0 = src + roff[r], *q1 = src + roff[r + 1], *q2 = src + roff[r + 2],
                                 *q3 = src + roff[r + 3];
                         for (std::int64_t j = 0; j < len; ++j)
                           acc[j] = Op::apply(Op::apply(Op::apply(Op::apply(acc[j], A(q0[j])), A(q1[j])), A(q2[j])),
                                              A(q3[j]));
                       }
                       for (; r < R; ++r) {
                         const T* q = src + roff[r];
                         for (std::int64_t j = 0; j < len; ++j) acc[j] = Op::apply(acc[j], A(q[j]));
                       }
                       T* dst = o + oi * inner + c0;
                       for (std::int64_t j = 0; j < len; ++j) dst[j] = finish(acc[j]);
                     }
                   });
    return;
  }
  // General case: gather the reduced block of each output through offsets.
  std::vector<std::int64_t> roff(static_cast<std::size_t>(R));
  for (std::int64_t r = 0; r < R; ++r) roff[r] = offset_of(r, rs, rst);
  parallel_range(M, std::max<std::int64_t>(1, kParallelGrain / R), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t m = b; m < e; ++m) {
      const T* src = base + offset_of(m, ks, kst);
      A acc = Op::init();
      for (std::int64_t r = 0; r < R; ++r) acc = Op::apply(acc, A(src[roff[r]]));
      o[m] = finish(acc);
    }
  });
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using A = math::compute_t<T>;
    switch (op) {
      case ReduceOp::Sum: reduce_impl<T, SumOp<A>>(x, dims, out, false); break;
      case ReduceOp::Mean: reduce_impl<T, SumOp<A>>(x, dims, out, true); break;
      case ReduceOp::Prod: reduce_impl<T, ProdOp<A>>(x, dims, out, false); break;
      case ReduceOp::Max: reduce_impl<T, MaxOp<A>>(x, dims, out, false); break;
      case ReduceOp::Min: reduce_impl<T, MinOp<A>>(x, dims, out, false); break;
    }
  });
}

void CpuBackend::arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values,
                            const Tensor& indices) {
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using A = math::compute_t<T>;
    const ReduceDims g = split_reduce_dims(x.shape(), x.strides(), {dim});
    const Shape& ks = g.kept_shape;
    const Strides& kst = g.kept_strides;
    const std::int64_t R = x.dim() ? x.size(dim) : 1, rs = x.dim() ? x.stride(dim) : 1;
    const std::int64_t M = numel_of(ks);
    const T* base = x.data_ptr<T>();
    T* vo = values.data_ptr<T>();
    std::int64_t* io = indices.data_ptr<std::int64_t>();
    const bool is_max = op == ReduceOp::Max;
    parallel_range(M, std::max<std::int64_t>(1, kParallelGrain / std::max<std::int64_t>(R, 1)),
                   [&](std::int64_t b, std::int64_t e) {
                     for (std::int64_t m = b; m < e; ++m) {
                       const T* p = base + offset_of(m, ks, kst);
                       A best = A(p[0]);
                       std::int64_t bi = 0;
                       for (std::int64_t r = 1; r < R; ++r) {
                         A v = A(p[r * rs]);
                         bool nan_best = false;
                         if constexpr (std::is_floating_point_v<A>) {
                           nan_best = std::isnan(best);
                           if (!nan_best && std::isnan(v)) {
                             best = v;
                             bi = r;
                             continue;
                           }
                         }
                         if (!nan_best && (is_max ? v > best : v < best)) {
                           best = v;
                           bi = r;
                         }
                       }
                       vo[m] = p[bi * rs];
                       io[m] = bi;
                     }
                   });
  });
}

}  // namespace kiln::cpu
