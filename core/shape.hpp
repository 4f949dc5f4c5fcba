#pragma once
/// Shapes and strides (in elements), row-major. Helpers shared by every op.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

using Shape = std::vector<std::int64_t>;
using Strides = std::vector<std::int64_t>;

/// Number of elements (1 for a scalar shape {}).
std::int64_t numel_of(const Shape& shape);
/// Number of elements of a shape an op is about to produce: throws "[op] negative dimension .." or
/// "[op] shape (..) has too many elements .." when a dim is negative or the element count (or a
/// contiguous stride: the product with 0-size dims counted as 1) overflows int64.
///   std::int64_t n = checked_numel(out_shape, "matmul");
std::int64_t checked_numel(const Shape& shape, const char* op);
/// Bytes of a `shape` tensor with `itemsize`-byte elements, checked as checked_numel and to fit int64.
std::int64_t checked_nbytes(const Shape& shape, std::size_t itemsize, const char* op);
/// Row-major strides for `shape`.
Strides contiguous_strides(const Shape& shape);
/// "(2, 3)"; "()" for a scalar.
std::string shape_str(const Shape& shape);
/// Maps a possibly negative dim into [0, ndim); throws "[op] dim d out of range for a N-D tensor".
std::int64_t normalize_dim(std::int64_t dim, std::int64_t ndim, const char* op);
/// NumPy broadcasting of two shapes; throws "[op] shapes (..) and (..) cannot be broadcast".
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
/// Whether a tensor of shape `from` broadcasts to `to` itself (NumPy rules: `to` unchanged).
bool broadcastable(const Shape& from, const Shape& to);
/// Strides that view a tensor of (shape, strides) as `target` (broadcast), zero on expanded dims.
Strides broadcast_strides(const Shape& shape, const Strides& strides, const Shape& target, const char* op);
/// Sorted, normalized, de-duplicated dims; empty `dims` means all dims.
std::vector<std::int64_t> normalize_dims(const std::vector<std::int64_t>& dims, std::int64_t ndim, const char* op);

/// The dims of a tensor (shape, strides) split into those a reduction keeps and those in
/// `dims` it reduces over, each outermost first: the geometry both backends' reductions start from.
struct ReduceDims {
  Shape kept_shape, red_shape;
  Strides kept_strides, red_strides;
};
ReduceDims split_reduce_dims(const Shape& shape, const Strides& strides, const std::vector<std::int64_t>& dims);

/// `shape` walked by N operands, with size-1 dims dropped and neighbours merged where every
/// operand is contiguous across them (outermost first). Both backends' loops and reductions
/// walk these fewer, longer dims; a scalar or all-size-1 shape gives no dims.
///   auto c = coalesce_dims<2>(out.shape(), {out.strides().data(), x.strides().data()});
///   // c.shape, c.strides[0], c.strides[1]
template <std::size_t N>
struct CoalescedDims {
  Shape shape;
  std::array<Strides, N> strides;
};
/// strides[k] points at operand k's strides, one per dim of `shape` (any unit: elements or bytes).
template <std::size_t N>
CoalescedDims<N> coalesce_dims(const Shape& shape, const std::array<const std::int64_t*, N>& strides) {
  CoalescedDims<N> c;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !c.shape.empty();
    for (std::size_t k = 0; k < N && merge; ++k) merge = c.strides[k].back() == strides[k][d] * shape[d];
    if (merge) {
      c.shape.back() *= shape[d];
    } else {
      c.shape.push_back(shape[d]);
      for (std::size_t k = 0; k < N; ++k) c.strides[k].push_back(0);
    }
    for (std::size_t k = 0; k < N; ++k) c.strides[k].back() = strides[k][d];
  }
  return c;
}

}  // namespace kiln
