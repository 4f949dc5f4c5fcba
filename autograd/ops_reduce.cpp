// Reductions. Outputs are computed in keepdim layout and viewed down.
#include <cmath>

#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

Shape keep_shape(const Shape& s, const Dims& dims) {
  Shape k = s;
  for (auto d : dims) k[d] = 1;
  return k;
}

Shape drop_shape(const Shape& s, const Dims& dims) {
  Shape out;
  std::size_t j = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (j < dims.size() && dims[j] == static_cast<std::int64_t>(i)) {
      ++j;
      continue;
    }
    out.push_back(s[i]);
  }
  return out;
}

Tensor reduce_raw(ReduceOp op, const Tensor& x, const Dims& dims, bool keepdim, DType dtype, const char* name) {
  Tensor xin = cast_raw(x, dtype);
  Shape ks = keep_shape(x.shape(), dims);
  Tensor out = Tensor::empty(ks, dtype, x.device());
  backend(x, name).reduce(op, xin, dims, out);
  if (!keepdim)
    out = Tensor::make_view(out, drop_shape(x.shape(), dims), contiguous_strides(drop_shape(x.shape(), dims)), 0);
  return out;
}

// g of the reduced shape -> broadcast back to x's shape (differentiable).
Tensor expand_back(const Tensor& g, const Shape& xshape, const Dims& dims) {
  return expand(reshape(g, keep_shape(xshape, dims)), xshape);
}

void check_nonempty_dims(const Tensor& x, const Dims& dims, const char* op) {
  for (auto d : dims)
    KILN_CHECK(x.size(d) != 0, op, "cannot reduce over dim {} of size 0 (input shape {}): the result has no identity",
               d, shape_str(x.shape()));
  if (x.dim() == 0 || dims.empty())
    KILN_CHECK(x.numel() != 0, op, "cannot reduce an empty tensor of shape {}", shape_str(x.shape()));
}

Tensor minmax_all(ReduceOp op, const Tensor& x, const Dims& dims_in, bool keepdim, const char* name) {
  check_defined(x, name);
  Dims dims = normalize_dims(dims_in, x.dim(), name);
  check_nonempty_dims(x, dims, name);
  Tensor out = reduce_raw(op, x, dims, keepdim, x.dtype(), name);
  Shape xs = x.shape();
  if (auto node = record(name, {x}, {out}, [dims, xs, keepdim](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor x = n.saved(0), y = n.saved(1);
        Tensor yk = keepdim ? y : reshape(y, keep_shape(xs, dims));
        Tensor mask = to(eq(x, yk), g[0].dtype());
        Tensor count = sum(mask, dims, true);
        return std::vector<Tensor>{div(mul(expand_back(g[0], xs, dims), mask), count)};
      })) {
    node->save(x);
    node->save(out, true);
  }
  return out;
}

ValuesIndices arg_reduce_op(ReduceOp op, const Tensor& x, std::int64_t dim_in, bool keepdim, const char* name) {
  check_defined(x, name);
  std::int64_t dim = normalize_dim(dim_in, x.dim(), name);
  Dims dims = x.dim() ? Dims{dim} : Dims{};
  check_nonempty_dims(x, dims, name);
  Shape ks = keep_shape(x.shape(), dims);
  Tensor values = Tensor::empty(ks, x.dtype(), x.device());
  Tensor indices = Tensor::empty(ks, kInt64, x.device());
  backend(x, name).arg_reduce(op, x, dim, values, indices);
  if (!keepdim) {
    Shape ds = drop_shape(x.shape(), dims);
    values = Tensor::make_view(values, ds, contiguous_strides(ds), 0);
    indices = Tensor::make_view(indices, ds, contiguous_strides(ds), 0);
  }
  Shape xs = x.shape();
  if (auto node = record(name, {x}, {values}, [dim, xs, ks, keepdim](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor idx = n.saved(0);
        Tensor gk = keepdim ? g[0] : reshape(g[0], ks);
        Tensor ik = keepdim ? idx : reshape(idx, ks);
        Tensor z = zeros(xs, TensorOptions(g[0].dtype()).device(g[0].device()));
        if (xs.empty()) return std::vector<Tensor>{reshape(gk, xs)};
        return std::vector<Tensor>{scatter_add(z, dim, ik, gk)};
      }))
    node->save(indices);
  return {values, indices};
}

}  // namespace

