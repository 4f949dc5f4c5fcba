// Index ops. Every index tensor is range-checked before a kernel sees it.
#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

void check_index_tensor(const Tensor& index, const Tensor& x, const char* op) {
  check_defined(index, op, "index");
  KILN_CHECK(index.dtype() == kInt64, op, "index must be an int64 tensor, got {}", dtype_name(index.dtype()));
  check_same_device(op, x, index);
}

// Every index value must lie in [0, size).
void check_index_range(const Tensor& index, std::int64_t size, const char* op, std::int64_t dim) {
  if (index.numel() == 0) return;
  Backend& be = backend(index, op);
  Dims all = normalize_dims({}, index.dim(), op);
  Shape ks(index.dim(), 1);
  Tensor lo = Tensor::empty(ks, kInt64, index.device()), hi = Tensor::empty(ks, kInt64, index.device());
  be.reduce(ReduceOp::Min, index, all, lo);
  be.reduce(ReduceOp::Max, index, all, hi);
  std::int64_t mn = lo.item<std::int64_t>(), mx = hi.item<std::int64_t>();
  KILN_CHECK(mn >= 0 && mx < size, op, "index {} is out of range for dim {} of size {}", mn < 0 ? mn : mx, dim, size);
}

}  // namespace

Tensor index_select(const Tensor& x, std::int64_t dim_in, const Tensor& index) {
  check_defined(x, "index_select");
  check_index_tensor(index, x, "index_select");
  KILN_CHECK(index.dim() <= 1, "index_select", "index must be 0-D or 1-D, got shape {}", shape_str(index.shape()));
  KILN_CHECK(x.dim() > 0 || index.numel() == 1, "index_select",
             "index for a 0-D input must hold exactly one value, got {}", index.numel());
  Tensor xv = x.dim() == 0 ? reshape(x.detach(), {1}) : x;
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "index_select");
  check_index_range(index, xv.size(dim), "index_select", dim);
  Shape shape = xv.shape();
  shape[dim] = index.numel();
  checked_numel(shape, "index_select");
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  backend(x, "index_select").index_select(xv, dim, contiguous_raw(index), out);
  if (x.dim() == 0) out = Tensor::make_view(out, {}, {}, 0);
  Shape xs = x.shape();
  if (auto node = record("index_select", {x}, {out}, [dim, xs](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor idx = n.saved(0);
        Tensor z = zeros(xs, TensorOptions(g[0].dtype()).device(g[0].device()));
        if (xs.empty()) return std::vector<Tensor>{reshape(g[0], xs)};
        return std::vector<Tensor>{index_add(z, dim, reshape(idx, {idx.numel()}), g[0])};
      }))
    node->save(index);
  return out;
}

Tensor index_add(const Tensor& x, std::int64_t dim_in, const Tensor& index, const Tensor& src) {
  check_defined(x, "index_add");
  check_defined(src, "index_add", "source");
  check_index_tensor(index, x, "index_add");
  check_same_device("index_add", x, src);
  KILN_CHECK(x.dim() > 0, "index_add", "input must have at least one dim");
  KILN_CHECK(index.dim() <= 1, "index_add", "index must be 0-D or 1-D, got shape {}", shape_str(index.shape()));
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "index_add");
  Shape expect = x.shape();
  expect[dim] = index.numel();
  KILN_CHECK(src.shape() == expect, "index_add",
             "source shape {} must be {} (input shape {} with dim {} = index length {})", shape_str(src.shape()),
             shape_str(expect), shape_str(x.shape()), dim, index.numel());
  check_index_range(index, x.size(dim), "index_add", dim);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Backend& be = backend(x, "index_add");
  be.copy(out, x);
  be.index_add(out, dim, contiguous_raw(index), cast_raw(src, x.dtype()));
  if (auto node = record("index_add", {x, src}, {out}, [dim](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor idx = n.saved(0);
        Tensor gs = n.next_edges[1].valid() ? index_select(g[0], dim, reshape(idx, {idx.numel()})) : Tensor();
        return std::vector<Tensor>{g[0], gs};
      }))
    node->save(index);
  return out;
}

