// Reductions over any dims (sum, mean, prod, max, min), arg max/min along one dim, and the
// row kernels softmax / log-softmax (forward, backward) and layer norm.
//   rows mode   : a group of G threads (a warp, or the whole block) per output, striding over
//                 the reduced elements; used when those are contiguous or outputs are few.
//   column mode : one output per thread (kept dim contiguous: coalesced loads), the reduced
//                 range split over blockDim.y threads.
//   split mode  : few outputs with many elements: partial results per chunk, then a rows
//                 pass over the partials.
// bfloat16/float16 accumulate in float (compute_t: the Op's type) and round the result once;
// the row kernels compute in float and keep layer norm's and RMS norm's statistics in float.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../math/elementwise.hpp"
#include "../math/reduce.hpp"
#include "cuda_backend.hpp"
#include "device_util.cuh"

namespace kiln::cuda {
namespace {

// Geometry of a reduction: `kept` and `red` dims (innermost first, element strides) of x.
struct ReduceGeom {
  int nk = 0, nr = 0;
  std::int64_t M = 1, R = 1;  // outputs, elements per output
  std::int64_t ksize[kMaxDims] = {}, kstride[kMaxDims] = {};
  std::int64_t rsize[kMaxDims] = {}, rstride[kMaxDims] = {};
};

// Merges adjacent dims of (sizes, strides) (outermost first) into innermost-first arrays.
int pack_dims(const Shape& sizes, const Strides& strides, std::int64_t* out_size, std::int64_t* out_stride,
              const char* op) {
  const auto c = coalesce_dims<1>(sizes, {strides.data()});
  if (c.shape.size() > static_cast<std::size_t>(kMaxDims)) throw_too_many_dims(op, sizes, c.shape.size());
  const int n = static_cast<int>(c.shape.size());
  for (int d = 0; d < n; ++d) {
    out_size[d] = c.shape[static_cast<std::size_t>(n - 1 - d)];
    out_stride[d] = c.strides[0][static_cast<std::size_t>(n - 1 - d)];
  }
  return n;
}

// Chunks each output's elements are split into (1: no split); when > 1, the split pass needs
// scratch of M * chunks elements of the accumulation dtype.
std::int64_t reduce_partials(const ReduceGeom& g) {
  if (g.M == 0 || g.M >= 128 || g.R < 65536) return 1;
  const std::int64_t by_size = g.R / 16384, by_outputs = 1024 / g.M;
  return by_size < by_outputs ? by_size : by_outputs;
}

// Shuffle for every dtype kiln has (bool through int).
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int o) {
  if constexpr (std::is_same_v<T, bool>) return __shfl_xor_sync(0xffffffffu, static_cast<int>(v), o) != 0;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return static_cast<T>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v), o));
  else return __shfl_xor_sync(0xffffffffu, v, o);
}

