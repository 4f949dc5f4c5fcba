#pragma once
/// Shapes and strides (in elements), row-major. Helpers shared by every op.
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

using Shape = std::vector<std::int64_t>;
using Strides = std::vector<std::int64_t>;

/// Number of elements (1 for a scalar shape {}).
std::int64_t numel_of(const Shape& shape);
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

}  // namespace kiln
