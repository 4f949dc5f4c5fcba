// Python-style indexing (core/indexing.hpp). Integers, slices and None become select / slice /
// unsqueeze views; tensor indices (bool masks as their nonzero positions) become one linear index
// over the merged indexed dims and one index_select, so the gradient is index_select's (index_add)
// and no kernel is new. index_put_ writes through the same geometry and records its own node.
#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "../core/indexing.hpp"
#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

using Kind = TensorIndex::Kind;

// A tensor index over dim `dim` of the basic-indexed view; `src_dim` is the input's dim it
// indexes (for messages; -1 for a dim that a bool index added).
struct AdvIndex {
  std::int64_t dim;
  std::int64_t src_dim;
  Tensor index;  // int64, on the input's device
};

struct Parsed {
  Tensor view;                // the input after the basic indices: a view of it
  std::vector<AdvIndex> adv;  // in dim order
};

// How many of the input's dims an index uses up.
std::int64_t dims_used(const TensorIndex& ix) {
  switch (ix.kind()) {
    case Kind::Integer:
    case Kind::Slice: return 1;
    case Kind::Tensor: return ix.tensor().dtype() == kBool ? ix.tensor().dim() : 1;
    default: return 0;  // None, Ellipsis and a bool add or skip dims
  }
}

// The positions of a bool mask's true elements, one int64 index tensor per mask dim (the mask
// is read on the host: the result's size depends on it).
std::vector<Tensor> mask_positions(const Tensor& mask, Device device) {
  std::vector<std::int64_t> m = mask.to_vector<std::int64_t>();
  const Shape& s = mask.shape();
  const Strides cs = contiguous_strides(s);
  std::vector<std::vector<std::int64_t>> pos(s.size());
  for (std::int64_t f = 0; f < static_cast<std::int64_t>(m.size()); ++f) {
    if (!m[static_cast<std::size_t>(f)]) continue;
    for (std::size_t j = 0; j < s.size(); ++j) pos[j].push_back(f / cs[j] % s[j]);
  }
  std::vector<Tensor> out;
  for (auto& p : pos)
    out.push_back(tensor(p, {static_cast<std::int64_t>(p.size())}, TensorOptions(kInt64).device(device)));
  return out;
}

void check_indices(const Tensor& x, const std::vector<TensorIndex>& indices, const char* op) {
  std::int64_t used = 0, ellipses = 0;
  for (const auto& ix : indices) {
    if (ix.kind() == Kind::Tensor) {
      const Tensor& t = ix.tensor();
      KILN_CHECK(t.defined(), op, "an index tensor is undefined");
      KILN_CHECK(t.dtype() == kInt64 || t.dtype() == kBool, op, "tensors used as indices must be int64 or bool, got {}",
                 dtype_name(t.dtype()));
    }
    used += dims_used(ix);
    ellipses += ix.kind() == Kind::Ellipsis;
  }
  KILN_CHECK(ellipses <= 1, op, "an index may hold one Ellipsis, got {}", ellipses);
  KILN_CHECK(used <= x.dim(), op, "too many indices for a tensor of shape {}: the indices cover {} dims, it has {}",
             shape_str(x.shape()), used, x.dim());
}

