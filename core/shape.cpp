#include "shape.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <algorithm>

#include "error.hpp"

namespace kiln {

void throw_error(const char* op, const std::string& msg) { throw Error(fmt::format("[{}] {}", op, msg)); }

std::int64_t numel_of(const Shape& shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::int64_t checked_numel(const Shape& shape, const char* op) {
  std::int64_t n = 1, span = 1;  // span: the product with 0-size dims as 1 (bounds n and every stride)
  for (auto s : shape) {
    KILN_CHECK(s >= 0, op, "negative dimension {} in shape {}", s, shape_str(shape));
    KILN_CHECK(!__builtin_mul_overflow(span, std::max<std::int64_t>(s, 1), &span), op,
               "shape {} has too many elements (the count overflows a 64-bit integer)", shape_str(shape));
    n *= s;  // n <= span: cannot overflow
  }
  return n;
}

std::int64_t checked_nbytes(const Shape& shape, std::size_t itemsize, const char* op) {
  const std::int64_t n = checked_numel(shape, op);
  std::int64_t bytes = 0;
  KILN_CHECK(!__builtin_mul_overflow(n, static_cast<std::int64_t>(itemsize), &bytes), op,
             "shape {} has too many elements: {} elements of {} bytes overflow a 64-bit byte count", shape_str(shape),
             n, itemsize);
  return bytes;
}

Strides contiguous_strides(const Shape& shape) {
  Strides st(shape.size());
  std::int64_t acc = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<std::int64_t>(shape[i], 1);
  }
  return st;
}

std::string shape_str(const Shape& shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  return fmt::format("({})", fmt::join(shape, ", "));
}

std::int64_t normalize_dim(std::int64_t dim, std::int64_t ndim, const char* op) {
  std::int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  KILN_CHECK(dim >= lo && dim <= hi, op, "dim {} out of range for a {}-D tensor (expected {} to {})", dim, ndim, lo,
             hi);
  return dim < 0 ? dim + std::max<std::int64_t>(ndim, 1) : dim;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    std::int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    KILN_CHECK(da == db || da == 1 || db == 1, op, "shapes {} and {} cannot be broadcast: {} != {} at dim {}",
               shape_str(a), shape_str(b), da, db, i);
    out[i] = da == 1 ? db : da;
  }
  checked_numel(out, op);
  return out;
}

bool broadcastable(const Shape& from, const Shape& to) {
  if (from.size() > to.size()) return false;
  const std::size_t off = to.size() - from.size();
  for (std::size_t i = 0; i < from.size(); ++i)
    if (from[i] != to[off + i] && from[i] != 1) return false;
  return true;
}

Strides broadcast_strides(const Shape& shape, const Strides& strides, const Shape& target, const char* op) {
  KILN_CHECK(shape.size() <= target.size(), op, "cannot broadcast shape {} to {}", shape_str(shape), shape_str(target));
  std::size_t off = target.size() - shape.size();
  Strides out(target.size(), 0);
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == target[off + i]) {
      out[off + i] = strides[i];
    } else {
      KILN_CHECK(shape[i] == 1, op, "cannot broadcast shape {} to {}", shape_str(shape), shape_str(target));
    }
  }
  return out;
}

std::vector<std::int64_t> normalize_dims(const std::vector<std::int64_t>& dims, std::int64_t ndim, const char* op) {
  std::vector<std::int64_t> out;
  if (dims.empty()) {
    for (std::int64_t i = 0; i < ndim; ++i) out.push_back(i);
    return out;
  }
  for (auto d : dims) out.push_back(normalize_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  auto it = std::adjacent_find(out.begin(), out.end());
  KILN_CHECK(it == out.end(), op, "dim {} appears more than once in dims {}", *it, shape_str(dims));
  if (ndim == 0) out.clear();
  return out;
}

ReduceDims split_reduce_dims(const Shape& shape, const Strides& strides, const std::vector<std::int64_t>& dims) {
  ReduceDims r;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    const bool red = std::find(dims.begin(), dims.end(), static_cast<std::int64_t>(d)) != dims.end();
    (red ? r.red_shape : r.kept_shape).push_back(shape[d]);
    (red ? r.red_strides : r.kept_strides).push_back(strides[d]);
  }
  return r;
}

}  // namespace kiln