Tensor sum(const Tensor& x, const Dims& dims_in, bool keepdim) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return sum(xc, dims_in, keepdim);
  }
  check_defined(x, "sum");
  Dims dims = normalize_dims(dims_in, x.dim(), "sum");
  DType dt = x.is_floating_point() ? x.dtype() : kInt64;
  Tensor out = reduce_raw(ReduceOp::Sum, x, dims, keepdim, dt, "sum");
  Shape xs = x.shape();
  record("sum", {x}, {out}, [dims, xs](FunctionNode&, std::vector<Tensor>& g) {
    return std::vector<Tensor>{expand_back(g[0], xs, dims)};
  });
  return out;
}

Tensor mean(const Tensor& x, const Dims& dims_in, bool keepdim) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return mean(xc, dims_in, keepdim);
  }
  check_defined(x, "mean");
  check_floating(x, "mean");
  Dims dims = normalize_dims(dims_in, x.dim(), "mean");
  Tensor out = reduce_raw(ReduceOp::Mean, x, dims, keepdim, x.dtype(), "mean");
  Shape xs = x.shape();
  double count = 1;
  for (auto d : dims) count *= static_cast<double>(xs[d]);
  record("mean", {x}, {out}, [dims, xs, count](FunctionNode&, std::vector<Tensor>& g) {
    return std::vector<Tensor>{div(expand_back(g[0], xs, dims), scalar_on(count, g[0].dtype(), g[0].device()))};
  });
  return out;
}

Tensor var(const Tensor& x, const Dims& dims_in, double correction, bool keepdim) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return var(xc, dims_in, correction, keepdim);
  }
  check_defined(x, "var");
  check_floating(x, "var");
  // bfloat16/float16: the composite below would round every intermediate; it runs in float32.
  if (is_reduced_float(x.dtype())) return to(var(to(x, kFloat32), dims_in, correction, keepdim), x.dtype());
  Dims dims = normalize_dims(dims_in, x.dim(), "var");
  double n = 1;
  for (auto d : dims) n *= static_cast<double>(x.size(d));
  Tensor d = sub(x, mean(x, dims, true));
  return div(sum(mul(d, d), dims, keepdim), scalar_on(std::max(0.0, n - correction), x.dtype(), x.device()));
}

Tensor std(const Tensor& x, const Dims& dims, double correction, bool keepdim) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return std(xc, dims, correction, keepdim);
  }
  check_defined(x, "std");
  check_floating(x, "std");
  if (is_reduced_float(x.dtype())) return to(std(to(x, kFloat32), dims, correction, keepdim), x.dtype());
  Tensor v = var(x, dims, correction, keepdim);
  Tensor y;
  {
    NoGradGuard off;
    y = sqrt(v);
  }
  // d sqrt(v) = g / (2 y), taken as 0 where y == 0 (constant inputs), as torch does.
  if (auto node = record("std", {v}, {y}, [](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor y = n.saved(0);
        Tensor zero = scalar_on(0, y.dtype(), y.device());
        Tensor gv = div(g[0], mul(y, scalar_on(2, y.dtype(), y.device())));
        return std::vector<Tensor>{where(eq(y, zero), zero, gv)};
      }))
    node->save(y, true);
  return y;
}

