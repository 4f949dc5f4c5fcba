// Host side of the CUDA kernels: checks, iteration geometry (dims merged where every operand
// is contiguous across them), host <-> device copies through pinned staging, dispatch.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "cuda_backend.hpp"
#include "kernels.hpp"

namespace kiln::cuda {
namespace {

constexpr std::size_t kStageChunk = std::size_t{8} << 20;  // pinned staging block per copy step

// Iteration over `shape` for N operands (each a view with `shape`'s geometry).
template <int N>
Iter<N> make_iter(const Shape& shape, const std::array<const Tensor*, N>& ts, const char* op) {
  Iter<N> it;
  std::vector<std::int64_t> sz;  // outermost first while merging
  std::array<std::vector<std::int64_t>, N> st;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!sz.empty()) {
      bool merge = true;
      for (int k = 0; k < N; ++k)
        if (st[k].back() != ts[k]->strides()[d] * shape[d]) merge = false;
      if (merge) {
        sz.back() *= shape[d];
        for (int k = 0; k < N; ++k) st[k].back() = ts[k]->strides()[d];
        continue;
      }
    }
    sz.push_back(shape[d]);
    for (int k = 0; k < N; ++k) st[k].push_back(ts[k]->strides()[d]);
  }
  KILN_CHECK(sz.size() <= static_cast<std::size_t>(kMaxDims), op,
             "operands of shape {} have {} dims that cannot be merged; the CUDA kernels take at most {} (make the "
             "inputs contiguous first)",
             shape_str(shape), sz.size(), kMaxDims);
  it.ndim = static_cast<int>(sz.size());
  it.numel = numel_of(shape);
  bool contiguous = true, fits32 = it.numel < (std::int64_t{1} << 31);
  for (int k = 0; k < N; ++k) {
    it.data[k] = ts[k]->raw_data();
    std::int64_t span = 0;
    for (int d = 0; d < it.ndim; ++d) {
      const std::int64_t s = st[k][static_cast<std::size_t>(it.ndim - 1 - d)];
      it.sizes[d] = sz[static_cast<std::size_t>(it.ndim - 1 - d)];
      it.strides[k][d] = s;
      if (s < 0) fits32 = false;
      span += (it.sizes[d] - 1) * (s < 0 ? -s : s);
    }
    if (span >= (std::int64_t{1} << 31)) fits32 = false;
    if (it.ndim > 1 || (it.ndim == 1 && it.strides[k][0] != 1)) contiguous = false;
  }
  it.contiguous = contiguous;
  it.use32 = fits32;
  return it;
}

template <int N>
Iter<N> make_iter(const Tensor& shape_of, const std::array<const Tensor*, N>& ts, const char* op) {
  return make_iter<N>(shape_of.shape(), ts, op);
}

// Merges adjacent dims of (size, stride) lists (outermost first) into innermost-first arrays.
int pack_dims(const Shape& sizes, const Strides& strides, std::int64_t* out_size, std::int64_t* out_stride,
              const char* op) {
  std::vector<std::int64_t> s, t;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 1) continue;
    if (!s.empty() && t.back() == strides[i] * sizes[i]) {
      s.back() *= sizes[i];
      t.back() = strides[i];
    } else {
      s.push_back(sizes[i]);
      t.push_back(strides[i]);
    }
  }
  KILN_CHECK(s.size() <= static_cast<std::size_t>(kMaxDims), op,
             "the input has {} dims that cannot be merged; the CUDA kernels take at most {}", s.size(), kMaxDims);
  const int n = static_cast<int>(s.size());
  for (int d = 0; d < n; ++d) {
    out_size[d] = s[static_cast<std::size_t>(n - 1 - d)];
    out_stride[d] = t[static_cast<std::size_t>(n - 1 - d)];
  }
  return n;
}

Tensor contiguous_on(CudaBackend& be, const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  be.copy(c, t);
  return c;
}

