// Views (zero-copy, differentiable), copies, conversions, cat/stack/split.
#include <numeric>
#include <optional>

#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

Tensor view_raw(const Tensor& x, Shape shape, Strides strides, std::int64_t offset) {
  return Tensor::make_view(x, std::move(shape), std::move(strides), offset);
}

// Resolves one -1 in `shape` against numel.
Shape infer_shape(const Shape& shape, std::int64_t numel, const char* op, const Shape& from) {
  Shape out = shape;
  std::int64_t infer = -1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      KILN_CHECK(infer < 0, op, "only one dimension can be -1, got shape {}", shape_str(shape));
      infer = static_cast<std::int64_t>(i);
      out[i] = 1;
    } else {
      KILN_CHECK(shape[i] >= 0, op, "invalid dimension {} in shape {}", shape[i], shape_str(shape));
    }
  }
  const std::int64_t known = checked_numel(out, op);
  if (infer >= 0) {
    KILN_CHECK(known != 0 && numel % known == 0, op, "shape {} is invalid for an input of shape {} ({} elements)",
               shape_str(shape), shape_str(from), numel);
    out[infer] = numel / known;
  }
  KILN_CHECK(numel_of(out) == numel, op, "shape {} is invalid for an input of shape {} ({} elements)", shape_str(shape),
             shape_str(from), numel);
  return out;
}