Tensor amax(const Tensor& x, const Dims& dims, bool keepdim) {
  return minmax_all(ReduceOp::Max, x, dims, keepdim, "amax");
}
Tensor amin(const Tensor& x, const Dims& dims, bool keepdim) {
  return minmax_all(ReduceOp::Min, x, dims, keepdim, "amin");
}
Tensor max(const Tensor& x) { return minmax_all(ReduceOp::Max, x, {}, false, "max"); }
Tensor min(const Tensor& x) { return minmax_all(ReduceOp::Min, x, {}, false, "min"); }
ValuesIndices max(const Tensor& x, std::int64_t dim, bool keepdim) {
  return arg_reduce_op(ReduceOp::Max, x, dim, keepdim, "max");
}
ValuesIndices min(const Tensor& x, std::int64_t dim, bool keepdim) {
  return arg_reduce_op(ReduceOp::Min, x, dim, keepdim, "min");
}

Tensor argmax(const Tensor& x, std::optional<std::int64_t> dim, bool keepdim) {
  check_defined(x, "argmax");
  if (!dim) {
    Tensor r = arg_reduce_op(ReduceOp::Max, reshape(x.detach(), {x.numel()}), 0, false, "argmax").indices;
    return keepdim ? reshape(r, Shape(x.dim(), 1)) : r;
  }
  return arg_reduce_op(ReduceOp::Max, x.detach(), *dim, keepdim, "argmax").indices;
}
Tensor argmin(const Tensor& x, std::optional<std::int64_t> dim, bool keepdim) {
  check_defined(x, "argmin");
  if (!dim) {
    Tensor r = arg_reduce_op(ReduceOp::Min, reshape(x.detach(), {x.numel()}), 0, false, "argmin").indices;
    return keepdim ? reshape(r, Shape(x.dim(), 1)) : r;
  }
  return arg_reduce_op(ReduceOp::Min, x.detach(), *dim, keepdim, "argmin").indices;
}

Tensor logsumexp(const Tensor& x, const Dims& dims_in, bool keepdim) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return logsumexp(xc, dims_in, keepdim);
  }
  check_defined(x, "logsumexp");
  // As torch.logsumexp: bool/int64 inputs give float32.
  if (!x.is_floating_point()) return logsumexp(to(x, kFloat32), dims_in, keepdim);
  if (is_reduced_float(x.dtype())) return to(logsumexp(to(x, kFloat32), dims_in, keepdim), x.dtype());
  Dims dims = normalize_dims(dims_in, x.dim(), "logsumexp");
  for (auto d : dims)
    if (x.size(d) == 0) {
      // log(0) = -inf; adding the (zero) empty sum keeps the result connected to x for backward.
      Shape s = keepdim ? keep_shape(x.shape(), dims) : drop_shape(x.shape(), dims);
      return add(full(s, -INFINITY, TensorOptions(x.dtype()).device(x.device())), sum(x, dims, keepdim));
    }
  // Shift by the (constant) max; rows that are all -inf keep a shift of 0.
  Tensor m = amax(x.detach(), dims, true);
  m = where(isfinite(m), m, zeros({}, TensorOptions(x.dtype()).device(x.device())));
  Tensor r = add(log(sum(exp(sub(x, m)), dims, true)), m);
  return keepdim ? r : reshape(r, drop_shape(x.shape(), dims));
}

Tensor any(const Tensor& x, const Dims& dims_in, bool keepdim) {
  check_defined(x, "any");
  Dims dims = normalize_dims(dims_in, x.dim(), "any");
  Tensor b = x.dtype() == kBool ? x : ne(x.detach(), zeros({}, TensorOptions(x.dtype()).device(x.device())));
  return reduce_raw(ReduceOp::Max, b, dims, keepdim, kBool, "any");
}
Tensor all(const Tensor& x, const Dims& dims_in, bool keepdim) {
  check_defined(x, "all");
  Dims dims = normalize_dims(dims_in, x.dim(), "all");
  Tensor b = x.dtype() == kBool ? x : ne(x.detach(), zeros({}, TensorOptions(x.dtype()).device(x.device())));
  return reduce_raw(ReduceOp::Min, b, dims, keepdim, kBool, "all");
}

}  // namespace kiln