/// Reduces v over a group of G threads (G = 32, or G = blockDim.x with one group per block);
/// every thread of the group gets the result. `smem` holds 32 values.
template <typename T, typename Op>
__device__ __forceinline__ T group_reduce(T v, int G, T* smem, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  if (G <= 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = smem[0];
  for (int w = 1; w < G / 32; ++w) v = op(v, smem[w]);
  return v;
}

__device__ __forceinline__ std::int64_t offset_of(std::int64_t i, int nd, const std::int64_t* size,
                                                  const std::int64_t* stride) {
  std::int64_t off = 0;
  for (int d = 0; d < nd; ++d) {
    const std::int64_t q = i / size[d];
    off += (i - q * size[d]) * stride[d];
    i = q;
  }
  return off;
}

// The value type Op accumulates in.
template <typename Op>
using acc_t = decltype(Op::init());

// The accumulated value as the output type O (the mean divided first).
template <typename O, typename A>
__device__ __forceinline__ O finish(A v, double mean_div) {
  if constexpr (std::is_floating_point_v<A>)
    return static_cast<O>(mean_div > 0 ? static_cast<A>(v * (1.0 / mean_div)) : v);
  else return v;
}

// Rows mode. grid.x covers outputs (blockDim.x / G per block), grid.y the chunks of R.
// partial == nullptr: out[m] = finished value; else partial[m * P + p] = raw chunk value.
// T: the input's type (x's dtype, or the accumulation type in the pass over partials).
template <typename T, typename O, typename Op>
__global__ void reduce_rows_kernel(ReduceGeom g, const T* x, O* out, acc_t<Op>* partial, int G, std::int64_t chunk,
                                   double mean_div) {
  using A = acc_t<Op>;
  __shared__ A smem[32];
  const std::int64_t m = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  const bool live = m < g.M;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * chunk;
  const std::int64_t r1 = min(g.R, r0 + chunk);
  A acc = Op::init();
  if (live) {
    const T* base = x + offset_of(m, g.nk, g.ksize, g.kstride);
    if (g.nr == 1) {
      const std::int64_t st = g.rstride[0];
      for (std::int64_t r = r0 + lane; r < r1; r += G) acc = Op::apply(acc, static_cast<A>(base[r * st]));
    } else {
      for (std::int64_t r = r0 + lane; r < r1; r += G)
        acc = Op::apply(acc, static_cast<A>(base[offset_of(r, g.nr, g.rsize, g.rstride)]));
    }
  }
  acc = group_reduce(acc, G, smem, [](A a, A b) { return Op::apply(a, b); });
  if (live && lane == 0) {
    if (partial) partial[m * gridDim.y + blockIdx.y] = acc;
    else out[m] = finish<O>(acc, mean_div);
  }
}

// Column mode: blockDim (32, Y); thread x owns output m, threads y split R.
template <typename T, typename Op>
__global__ void reduce_cols_kernel(ReduceGeom g, const T* x, T* out, double mean_div) {
  using A = acc_t<Op>;
  __shared__ A smem[32 * 8];
  const std::int64_t m = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  A acc = Op::init();
  if (m < g.M) {
    const T* base = x + offset_of(m, g.nk, g.ksize, g.kstride);
    for (std::int64_t r = threadIdx.y; r < g.R; r += blockDim.y)
      acc = Op::apply(acc, static_cast<A>(base[g.nr == 1 ? r * g.rstride[0] : offset_of(r, g.nr, g.rsize, g.rstride)]));
  }
  smem[threadIdx.y * 32 + threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && m < g.M) {
    for (unsigned y = 1; y < blockDim.y; ++y) acc = Op::apply(acc, smem[y * 32 + threadIdx.x]);
    out[m] = finish<T>(acc, mean_div);
  }
}

template <typename T>
__global__ void reduce_empty_kernel(T* out, std::int64_t M, T v) {
  for (std::int64_t m = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; m < M;
       m += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[m] = v;
}

template <typename T, typename Op>
void reduce_typed(const ReduceGeom& g, const T* x, T* out, acc_t<Op>* scratch, double mean_div, cudaStream_t s) {
  using A = acc_t<Op>;
  if (g.M == 0) return;
  if (g.R == 0) {
    reduce_empty_kernel<T><<<grid_for(g.M), kThreads, 0, s>>>(out, g.M, static_cast<T>(Op::init()));
    return;
  }
  const bool inner_contig = g.nr > 0 && g.rstride[0] == 1;
  const bool kept_contig = g.nk > 0 && g.kstride[0] == 1;
  if (!inner_contig && kept_contig && g.M >= 256) {
    const unsigned y = g.R >= 64 ? 8 : 1;
    reduce_cols_kernel<T, Op><<<static_cast<unsigned>((g.M + 31) / 32), dim3(32, y), 0, s>>>(g, x, out, mean_div);
    return;
  }
  const std::int64_t P = reduce_partials(g);
  if (P > 1) {
    // Few long outputs: one block per (output, chunk), then a pass over the partials.
    const std::int64_t chunk = (g.R + P - 1) / P;
    reduce_rows_kernel<T, T, Op>
        <<<dim3(static_cast<unsigned>(g.M), static_cast<unsigned>(P)), kThreads, 0, s>>>(g, x, out, scratch, kThreads,
                                                                                         chunk, mean_div);
    ReduceGeom g2;
    g2.nk = 1;
    g2.M = g.M;
    g2.ksize[0] = g.M;
    g2.kstride[0] = P;
    g2.nr = 1;
    g2.R = P;
    g2.rsize[0] = P;
    g2.rstride[0] = 1;
    const std::int64_t bx = (g.M + kThreads / 32 - 1) / (kThreads / 32);
    reduce_rows_kernel<A, T, Op>
        <<<static_cast<unsigned>(bx), kThreads, 0, s>>>(g2, scratch, out, nullptr, 32, P, mean_div);
    return;
  }
  // Rows mode: a warp per output for short rows, the whole block for long ones.
  const int G = g.R >= 4096 ? kThreads : 32;
  const std::int64_t per_block = kThreads / G;
  const std::int64_t bx = (g.M + per_block - 1) / per_block;
  reduce_rows_kernel<T, T, Op><<<static_cast<unsigned>(bx), kThreads, 0, s>>>(g, x, out, nullptr, G, g.R, mean_div);
}

// ---- arg max / min ----
template <typename T>
__device__ __forceinline__ bool arg_better(bool is_max, T v, std::int64_t i, T best, std::int64_t bi) {
  if constexpr (std::is_floating_point_v<T>) {
    const bool nv = is_nan(v), nb = is_nan(best);
    if (nv || nb) return nv && (!nb || i < bi);
  }
  if (is_max ? v > best : v < best) return true;
  return v == best && i < bi;
}

// One warp per output.
template <typename T>
__global__ void arg_reduce_kernel(ReduceGeom g, const T* x, T* values, std::int64_t* indices, bool is_max) {
  using A = math::compute_t<T>;  // exact for every value of T
  const std::int64_t m = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (m >= g.M) return;
  const T* base = x + offset_of(m, g.nk, g.ksize, g.kstride);
  const std::int64_t st = g.rstride[0];
  A best = static_cast<A>(base[0]);
  std::int64_t bi = g.R;  // "none yet" sorts after every real index
  for (std::int64_t r = lane; r < g.R; r += 32) {
    const A v = static_cast<A>(base[r * st]);
    if (bi == g.R || arg_better(is_max, v, r, best, bi)) {
      best = v;
      bi = r;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const A ov = shfl_xor(best, o);
    const std::int64_t oi = shfl_xor(bi, o);
    if (oi != g.R && (bi == g.R || arg_better(is_max, ov, oi, best, bi))) {
      best = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    values[m] = static_cast<T>(best);
    indices[m] = bi;
  }
}

// ---- row kernels (contiguous rows of length n; G threads per row) ----
template <typename T>
__device__ __forceinline__ T fmax_nan_ignoring(T a, T b) {
  return b > a ? b : a;
}

template <typename T>
__global__ void softmax_kernel(const T* x, T* out, std::int64_t rows, std::int64_t n, bool log, int G) {
  using A = math::compute_t<T>;
  __shared__ A smem[32];
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  const bool live = r < rows;
  const T* xr = x + (live ? r : 0) * n;
  T* yr = out + (live ? r : 0) * n;
  A m = -std::numeric_limits<A>::infinity();
  if (live)
    for (std::int64_t j = lane; j < n; j += G) m = fmax_nan_ignoring(m, static_cast<A>(xr[j]));
  m = group_reduce(m, G, smem, [](A a, A b) { return fmax_nan_ignoring(a, b); });
  A sum = 0;
  if (live)
    for (std::int64_t j = lane; j < n; j += G) sum += exp(static_cast<A>(xr[j]) - m);
  sum = group_reduce(sum, G, smem, [](A a, A b) { return a + b; });
  if (!live) return;
  if (log) {
    const A ls = ::log(sum);
    for (std::int64_t j = lane; j < n; j += G) yr[j] = static_cast<T>((static_cast<A>(xr[j]) - m) - ls);
  } else {
    const A inv = A(1) / sum;
    for (std::int64_t j = lane; j < n; j += G) yr[j] = static_cast<T>(exp(static_cast<A>(xr[j]) - m) * inv);
  }
}

template <typename T>
__global__ void softmax_backward_kernel(const T* y, const T* gy, T* gx, std::int64_t rows, std::int64_t n, bool log,
                                        int G) {
  using A = math::compute_t<T>;
  __shared__ A smem[32];
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  const bool live = r < rows;
  const std::int64_t o = (live ? r : 0) * n;
  A dot = 0;
  if (live)
    for (std::int64_t j = lane; j < n; j += G) {
      const A g = static_cast<A>(gy[o + j]);
      dot += log ? g : g * static_cast<A>(y[o + j]);
    }
  dot = group_reduce(dot, G, smem, [](A a, A b) { return a + b; });
  if (!live) return;
  for (std::int64_t j = lane; j < n; j += G) {
    const A yv = static_cast<A>(y[o + j]), g = static_cast<A>(gy[o + j]);
    gx[o + j] = static_cast<T>(log ? g - exp(yv) * dot : yv * (g - dot));
  }
}

// mean and rstd are of the compute type A (float for bfloat16/float16 x). Without mean (null) it
// is the RMS norm: no centering (mu = 0, b null), rstd = 1 / sqrt(mean(x^2) + eps).
template <typename T>
__global__ void layer_norm_kernel(const T* x, const T* w, const T* b, double eps, T* out, math::compute_t<T>* mean,
                                  math::compute_t<T>* rstd, std::int64_t rows, std::int64_t n, int G) {
  using A = math::compute_t<T>;
  __shared__ A smem[32];
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  const bool live = r < rows;
  const T* xr = x + (live ? r : 0) * n;
  A mu = 0;
  if (mean) {  // the same for every thread of the block: group_reduce's barriers are uniform
    A s = 0;
    if (live)
      for (std::int64_t j = lane; j < n; j += G) s += static_cast<A>(xr[j]);
    s = group_reduce(s, G, smem, [](A a, A c) { return a + c; });
    mu = n ? s / A(n) : A(0);
  }
  A v = 0;
  if (live)
    for (std::int64_t j = lane; j < n; j += G) {
      const A d = static_cast<A>(xr[j]) - mu;
      v += d * d;
    }
  v = group_reduce(v, G, smem, [](A a, A c) { return a + c; });
  if (!live) return;
  const A var = n ? v / A(n) : A(0);
  const A rs = A(1) / sqrt(var + A(eps));
  if (lane == 0) {
    if (mean) mean[r] = mu;
    rstd[r] = rs;
  }
  T* yr = out + r * n;
  for (std::int64_t j = lane; j < n; j += G) {
    A y = (static_cast<A>(xr[j]) - mu) * rs;
    if (w) y *= static_cast<A>(w[j]);
    if (b) y += static_cast<A>(b[j]);
    yr[j] = static_cast<T>(y);
  }
}

// gx of layer norm, a group of G threads per row (as layer_norm_kernel); xhat is recomputed
// from the forward's mean and rstd (of the compute type A). Without mean: the RMS norm's gx
// (xhat = x rstd, no mean(gxhat) term).
template <typename T>
__global__ void layer_norm_backward_kernel(const T* x, const T* w, const math::compute_t<T>* mean,
                                           const math::compute_t<T>* rstd, const T* gy, T* gx, std::int64_t rows,
                                           std::int64_t n, int G) {
  using A = math::compute_t<T>;
  __shared__ A smem[32];
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  const bool live = r < rows;
  const std::int64_t o = (live ? r : 0) * n;
  const A mu = live && mean ? mean[r] : A(0), rs = live ? rstd[r] : A(0);
  A s1 = 0, s2 = 0;  // row sums of gxhat and gxhat * xhat
  if (live)
    for (std::int64_t j = lane; j < n; j += G) {
      const A gh = static_cast<A>(gy[o + j]) * (w ? static_cast<A>(w[j]) : A(1));
      s1 += gh;
      s2 += gh * (static_cast<A>(x[o + j]) - mu) * rs;
    }
  if (mean) s1 = group_reduce(s1, G, smem, [](A a, A c) { return a + c; });
  s2 = group_reduce(s2, G, smem, [](A a, A c) { return a + c; });
  if (!live) return;
  const A m1 = mean ? s1 / A(n) : A(0), m2 = s2 / A(n);
  for (std::int64_t j = lane; j < n; j += G) {
    const A gh = static_cast<A>(gy[o + j]) * (w ? static_cast<A>(w[j]) : A(1));
    const A xh = (static_cast<A>(x[o + j]) - mu) * rs;
    gx[o + j] = static_cast<T>(rs * (gh - m1 - xh * m2));
  }
}

// Column sums of gy * xhat (pw) and gy (pb) over chunk blockIdx.y of `per` rows, one column per
// thread (coalesced along the row); pw or pb may be null, mean too (RMS norm: xhat = x rstd).
template <typename T>
__global__ void layer_norm_param_partials(const T* x, const math::compute_t<T>* mean, const math::compute_t<T>* rstd,
                                          const T* gy, math::compute_t<T>* pw, math::compute_t<T>* pb,
                                          std::int64_t rows, std::int64_t n, std::int64_t per) {
  using A = math::compute_t<T>;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const std::int64_t c = blockIdx.y, r1 = (c + 1) * per < rows ? (c + 1) * per : rows;
  A sw = 0, sb = 0;
  for (std::int64_t r = c * per; r < r1; ++r) {
    const A g = static_cast<A>(gy[r * n + j]);
    sw += g * (static_cast<A>(x[r * n + j]) - (mean ? mean[r] : A(0))) * rstd[r];
    sb += g;
  }
  if (pw) pw[c * n + j] = sw;
  if (pb) pb[c * n + j] = sb;
}

// out[j] = sum over chunks c, in order, of p[c * n + j] (0 without chunks).
template <typename T>
__global__ void column_sum_kernel(const math::compute_t<T>* p, T* out, std::int64_t chunks, std::int64_t n) {
  using A = math::compute_t<T>;
  for (std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    A s = 0;
    for (std::int64_t c = 0; c < chunks; ++c) s += p[c * n + j];
    out[j] = static_cast<T>(s);
  }
}

// Threads per row and blocks for `rows` rows of length n.
void row_launch(std::int64_t rows, std::int64_t n, int& G, unsigned& blocks) {
  G = n >= 2048 ? kThreads : 32;
  const std::int64_t per = kThreads / G;
  blocks = static_cast<unsigned>((rows + per - 1) / per);
}

}  // namespace

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) {
  DeviceGuard guard(ctx_.index);
  const ReduceDims d = split_reduce_dims(x.shape(), x.strides(), dims);
  ReduceGeom g;
  g.M = numel_of(d.kept_shape);
  g.R = numel_of(d.red_shape);
  g.nk = pack_dims(d.kept_shape, d.kept_strides, g.ksize, g.kstride, "reduce");
  g.nr = pack_dims(d.red_shape, d.red_strides, g.rsize, g.rstride, "reduce");
  Tensor scratch;
  const std::int64_t P = reduce_partials(g);
  if (P > 1) scratch = Tensor::empty({g.M * P}, is_reduced_float(x.dtype()) ? kFloat32 : x.dtype(), x.device());
  const cudaStream_t s = ctx_.stream;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using A = math::compute_t<T>;
    const T* xp = ptr<T>(x);
    T* op_ = ptr<T>(out);
    A* sc = scratch.defined() ? ptr<A>(scratch) : nullptr;
    switch (op) {
      case ReduceOp::Sum: reduce_typed<T, math::SumOp<A>>(g, xp, op_, sc, 0.0, s); break;
      case ReduceOp::Mean:
        if (g.R == 0 && g.M > 0) {
          T nan_v;
          if constexpr (is_float_storage_v<T>) nan_v = static_cast<T>(std::numeric_limits<double>::quiet_NaN());
          else nan_v = T(0);
          reduce_empty_kernel<T><<<grid_for(g.M), kThreads, 0, s>>>(op_, g.M, nan_v);
        } else {
          reduce_typed<T, math::SumOp<A>>(g, xp, op_, sc, static_cast<double>(g.R), s);
        }
        break;
      case ReduceOp::Prod: reduce_typed<T, math::ProdOp<A>>(g, xp, op_, sc, 0.0, s); break;
      case ReduceOp::Max: reduce_typed<T, math::MaxOp<A>>(g, xp, op_, sc, 0.0, s); break;
      case ReduceOp::Min: reduce_typed<T, math::MinOp<A>>(g, xp, op_, sc, 0.0, s); break;
    }
  });
  check_launch("reduce");
}