// Strides that view (shape, strides) as new_shape without copying, if possible.
std::optional<Strides> view_strides(const Shape& shape, const Strides& strides, const Shape& new_shape) {
  Strides out(new_shape.size());
  if (numel_of(shape) == 0 || shape.empty()) return contiguous_strides(new_shape);
  std::int64_t view_d = static_cast<std::int64_t>(new_shape.size()) - 1;
  std::int64_t chunk_base_stride = strides.back();
  std::int64_t tensor_numel = 1, view_numel = 1;
  for (std::int64_t d = static_cast<std::int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

void record_reshape_like(const char* op, const Tensor& x, const Tensor& y) {
  Shape xs = x.shape();
  record(op, {x}, {y}, [xs](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{reshape(g[0], xs)}; });
}

// Differentiable "zeros of `shape` with g written into x[dim: start:start+len*step:step]".
Tensor embed_slice(const Tensor& g, const Shape& shape, std::int64_t dim, std::int64_t start, std::int64_t step) {
  Tensor out = zeros(shape, TensorOptions(g.dtype()).device(g.device()));
  Strides st = out.strides();
  std::int64_t off = start * st[dim];
  st[dim] *= step;
  Tensor target = view_raw(out, g.shape(), st, off);
  backend(g, "slice_backward").copy(target, g);
  std::int64_t len = g.size(dim);
  record("slice_backward", {g}, {out}, [dim, start, step, len](FunctionNode&, std::vector<Tensor>& gg) {
    return std::vector<Tensor>{slice(gg[0], dim, start, start + len * step, step)};
  });
  return out;
}

// The pieces of x along dim, as views recorded on one node: its backward concatenates the
// pieces' gradients (zeros only for a piece that got none) into x's gradient, where a slice per
// piece would give each a zero-filled gradient of x's shape for the engine to add up.
std::vector<Tensor> split_views(const Tensor& x, std::int64_t dim, const std::vector<std::int64_t>& sizes) {
  std::vector<Tensor> out;
  std::int64_t o = 0;
  for (auto s : sizes) {
    Shape shape = x.shape();
    shape[dim] = s;
    out.push_back(view_raw(x, shape, x.strides(), x.offset() + o * x.stride(dim)));
    o += s;
  }
  record("split", {x}, out, [dim](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{cat(g, dim)}; });
  return out;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& shape_in) {
  check_defined(x, "view");
  Shape shape = infer_shape(shape_in, x.numel(), "view", x.shape());
  auto st = view_strides(x.shape(), x.strides(), shape);
  KILN_CHECK(st.has_value(), "view",
             "cannot view a tensor of shape {} and strides {} as {} without copying; use reshape()",
             shape_str(x.shape()), shape_str(x.strides()), shape_str(shape));
  Tensor y = view_raw(x, shape, *st, x.offset());
  record_reshape_like("view", x, y);
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape_in) {
  check_defined(x, "reshape");
  Shape shape = infer_shape(shape_in, x.numel(), "reshape", x.shape());
  if (shape == x.shape()) return x;
  auto st = view_strides(x.shape(), x.strides(), shape);
  Tensor y;
  if (st) {
    y = view_raw(x, shape, *st, x.offset());
  } else {
    Tensor c = contiguous_raw(x);
    y = view_raw(c, shape, contiguous_strides(shape), c.offset());
  }
  record_reshape_like("reshape", x, y);
  return y;
}

Tensor flatten(const Tensor& x, std::int64_t start_dim, std::int64_t end_dim) {
  check_defined(x, "flatten");
  if (x.dim() == 0) return reshape(x, {1});
  std::int64_t s = normalize_dim(start_dim, x.dim(), "flatten"), e = normalize_dim(end_dim, x.dim(), "flatten");
  KILN_CHECK(s <= e, "flatten", "start_dim {} must not come after end_dim {}", start_dim, end_dim);
  Shape shape(x.shape().begin(), x.shape().begin() + s);
  std::int64_t n = 1;
  for (std::int64_t d = s; d <= e; ++d) n *= x.size(d);
  shape.push_back(n);
  shape.insert(shape.end(), x.shape().begin() + e + 1, x.shape().end());
  return reshape(x, shape);
}

Tensor permute(const Tensor& x, const Dims& dims) {
  check_defined(x, "permute");
  KILN_CHECK(static_cast<std::int64_t>(dims.size()) == x.dim(), "permute",
             "got {} dims {} for a {}-D tensor of shape {}", dims.size(), shape_str(dims), x.dim(),
             shape_str(x.shape()));
  Dims nd(dims.size());
  std::vector<bool> seen(dims.size(), false);
  Shape shape(dims.size());
  Strides st(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i) {
    std::int64_t d = normalize_dim(dims[i], x.dim(), "permute");
    KILN_CHECK(!seen[d], "permute", "dim {} repeated in {}", d, shape_str(dims));
    seen[d] = true;
    nd[i] = d;
    shape[i] = x.size(d);
    st[i] = x.stride(d);
  }
  Tensor y = view_raw(x, shape, st, x.offset());
  Dims inv(nd.size());
  for (std::size_t i = 0; i < nd.size(); ++i) inv[nd[i]] = static_cast<std::int64_t>(i);
  record("permute", {x}, {y},
         [inv](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{permute(g[0], inv)}; });
  return y;
}

Tensor transpose(const Tensor& x, std::int64_t d0, std::int64_t d1) {
  check_defined(x, "transpose");
  if (x.dim() == 0) return x;
  Dims p(x.dim());
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[normalize_dim(d0, x.dim(), "transpose")], p[normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, p);
}

Tensor slice(const Tensor& x, std::int64_t dim_in, std::int64_t start, std::int64_t end, std::int64_t step) {
  check_defined(x, "slice");
  KILN_CHECK(x.dim() > 0, "slice", "cannot slice a 0-D tensor");
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "slice");
  KILN_CHECK(step > 0, "slice", "step must be positive, got {}", step);
  std::int64_t n = x.size(dim);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<std::int64_t>(start, 0, n);
  end = std::clamp<std::int64_t>(end, start, n);
  std::int64_t len = (end - start + step - 1) / step;
  Shape shape = x.shape();
  Strides st = x.strides();
  shape[dim] = len;
  std::int64_t off = x.offset() + start * st[dim];
  st[dim] *= step;
  Tensor y = view_raw(x, shape, st, off);
  Shape xs = x.shape();
  record("slice", {x}, {y}, [xs, dim, start, step](FunctionNode&, std::vector<Tensor>& g) {
    return std::vector<Tensor>{embed_slice(g[0], xs, dim, start, step)};
  });
  return y;
}

Tensor narrow(const Tensor& x, std::int64_t dim_in, std::int64_t start, std::int64_t length) {
  check_defined(x, "narrow");
  KILN_CHECK(x.dim() > 0, "narrow", "cannot narrow a 0-D tensor");
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "narrow");
  std::int64_t n = x.size(dim);
  if (start < 0 && start >= -n) start += n;
  KILN_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow",
             "start {} and length {} are out of range for dim {} of size {}", start, length, dim, n);
  return slice(x, dim, start, start + length, 1);
}