// Applies the basic indices as views and collects the tensor indices.
Parsed parse(const Tensor& x, const std::vector<TensorIndex>& indices, const char* op) {
  check_defined(x, op);
  check_indices(x, indices, op);
  std::int64_t used = 0;
  for (const auto& ix : indices) used += dims_used(ix);
  Parsed p;
  Tensor cur = x;
  std::int64_t d = 0, src = 0;  // the next dim of `cur` and of x
  auto add_bool = [&](bool b) {
    cur = unsqueeze(cur, d);
    Tensor idx =
        b ? zeros({1}, TensorOptions(kInt64).device(x.device())) : empty({0}, TensorOptions(kInt64).device(x.device()));
    p.adv.push_back({d++, -1, idx});
  };
  for (const auto& ix : indices) {
    switch (ix.kind()) {
      case Kind::None: cur = unsqueeze(cur, d++); break;
      case Kind::Ellipsis:
        d += x.dim() - used;
        src += x.dim() - used;
        break;
      case Kind::Integer: {
        const std::int64_t n = cur.size(d), i = ix.integer();
        KILN_CHECK(i >= -n && i < n, op, "index {} is out of range for dim {} of size {}", i, src, n);
        cur = select(cur, d, i);
        ++src;
        break;
      }
      case Kind::Slice: {
        const auto& s = ix.slice();
        std::int64_t step = s.step().value_or(1);
        KILN_CHECK(step > 0, op, "slice step must be positive, got {} (PyTorch has no negative steps either)", step);
        const std::int64_t n = cur.size(d);
        step = std::min(step, std::max<std::int64_t>(n, 1));  // a longer step takes the first element only
        cur = slice(cur, d++, s.start().value_or(0), s.stop().value_or(std::numeric_limits<std::int64_t>::max()), step);
        ++src;
        break;
      }
      case Kind::Boolean: add_bool(ix.boolean()); break;
      case Kind::Tensor: {
        const Tensor& t = ix.tensor();
        if (t.dtype() == kBool && t.dim() == 0) {
          add_bool(t.item<bool>());
        } else if (t.dtype() == kBool) {
          for (std::int64_t j = 0; j < t.dim(); ++j)
            KILN_CHECK(t.size(j) == cur.size(d + j), op,
                       "the bool mask of shape {} does not match the indexed shape {} at dim {}: {} != {}",
                       shape_str(t.shape()), shape_str(x.shape()), src + j, t.size(j), cur.size(d + j));
          for (Tensor& idx : mask_positions(t, x.device())) p.adv.push_back({d++, src++, idx});
        } else {
          p.adv.push_back({d++, src++, t.device() == x.device() ? t : t.to(x.device())});
        }
        break;
      }
    }
  }
  p.view = cur;
  return p;
}

// The geometry of an advanced index: the view with its indexed dims next to each other at `at`
// (where they were when adjacent, else first, as PyTorch places them), merged into one dim.
struct Gather {
  Tensor moved;       // the view, permuted when the indexed dims were apart
  std::int64_t at;    // where the indexed dims start in `moved`
  Shape pre, post;    // moved's dims before and after them
  Shape index_shape;  // the broadcast shape of the index tensors
  Tensor linear;      // 1-D: the row-major position of each indexed element in the merged dim
  std::int64_t merged = 1;

  Shape merged_shape() const { return cat(pre, {merged}, post); }
  Shape result_shape() const { return cat(pre, index_shape, post); }
  Shape flat_result_shape() const { return cat(pre, {numel_of(index_shape)}, post); }
  static Shape cat(const Shape& a, const Shape& b, const Shape& c) {
    Shape s = a;
    s.insert(s.end(), b.begin(), b.end());
    s.insert(s.end(), c.begin(), c.end());
    return s;
  }
};

Gather gather_geometry(const Parsed& p, const char* op) {
  Gather g;
  const std::size_t k = p.adv.size();
  const bool adjacent = p.adv.back().dim - p.adv.front().dim == static_cast<std::int64_t>(k) - 1;
  for (const auto& a : p.adv) {
    const Shape& s = a.index.shape();
    const Shape& b = g.index_shape;
    bool ok = true;
    for (std::size_t i = 1; i <= std::min(s.size(), b.size()); ++i) {
      const std::int64_t x = s[s.size() - i], y = b[b.size() - i];
      ok = ok && (x == y || x == 1 || y == 1);
    }
    KILN_CHECK(ok, op, "the index tensors cannot be broadcast together: shape {} does not fit {}", shape_str(s),
               shape_str(b));
    g.index_shape = broadcast_shapes(b, s, op);
  }
  Tensor linear;
  for (std::size_t i = k; i-- > 0;) {  // the last indexed dim varies fastest
    const AdvIndex& a = p.adv[i];
    const std::int64_t n = p.view.size(a.dim);
    Tensor idx = a.index;
    if (idx.numel() > 0) {
      const std::int64_t lo = kiln::min(idx).item<std::int64_t>(), hi = kiln::max(idx).item<std::int64_t>();
      KILN_CHECK(lo >= -n && hi < n, op, "index {} is out of range for dim {} of size {}", lo < -n ? lo : hi, a.src_dim,
                 n);
      if (lo < 0) idx = where(idx < 0, idx + n, idx);
    }
    Tensor term = g.merged == 1 ? idx : idx * g.merged;
    linear = linear.defined() ? term + linear : term;
    g.merged *= n;
  }
  g.linear = reshape(expand(linear, g.index_shape), {numel_of(g.index_shape)});
  Dims perm;
  if (!adjacent)
    for (const auto& a : p.adv) perm.push_back(a.dim);
  for (std::int64_t d = 0; d < p.view.dim(); ++d)
    if (!adjacent && std::none_of(p.adv.begin(), p.adv.end(), [d](const AdvIndex& a) { return a.dim == d; }))
      perm.push_back(d);
  g.moved = adjacent ? p.view : permute(p.view, perm);
  g.at = adjacent ? p.adv.front().dim : 0;
  const Shape& ms = g.moved.shape();
  g.pre.assign(ms.begin(), ms.begin() + g.at);
  g.post.assign(ms.begin() + g.at + static_cast<std::int64_t>(k), ms.end());
  return g;
}