void CudaBackend::arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values,
                             const Tensor& indices) {
  DeviceGuard guard(ctx_.index);
  const ReduceDims d = split_reduce_dims(x.shape(), x.strides(), {dim});
  ReduceGeom g;
  g.M = numel_of(d.kept_shape);
  g.nk = pack_dims(d.kept_shape, d.kept_strides, g.ksize, g.kstride, "arg_reduce");
  g.nr = 1;
  g.R = x.dim() ? x.size(dim) : 1;
  g.rsize[0] = g.R;
  g.rstride[0] = x.dim() ? x.stride(dim) : 1;
  if (g.M == 0) return;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const unsigned blocks = static_cast<unsigned>((g.M + kThreads / 32 - 1) / (kThreads / 32));
    arg_reduce_kernel<T><<<blocks, kThreads, 0, ctx_.stream>>>(g, ptr<T>(x), ptr<T>(values), ptr<std::int64_t>(indices),
                                                               op == ReduceOp::Max);
  });
  check_launch("arg_reduce");
}

void CudaBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
  check_float(x, "softmax");
  DeviceGuard guard(ctx_.index);
  const std::int64_t n = x.dim() ? x.size(-1) : 1, rows = n ? x.numel() / n : 0;
  if (rows == 0 || n == 0) return;
  int G;
  unsigned blocks;
  row_launch(rows, n, G, blocks);
  dispatch_floating(x.dtype(), [&](auto z) {
    using T = decltype(z);
    softmax_kernel<T><<<blocks, kThreads, 0, ctx_.stream>>>(ptr<T>(x), ptr<T>(out), rows, n, log, G);
  });
  check_launch("softmax");
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) {
  check_float(y, "softmax_backward");
  DeviceGuard guard(ctx_.index);
  const std::int64_t n = y.dim() ? y.size(-1) : 1, rows = n ? y.numel() / n : 0;
  if (rows == 0 || n == 0) return;
  int G;
  unsigned blocks;
  row_launch(rows, n, G, blocks);
  dispatch_floating(y.dtype(), [&](auto z) {
    using T = decltype(z);
    softmax_backward_kernel<T>
        <<<blocks, kThreads, 0, ctx_.stream>>>(ptr<T>(y), ptr<T>(gy), ptr<T>(gx), rows, n, log, G);
  });
  check_launch("softmax_backward");
}