Tensor select(const Tensor& x, std::int64_t dim_in, std::int64_t index) {
  check_defined(x, "select");
  KILN_CHECK(x.dim() > 0, "select", "cannot select from a 0-D tensor");
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "select");
  std::int64_t n = x.size(dim);
  KILN_CHECK(index >= -n && index < n, "select", "index {} is out of range for dim {} of size {}", index, dim, n);
  if (index < 0) index += n;
  Shape shape = x.shape();
  Strides st = x.strides();
  std::int64_t off = x.offset() + index * st[dim];
  shape.erase(shape.begin() + dim);
  st.erase(st.begin() + dim);
  Tensor y = view_raw(x, shape, st, off);
  Shape xs = x.shape();
  record("select", {x}, {y}, [xs, dim, index](FunctionNode&, std::vector<Tensor>& g) {
    return std::vector<Tensor>{embed_slice(unsqueeze(g[0], dim), xs, dim, index, 1)};
  });
  return y;
}

Tensor expand(const Tensor& x, const Shape& shape_in) {
  check_defined(x, "expand");
  KILN_CHECK(shape_in.size() >= x.shape().size(), "expand", "cannot expand shape {} to fewer dims {}",
             shape_str(x.shape()), shape_str(shape_in));
  Shape shape = shape_in;
  std::size_t off = shape.size() - x.shape().size();
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      KILN_CHECK(i >= off, "expand", "-1 is not allowed for the new leading dim {} in {}", i, shape_str(shape_in));
      shape[i] = x.shape()[i - off];
    }
    if (i >= off)
      KILN_CHECK(x.shape()[i - off] == shape[i] || x.shape()[i - off] == 1, "expand",
                 "cannot expand shape {} to {}: dim {} has size {}, expected 1 or {}", shape_str(x.shape()),
                 shape_str(shape_in), i, x.shape()[i - off], shape[i]);
  }
  if (shape == x.shape()) return x;
  checked_numel(shape, "expand");
  Tensor y = view_raw(x, shape, broadcast_strides(x.shape(), x.strides(), shape, "expand"), x.offset());
  Shape xs = x.shape();
  record("expand", {x}, {y},
         [xs](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{sum_to_shape(g[0], xs)}; });
  return y;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) { return expand(x, shape); }

Tensor squeeze(const Tensor& x, std::optional<std::int64_t> dim) {
  check_defined(x, "squeeze");
  Shape shape;
  Strides st;
  std::int64_t d = dim ? normalize_dim(*dim, x.dim(), "squeeze") : -1;
  for (std::int64_t i = 0; i < x.dim(); ++i) {
    bool drop = x.size(i) == 1 && (d < 0 || d == i);
    if (!drop) {
      shape.push_back(x.size(i));
      st.push_back(x.stride(i));
    }
  }
  if (shape.size() == x.shape().size()) return x;
  Tensor y = view_raw(x, shape, st, x.offset());
  record_reshape_like("squeeze", x, y);
  return y;
}