void split3(const Shape& s, std::int64_t dim, std::int64_t& outer, std::int64_t& inner) {
  outer = 1;
  inner = 1;
  for (std::int64_t d = 0; d < dim; ++d) outer *= s[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < s.size(); ++d) inner *= s[d];
}

// A view of t with `shape` and t's strides, except 0 along `dim` (the index supplies it).
Tensor along_dim_view(const Tensor& t, const Shape& shape, std::int64_t dim) {
  Strides st = t.strides();
  st[static_cast<std::size_t>(dim)] = 0;
  return Tensor::make_view(t, shape, st, t.offset());
}

void check_float(const Tensor& t, const char* op) {
  KILN_CHECK(is_floating(t.dtype()), op, "expected float32 or float64 tensors, got {}", dtype_name(t.dtype()));
}

}  // namespace

// ---- copies and fills ----

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.raw_data() != src.raw_data())
      check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream),
            "copy");
    return;
  }
  launch_copy(make_iter<2>(dst, {&dst, &src}, "copy"), dst.dtype(), src.dtype(), ctx_.stream);
  check_launch("copy");
}

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  const std::size_t n = dst.nbytes();
  if (n == 0) return;
  DeviceGuard g(ctx_.index);
  // Through pinned blocks: the host copy of one chunk overlaps the DMA of the previous one,
  // and the call returns without waiting (the caller's buffer is already copied).
  PinnedPool& pool = pinned_pool();
  char* d = static_cast<char*>(dst.raw_data());
  const char* s = static_cast<const char*>(src);
  for (std::size_t off = 0; off < n; off += kStageChunk) {
    const std::size_t len = std::min(kStageChunk, n - off);
    void* stage = pool.acquire(len);
    std::memcpy(stage, s + off, len);
    const cudaError_t e = cudaMemcpyAsync(d + off, stage, len, cudaMemcpyHostToDevice, ctx_.stream);
    pool.release(stage, ctx_.stream);
    check(e, "to");
  }
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  const std::size_t n = src.nbytes();
  if (n == 0) return;
  DeviceGuard g(ctx_.index);
  PinnedPool& pool = pinned_pool();
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(dst);
  const std::size_t chunks = (n + kStageChunk - 1) / kStageChunk;
  if (chunks == 1) {  // the common small read (item(), printing): one wait on the stream
    void* stage = pool.acquire(n);
    cudaError_t e = cudaMemcpyAsync(stage, s, n, cudaMemcpyDeviceToHost, ctx_.stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ctx_.stream);
    if (e == cudaSuccess) std::memcpy(d, stage, n);
    pool.release(stage, ctx_.stream);
    check(e, "to");  // asynchronous faults of earlier kernels surface here
    return;
  }
  // Up to two chunks in flight: the DMA of chunk i + 1 overlaps the host copy of chunk i.
  std::vector<void*> stage(chunks, nullptr);
  std::vector<cudaEvent_t> done(chunks, nullptr);
  auto enqueue = [&](std::size_t i) {
    const std::size_t off = i * kStageChunk, len = std::min(kStageChunk, n - off);
    stage[i] = pool.acquire(len);
    check(cudaMemcpyAsync(stage[i], s + off, len, cudaMemcpyDeviceToHost, ctx_.stream), "to");
    check(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming), "to");
    check(cudaEventRecord(done[i], ctx_.stream), "to");
  };
  cudaError_t err = cudaSuccess;
  for (std::size_t i = 0; i < chunks; ++i) {
    if (i == 0) enqueue(0);
    if (i + 1 < chunks) enqueue(i + 1);
    const cudaError_t e = cudaEventSynchronize(done[i]);
    if (e == cudaSuccess) {
      const std::size_t off = i * kStageChunk;
      std::memcpy(d + off, stage[i], std::min(kStageChunk, n - off));
    } else if (err == cudaSuccess) {
      err = e;
    }
    cudaEventDestroy(done[i]);
    pool.release(stage[i], ctx_.stream);
  }
  // Asynchronous faults of earlier kernels surface here, at the first wait.
  check(err, "to");
}