namespace {

// Layer norm's forward over rows of x, or the RMS norm's without mean (then bias and mean are
// undefined): one kernel, the rows' statistics written for backward.
void norm_forward(DeviceContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                  const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  DeviceGuard guard(ctx.index);
  const std::int64_t rows = rstd.numel(), n = rows ? x.numel() / rows : 0;
  if (rows == 0) return;
  int G;
  unsigned blocks;
  row_launch(rows, n, G, blocks);
  dispatch_floating(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using A = math::compute_t<T>;
    const T* w = weight.defined() ? ptr<T>(weight) : nullptr;
    const T* b = bias.defined() ? ptr<T>(bias) : nullptr;
    layer_norm_kernel<T><<<blocks, kThreads, 0, ctx.stream>>>(ptr<T>(x), w, b, eps, ptr<T>(out),
                                                              mean.defined() ? ptr<A>(mean) : nullptr, ptr<A>(rstd),
                                                              rows, n, G);
  });
}

// Layer norm's backward, or the RMS norm's without mean (then gbias is undefined).
void norm_backward(DeviceContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                   const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) {
  DeviceGuard guard(ctx.index);
  const std::int64_t rows = x.size(0), n = x.size(1);
  const cudaStream_t s = ctx.stream;
  dispatch_floating(x.dtype(), [&](auto z) {
    using T = decltype(z);
    using A = math::compute_t<T>;
    const A* mp = mean.defined() ? ptr<A>(mean) : nullptr;
    if (gx.defined() && rows > 0 && n > 0) {
      int G;
      unsigned blocks;
      row_launch(rows, n, G, blocks);
      layer_norm_backward_kernel<T><<<blocks, kThreads, 0, s>>>(ptr<T>(x), weight.defined() ? ptr<T>(weight) : nullptr,
                                                                mp, ptr<A>(rstd), ptr<T>(gy), ptr<T>(gx), rows, n, G);
    }
    if ((!gweight.defined() && !gbias.defined()) || n == 0) return;
    // The chunk count depends on the row count only: the sums' order is fixed for a shape.
    const std::int64_t per = std::max<std::int64_t>(32, (rows + 255) / 256), chunks = (rows + per - 1) / per;
    Tensor scratch = Tensor::empty({2 * chunks * n}, is_reduced_float(x.dtype()) ? kFloat32 : x.dtype(), x.device());
    A* pw = gweight.defined() ? ptr<A>(scratch) : nullptr;
    A* pb = gbias.defined() ? ptr<A>(scratch) + chunks * n : nullptr;
    if (chunks > 0) {
      const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
      layer_norm_param_partials<T>
          <<<grid, kThreads, 0, s>>>(ptr<T>(x), mp, ptr<A>(rstd), ptr<T>(gy), pw, pb, rows, n, per);
    }
    // Without rows the scratch is empty (null pointers) and the sums are 0.
    if (gweight.defined()) column_sum_kernel<T><<<grid_for(n), kThreads, 0, s>>>(pw, ptr<T>(gweight), chunks, n);
    if (gbias.defined()) column_sum_kernel<T><<<grid_for(n), kThreads, 0, s>>>(pb, ptr<T>(gbias), chunks, n);
  });
}

}  // namespace

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                             const Tensor& mean, const Tensor& rstd) {
  check_float(x, "layer_norm");
  norm_forward(ctx_, x, weight, bias, eps, out, mean, rstd);
  check_launch("layer_norm");
}

void CudaBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                      const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) {
  check_float(x, "layer_norm_backward");
  norm_backward(ctx_, x, weight, mean, rstd, gy, gx, gweight, gbias);
  check_launch("layer_norm_backward");
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) {
  check_float(x, "rms_norm");
  norm_forward(ctx_, x, weight, Tensor(), eps, out, Tensor(), rstd);
  check_launch("rms_norm");
}

void CudaBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy,
                                    const Tensor& gx, const Tensor& gweight) {
  check_float(x, "rms_norm_backward");
  norm_backward(ctx_, x, weight, Tensor(), rstd, gy, gx, gweight, Tensor());
  check_launch("rms_norm_backward");
}

}  // namespace kiln::cuda