Tensor unsqueeze(const Tensor& x, std::int64_t dim_in) {
  check_defined(x, "unsqueeze");
  std::int64_t dim = normalize_dim(dim_in, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape();
  Strides st = x.strides();
  std::int64_t s = dim < x.dim() ? x.stride(dim) * x.size(dim) : 1;
  shape.insert(shape.begin() + dim, 1);
  st.insert(st.begin() + dim, s);
  Tensor y = view_raw(x, shape, st, x.offset());
  record_reshape_like("unsqueeze", x, y);
  return y;
}

Tensor contiguous(const Tensor& x) {
  check_defined(x, "contiguous");
  if (x.is_contiguous()) return x;
  return clone(x);
}

Tensor clone(const Tensor& x) {
  check_defined(x, "clone");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend(x, "clone").copy(y, x);
  record("clone", {x}, {y}, [](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return y;
}

Tensor to(const Tensor& x, DType dtype) {
  check_defined(x, "to");
  if (x.dtype() == dtype) return x;
  Tensor y = cast_raw(x, dtype);
  DType from = x.dtype();
  if (is_floating(dtype))
    record("to", {x}, {y},
           [from](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{to(g[0], from)}; });
  return y;
}

Tensor to(const Tensor& x, Device device, bool non_blocking) {
  check_defined(x, "to");
  if (x.device() == device) return x;
  backend_for(device, "to");  // an unavailable device is reported as "[to] ..."
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device);
  Tensor c = contiguous_raw(x);
  if (x.device().is_cpu() && non_blocking && c.is_pinned()) {
    backend_for(device, "to").copy_from_pinned(y, c);  // c is x itself (a copy would be pageable)
  } else if (x.device().is_cpu()) {
    backend_for(device, "to").copy_from_host(y, c.raw_data());
  } else if (device.is_cpu()) {
    backend(x, "to").copy_to_host(y.raw_data(), c);
  } else {
    Tensor h = Tensor::empty(x.shape(), x.dtype(), Device::cpu());
    backend(x, "to").copy_to_host(h.raw_data(), c);
    backend_for(device, "to").copy_from_host(y, h.raw_data());
  }
  Device from = x.device();
  record("to", {x}, {y}, [from](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{to(g[0], from)}; });
  return y;
}

Tensor pin_memory(const Tensor& x) {
  check_defined(x, "pin_memory");
  KILN_CHECK(x.device().is_cpu(), "pin_memory", "only CPU tensors can be pinned, got a tensor on {}", x.device().str());
  Allocator& pinned = pinned_allocator("pin_memory");
  if (x.is_pinned()) return x;
  auto impl = std::make_shared<TensorImpl>();
  const std::int64_t nbytes = checked_nbytes(x.shape(), itemsize(x.dtype()), "pin_memory");
  impl->storage = std::make_shared<Storage>(static_cast<std::size_t>(nbytes), pinned);
  impl->shape = x.shape();
  impl->strides = contiguous_strides(x.shape());
  impl->dtype = x.dtype();
  Tensor y(std::move(impl));
  backend(x, "pin_memory").copy(y, x);
  record("pin_memory", {x}, {y}, [](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return y;
}

Tensor cat(const std::vector<Tensor>& xs, std::int64_t dim_in) {
  KILN_CHECK(!xs.empty(), "cat", "expected a non-empty list of tensors");
  for (std::size_t i = 0; i < xs.size(); ++i) check_defined(xs[i], "cat");
  const Tensor& first = xs[0];
  KILN_CHECK(first.dim() > 0, "cat", "zero-dimensional tensor (input 0) cannot be concatenated");
  std::int64_t dim = normalize_dim(dim_in, first.dim(), "cat");
  DType dt = first.dtype();
  std::int64_t total = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    check_same_device("cat", first, t);
    KILN_CHECK(t.dim() == first.dim(), "cat", "tensor {} has {} dims but tensor 0 has {} (shapes {} and {})", i,
               t.dim(), first.dim(), shape_str(t.shape()), shape_str(first.shape()));
    for (std::int64_t d = 0; d < t.dim(); ++d)
      KILN_CHECK(d == dim || t.size(d) == first.size(d), "cat",
                 "sizes must match except in dim {}: tensor {} has shape {}, tensor 0 has shape {}", dim, i,
                 shape_str(t.shape()), shape_str(first.shape()));
    dt = promote_types(dt, t.dtype());
    KILN_CHECK(!__builtin_add_overflow(total, t.size(dim), &total), "cat",
               "the sizes in dim {} overflow a 64-bit integer at tensor {} (shape {})", dim, i, shape_str(t.shape()));
  }
  Shape shape = first.shape();
  shape[dim] = total;
  checked_numel(shape, "cat");
  Tensor out = Tensor::empty(shape, dt, first.device());
  std::vector<std::int64_t> sizes;
  std::int64_t off = 0;
  for (const auto& t : xs) {
    Shape s = out.shape();
    s[dim] = t.size(dim);
    Tensor target = view_raw(out, s, out.strides(), off * out.stride(dim));
    backend(t, "cat").copy(target, t);
    off += t.size(dim);
    sizes.push_back(t.size(dim));
  }
  std::vector<DType> dts;
  for (const auto& t : xs) dts.push_back(t.dtype());
  record("cat", xs, {out}, [sizes, dim, dts](FunctionNode& n, std::vector<Tensor>& g) {
    std::vector<Tensor> gs;
    std::int64_t o = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      gs.push_back(n.next_edges[i].valid() ? to(narrow(g[0], dim, o, sizes[i]), dts[i]) : Tensor());
      o += sizes[i];
    }
    return gs;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, std::int64_t dim) {
  KILN_CHECK(!xs.empty(), "stack", "expected a non-empty list of tensors");
  std::int64_t d = normalize_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> us;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    check_defined(xs[i], "stack");
    KILN_CHECK(xs[i].shape() == xs[0].shape(), "stack",
               "all tensors must have the same shape: tensor {} has {}, tensor 0 has {}", i, shape_str(xs[i].shape()),
               shape_str(xs[0].shape()));
    us.push_back(unsqueeze(xs[i], d));
  }
  Shape shape = xs[0].shape();
  shape.insert(shape.begin() + d, static_cast<std::int64_t>(xs.size()));
  checked_numel(shape, "stack");
  return cat(us, d);
}

std::vector<Tensor> split(const Tensor& x, std::int64_t split_size, std::int64_t dim_in) {
  check_defined(x, "split");
  KILN_CHECK(x.dim() > 0, "split", "cannot split a 0-D tensor");
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "split");
  KILN_CHECK(split_size > 0 || (split_size == 0 && x.size(dim) == 0), "split", "split_size must be positive, got {}",
             split_size);
  std::int64_t n = x.size(dim);
  if (n == 0) return {x};
  std::vector<std::int64_t> sizes;
  for (std::int64_t s = 0; s < n; s += split_size) sizes.push_back(std::min(split_size, n - s));
  return split_views(x, dim, sizes);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t dim_in) {
  check_defined(x, "split");
  KILN_CHECK(x.dim() > 0, "split", "cannot split a 0-D tensor");
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "split");
  std::int64_t total = 0;
  for (auto s : sizes) {
    KILN_CHECK(s >= 0, "split", "split sizes must be >= 0, got {}", shape_str(sizes));
    total += s;
  }
  KILN_CHECK(total == x.size(dim), "split", "split sizes {} sum to {} but dim {} has size {}", shape_str(sizes), total,
             dim, x.size(dim));
  return split_views(x, dim, sizes);
}

std::vector<Tensor> chunk(const Tensor& x, std::int64_t chunks, std::int64_t dim) {
  check_defined(x, "chunk");
  KILN_CHECK(chunks > 0, "chunk", "number of chunks must be positive, got {}", chunks);
  KILN_CHECK(x.dim() > 0, "chunk", "cannot chunk a 0-D tensor");
  std::int64_t d = normalize_dim(dim, x.dim(), "chunk");
  std::int64_t size = (x.size(d) + chunks - 1) / chunks;
  return split(x, std::max<std::int64_t>(size, 1), d);
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  KILN_CHECK(g.dim() >= static_cast<std::int64_t>(shape.size()), "sum_to_shape", "cannot sum shape {} to {}",
             shape_str(g.shape()), shape_str(shape));
  std::int64_t lead = g.dim() - static_cast<std::int64_t>(shape.size());
  Dims dims;
  for (std::int64_t i = 0; i < g.dim(); ++i) {
    if (i < lead) {
      dims.push_back(i);
    } else if (shape[i - lead] == 1 && g.size(i) != 1) {
      dims.push_back(i);
    } else {
      KILN_CHECK(shape[i - lead] == g.size(i), "sum_to_shape", "cannot sum shape {} to {}", shape_str(g.shape()),
                 shape_str(shape));
    }
  }
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return reshape(r, shape);
}

}  // namespace kiln