void CudaBackend::fill(const Tensor& dst, const Scalar& v) {
  if (dst.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  std::uint64_t bits = 0;
  switch (dst.dtype()) {
    case DType::Bool: { bool x = v.to<bool>(); std::memcpy(&bits, &x, sizeof x); break; }
    case DType::Int64: { std::int64_t x = v.to<std::int64_t>(); std::memcpy(&bits, &x, sizeof x); break; }
    case DType::Float32: { float x = v.to<float>(); std::memcpy(&bits, &x, sizeof x); break; }
    case DType::Float64: { double x = v.to<double>(); std::memcpy(&bits, &x, sizeof x); break; }
  }
  launch_fill(make_iter<1>(dst, {&dst}, "fill"), dst.dtype(), bits, ctx_.stream);
  check_launch("fill");
}

// ---- elementwise ----

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  launch_unary(op, make_iter<2>(out, {&out, &x}, "unary"), out.dtype(), x.dtype(), a, b, ctx_.stream);
  check_launch("unary");
}

void CudaBackend::binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  launch_binary(op, make_iter<3>(out, {&out, &x, &y}, "binary"), out.dtype(), ctx_.stream);
  check_launch("binary");
}

void CudaBackend::compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  launch_compare(op, make_iter<3>(out, {&out, &x, &y}, "compare"), x.dtype(), ctx_.stream);
  check_launch("compare");
}

void CudaBackend::where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard g(ctx_.index);
  launch_where(make_iter<4>(out, {&out, &cond, &x, &y}, "where"), out.dtype(), ctx_.stream);
  check_launch("where");
}

// ---- reductions ----

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) {
  DeviceGuard g(ctx_.index);
  std::vector<bool> red(static_cast<std::size_t>(x.dim()), false);
  for (auto d : dims) red[static_cast<std::size_t>(d)] = true;
  Shape ks, rs;
  Strides kst, rst;
  for (std::int64_t d = 0; d < x.dim(); ++d) {
    (red[static_cast<std::size_t>(d)] ? rs : ks).push_back(x.size(d));
    (red[static_cast<std::size_t>(d)] ? rst : kst).push_back(x.stride(d));
  }
  ReduceGeom geo;
  geo.M = numel_of(ks);
  geo.R = numel_of(rs);
  geo.nk = pack_dims(ks, kst, geo.ksize, geo.kstride, "reduce");
  geo.nr = pack_dims(rs, rst, geo.rsize, geo.rstride, "reduce");
  Tensor scratch;
  const std::int64_t P = reduce_partials(geo);
  if (P > 1) scratch = Tensor::empty({geo.M * P}, x.dtype(), x.device());
  launch_reduce(op, geo, x.raw_data(), out.raw_data(), scratch.defined() ? scratch.raw_data() : nullptr, x.dtype(),
                ctx_.stream);
  check_launch("reduce");
}

void CudaBackend::arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values,
                             const Tensor& indices) {
  DeviceGuard g(ctx_.index);
  Shape ks;
  Strides kst;
  for (std::int64_t d = 0; d < x.dim(); ++d)
    if (d != dim) {
      ks.push_back(x.size(d));
      kst.push_back(x.stride(d));
    }
  ReduceGeom geo;
  geo.M = numel_of(ks);
  geo.nk = pack_dims(ks, kst, geo.ksize, geo.kstride, "arg_reduce");
  geo.nr = 1;
  geo.R = x.dim() ? x.size(dim) : 1;
  geo.rsize[0] = geo.R;
  geo.rstride[0] = x.dim() ? x.stride(dim) : 1;
  launch_arg_reduce(op == ReduceOp::Max, geo, x.raw_data(), values.raw_data(), indices.data_ptr<std::int64_t>(),
                    x.dtype(), ctx_.stream);
  check_launch("arg_reduce");
}