Tensor index_impl(const Tensor& x, const std::vector<TensorIndex>& indices) {
  Parsed p = parse(x, indices, "index");
  if (p.adv.empty()) return p.view;
  Gather g = gather_geometry(p, "index");
  Tensor out = index_select(reshape(g.moved, g.merged_shape()), g.at, g.linear);
  return reshape(out, g.result_shape());
}

// `value` as it broadcasts into `target`: leading size-1 dims beyond target's dims dropped, as
// PyTorch does.
Tensor fit_value(const Tensor& value, const Shape& target, const char* op) {
  Shape s = value.shape();
  while (s.size() > target.size() && s.front() == 1) s.erase(s.begin());
  bool ok = s.size() <= target.size();
  for (std::size_t i = 0; ok && i < s.size(); ++i) {
    const std::int64_t t = target[target.size() - s.size() + i];
    ok = s[i] == t || s[i] == 1;
  }
  KILN_CHECK(ok, op, "a value of shape {} cannot be broadcast to the indexed shape {}", shape_str(value.shape()),
             shape_str(target));
  return s == value.shape() ? value : reshape(value, s);
}

// Writes `value` (the tensor's dtype and device) into p's elements; no autograd.
void write_indexed(const Parsed& p, const Tensor& value, bool accumulate, const char* op) {
  if (p.adv.empty()) {
    Tensor view = p.view, v = fit_value(value, p.view.shape(), op);
    if (accumulate) view.add_(v);
    else view.copy_(v);
    return;
  }
  Gather g = gather_geometry(p, op);
  Tensor v = reshape(expand(fit_value(value, g.result_shape(), op), g.result_shape()), g.flat_result_shape());
  Tensor merged = reshape(g.moved, g.merged_shape());  // a view when the strides allow, else a copy
  Tensor out;
  if (accumulate) {
    out = index_add(merged, g.at, g.linear, v);
  } else {
    // Where an element is indexed more than once the last write wins, as in a sequential loop.
    std::vector<std::int64_t> lin = g.linear.to_vector<std::int64_t>();
    std::vector<std::int64_t> source(static_cast<std::size_t>(g.merged), 0);
    std::vector<bool> hit(static_cast<std::size_t>(g.merged), false);
    for (std::size_t j = 0; j < lin.size(); ++j) {
      source[static_cast<std::size_t>(lin[j])] = static_cast<std::int64_t>(j);
      hit[static_cast<std::size_t>(lin[j])] = true;
    }
    const auto opts = TensorOptions(kInt64).device(value.device());
    Shape hs(g.pre.size(), 1);
    hs.push_back(g.merged);
    hs.insert(hs.end(), g.post.size(), 1);
    Tensor hit_t = tensor(hit, hs, TensorOptions(kBool).device(value.device()));
    Tensor picked = lin.empty() ? merged : index_select(v, g.at, tensor(source, {g.merged}, opts));
    out = where(hit_t, picked, merged);
  }
  g.moved.copy_(reshape(out, g.moved.shape()));
}

// The indices with their tensors copied, for a backward that must not see later in-place edits.
std::vector<TensorIndex> snapshot(const std::vector<TensorIndex>& indices) {
  std::vector<TensorIndex> out;
  for (const auto& ix : indices)
    out.push_back(ix.kind() == Kind::Tensor ? TensorIndex(ix.tensor().detach().clone()) : ix);
  return out;
}