Tensor gather(const Tensor& x, std::int64_t dim_in, const Tensor& index) {
  check_defined(x, "gather");
  check_index_tensor(index, x, "gather");
  KILN_CHECK(index.dim() == x.dim(), "gather", "index has {} dims but input has {} (shapes {} and {})", index.dim(),
             x.dim(), shape_str(index.shape()), shape_str(x.shape()));
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "gather");
  for (std::int64_t d = 0; d < x.dim(); ++d)
    KILN_CHECK(d == dim || index.size(d) <= x.size(d), "gather",
               "index shape {} is larger than input shape {} at dim {}", shape_str(index.shape()), shape_str(x.shape()),
               d);
  if (x.dim() > 0) check_index_range(index, x.size(dim), "gather", dim);
  else check_index_range(index, 1, "gather", dim);
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  if (x.dim() == 0) backend(x, "gather").copy(out, x);
  else backend(x, "gather").gather(x, dim, index, out);
  Shape xs = x.shape();
  if (auto node = record("gather", {x}, {out}, [dim, xs](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor idx = n.saved(0);
        if (xs.empty()) return std::vector<Tensor>{g[0]};
        return std::vector<Tensor>{
            scatter_add(zeros(xs, TensorOptions(g[0].dtype()).device(g[0].device())), dim, idx, g[0])};
      }))
    node->save(index);
  return out;
}

Tensor scatter_add(const Tensor& x, std::int64_t dim_in, const Tensor& index, const Tensor& src) {
  check_defined(x, "scatter_add");
  check_defined(src, "scatter_add", "source");
  check_index_tensor(index, x, "scatter_add");
  check_same_device("scatter_add", x, src);
  KILN_CHECK(index.dim() == x.dim(), "scatter_add", "index has {} dims but input has {} (shapes {} and {})",
             index.dim(), x.dim(), shape_str(index.shape()), shape_str(x.shape()));
  KILN_CHECK(src.shape() == index.shape(), "scatter_add", "source shape {} must equal index shape {}",
             shape_str(src.shape()), shape_str(index.shape()));
  std::int64_t dim = normalize_dim(dim_in, x.dim(), "scatter_add");
  for (std::int64_t d = 0; d < x.dim(); ++d)
    KILN_CHECK(d == dim || index.size(d) <= x.size(d), "scatter_add",
               "index shape {} is larger than input shape {} at dim {}", shape_str(index.shape()), shape_str(x.shape()),
               d);
  check_index_range(index, x.dim() ? x.size(dim) : 1, "scatter_add", dim);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Backend& be = backend(x, "scatter_add");
  be.copy(out, x);
  if (x.dim() == 0) {
    if (index.numel()) be.binary(BinaryOp::Add, out, cast_raw(src, x.dtype()), out);
  } else {
    be.scatter_add(out, dim, index, cast_raw(src, x.dtype()));
  }
  if (auto node = record("scatter_add", {x, src}, {out}, [dim](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor idx = n.saved(0);
        Tensor gs = n.next_edges[1].valid() ? (g[0].dim() ? gather(g[0], dim, idx) : g[0]) : Tensor();
        return std::vector<Tensor>{g[0], gs};
      }))
    node->save(index);
  return out;
}

Tensor embedding(const Tensor& indices, const Tensor& weight) {
  check_defined(weight, "embedding", "weight");
  KILN_CHECK(weight.dim() == 2, "embedding", "weight must be 2-D (num_embeddings, dim), got shape {}",
             shape_str(weight.shape()));
  check_index_tensor(indices, weight, "embedding");
  check_index_range(indices, weight.size(0), "embedding", 0);  // errors name embedding, not index_select
  Shape out_shape = indices.shape();
  out_shape.push_back(weight.size(1));
  Tensor flat = index_select(weight, 0, reshape(indices, {indices.numel()}));
  return reshape(flat, out_shape);
}

}  // namespace kiln