// ---- index ops ----

void CudaBackend::index_select(const Tensor& x_in, std::int64_t dim, const Tensor& index_in, const Tensor& out) {
  DeviceGuard g(ctx_.index);
  Tensor x = contiguous_on(*this, x_in), index = contiguous_on(*this, index_in);
  std::int64_t outer, inner;
  split3(x.shape(), dim, outer, inner);
  launch_index_select(x.raw_data(), index.data_ptr<std::int64_t>(), out.raw_data(), outer, x.size(dim), index.numel(),
                      inner, x.dtype(), ctx_.stream);
  check_launch("index_select");
}

void CudaBackend::index_add(const Tensor& out, std::int64_t dim, const Tensor& index_in, const Tensor& src_in) {
  DeviceGuard g(ctx_.index);
  Tensor src = contiguous_on(*this, src_in), index = contiguous_on(*this, index_in);
  std::int64_t outer, inner;
  split3(out.shape(), dim, outer, inner);
  launch_index_add(out.raw_data(), index.data_ptr<std::int64_t>(), src.raw_data(), outer, out.size(dim), index.numel(),
                   inner, out.dtype(), ctx_.stream);
  check_launch("index_add");
}

void CudaBackend::gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) {
  DeviceGuard g(ctx_.index);
  Tensor xv = along_dim_view(x, index.shape(), dim);
  launch_gather(make_iter<3>(index, {&out, &index, &xv}, "gather"), x.stride(dim), x.dtype(), ctx_.stream);
  check_launch("gather");
}

void CudaBackend::scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) {
  DeviceGuard g(ctx_.index);
  Tensor ov = along_dim_view(out, index.shape(), dim);
  launch_scatter_add(make_iter<3>(index, {&ov, &index, &src}, "scatter_add"), out.stride(dim), out.dtype(),
                     ctx_.stream);
  check_launch("scatter_add");
}

// ---- row kernels, random; launches for kernels outside core (foreach.cuh) ----

void CudaBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
  check_float(x, "softmax");
  DeviceGuard g(ctx_.index);
  const std::int64_t n = x.dim() ? x.size(-1) : 1, rows = n ? x.numel() / n : 0;
  launch_softmax(x.raw_data(), out.raw_data(), rows, n, log, x.dtype(), ctx_.stream);
  check_launch("softmax");
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) {
  check_float(y, "softmax_backward");
  DeviceGuard g(ctx_.index);
  const std::int64_t n = y.dim() ? y.size(-1) : 1, rows = n ? y.numel() / n : 0;
  launch_softmax_backward(y.raw_data(), gy.raw_data(), gx.raw_data(), rows, n, log, y.dtype(), ctx_.stream);
  check_launch("softmax_backward");
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                             const Tensor& mean, const Tensor& rstd) {
  check_float(x, "layer_norm");
  DeviceGuard g(ctx_.index);
  const std::int64_t rows = mean.numel(), n = rows ? x.numel() / rows : 0;
  launch_layer_norm(x.raw_data(), weight.defined() ? weight.raw_data() : nullptr,
                    bias.defined() ? bias.raw_data() : nullptr, eps, out.raw_data(), mean.raw_data(), rstd.raw_data(),
                    rows, n, x.dtype(), ctx_.stream);
  check_launch("layer_norm");
}

void CudaBackend::random(const Tensor& out, const RandomSpec& spec) {
  DeviceGuard g(ctx_.index);
  launch_random(out.raw_data(), out.numel(), out.dtype(), spec, ctx_.stream);
  check_launch("random");
}

void launch_on(int device, const char* op, void (*launch)(cudaStream_t, const void*), const void* ctx) {
  DeviceContext& c = context(device, op);
  DeviceGuard g(c.index);
  launch(c.stream, ctx);
  check_launch(op);
}

}  // namespace kiln::cuda