Tensor& index_put_impl(Tensor& self, const std::vector<TensorIndex>& indices, const Tensor& value_in, bool accumulate) {
  const char* op = "index_put_";
  check_defined(self, op);
  check_defined(value_in, op, "value");
  const bool grad_mode = autograd::grad_enabled();
  KILN_CHECK(!(grad_mode && self.requires_grad() && self.is_leaf()), op,
             "in-place operation on a tensor of shape {} that requires grad; use the out-of-place op, or "
             "wrap the update in kiln::NoGradGuard (as optimizers do)",
             shape_str(self.shape()));
  for (std::size_t d = 0; d < self.shape().size(); ++d)  // as copy_ and the other in-place ops refuse
    KILN_CHECK(self.strides()[d] != 0 || self.shape()[d] <= 1, op,
               "the in-place target of shape {} and strides {} has several elements at one memory location "
               "(a broadcast view); clone() it first",
               shape_str(self.shape()), shape_str(self.strides()));
  Tensor value = value_in;
  if (value.device() != self.device()) {
    KILN_CHECK(value.dim() == 0 && value.device().is_cpu(), op, "the value is on {} but the tensor is on {}",
               value.device().str(), self.device().str());
    value = value.to(self.device());
  }
  value = value.to(self.dtype());
  const bool track = grad_mode && self.is_floating_point() && (self.requires_grad() || value.requires_grad());
  // The graph sees this tensor change, but kiln does not track views: a view sharing the storage
  // would change with a history that does not know (silently wrong gradients). A storage shared
  // only with a copy saved for backward would fail backward's version check anyway, so refusing
  // every sharer costs nothing that could have worked, and says so now rather than in backward.
  KILN_CHECK(!track || self.storage().use_count() == 1, op,
             "cannot record this in-place write for autograd: the storage is shared with {} other tensor(s) "
             "(views, detach()ed aliases, accessors, or a tensor saved for backward), and kiln does not track "
             "views, so their autograd history would miss the write; use kiln::index_put (out of place) or "
             "clone() first",
             self.storage().use_count() - 1);
  {
    NoGradGuard no_grad;
    write_indexed(parse(self, indices, op), value.detach(), accumulate, op);
  }
  if (track) {
    std::vector<TensorIndex> saved = snapshot(indices);
    Shape vshape = value.shape();
    record(op, {self, value}, {self}, [saved, vshape, accumulate](FunctionNode& n, std::vector<Tensor>& g) {
      Tensor gself, gvalue;
      if (n.next_edges[0].valid())
        gself =
            accumulate ? g[0] : index_put(g[0], saved, zeros({}, TensorOptions(g[0].dtype()).device(g[0].device())));
      if (n.next_edges[1].valid()) {
        Tensor gi = index_impl(g[0], saved);
        Shape s = vshape;  // value's shape without the leading 1s that fit_value dropped
        while (s.size() > gi.shape().size() && s.front() == 1) s.erase(s.begin());
        gvalue = reshape(sum_to_shape(gi, s), vshape);
      }
      return std::vector<Tensor>{gself, gvalue};
    });
  }
  return self;
}

}  // namespace

Tensor index_put(const Tensor& x, const std::vector<TensorIndex>& indices, const Tensor& value, bool accumulate) {
  check_defined(x, "index_put");
  Tensor y = clone(x);
  y.index_put_(indices, value, accumulate);
  return y;
}

Tensor Tensor::index(std::initializer_list<TensorIndex> indices) const {
  return index_impl(*this, std::vector<TensorIndex>(indices));
}
Tensor Tensor::index(const std::vector<TensorIndex>& indices) const { return index_impl(*this, indices); }

Tensor& Tensor::index_put_(std::initializer_list<TensorIndex> indices, const Tensor& value, bool accumulate) {
  return index_put_impl(*this, std::vector<TensorIndex>(indices), value, accumulate);
}
Tensor& Tensor::index_put_(const std::vector<TensorIndex>& indices, const Tensor& value, bool accumulate) {
  return index_put_impl(*this, indices, value, accumulate);
}
Tensor& Tensor::index_put_(std::initializer_list<TensorIndex> indices, const Scalar& value, bool accumulate) {
  return index_put_(std::vector<TensorIndex>(indices), value, accumulate);
}
Tensor& Tensor::index_put_(const std::vector<TensorIndex>& indices, const Scalar& value, bool accumulate) {
  check_defined(*this, "index_put_");
  return index_put_impl(*this, indices, scalar_on(value, dtype(), device()), accumulate);
}

}  // namespace kiln
