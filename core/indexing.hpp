#pragma once
/// Python-style indexing: what goes between the brackets of x[...], one TensorIndex each.
///   using namespace kiln::indexing;
///   auto v = x.index({Slice(0, 2), 1, None, Ellipsis});  // x[0:2, 1, None, ...]: a view
///   auto m = x.index({x > 0});                            // x[x > 0]: 1-D copy
///   x.index_put_({Slice(), idx}, 0.0);                    // x[:, idx] = 0
/// Semantics are PyTorch's: integers wrap when negative (out of range throws kiln::Error naming
/// the dim, index and size); slices clamp like Python's (step > 0); None adds a dim of size 1;
/// Ellipsis stands for the dims no other index covers. Bool tensors are masks over as many dims
/// as they have; int64 tensors (and masks) are advanced indices: broadcast together, their result
/// dims replace the indexed dims where those are adjacent, else they go first.
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <vector>

#include "tensor.hpp"

namespace kiln {
namespace indexing {

/// `None` in x[None]: a new dim of size 1. Also the "absent" bound of a Slice.
inline constexpr std::nullopt_t None = std::nullopt;

/// `...` in x[..., 0].
struct EllipsisIndexType {};
inline constexpr EllipsisIndexType Ellipsis{};

/// start:stop:step with Python's defaults (0, the end, 1): `Slice()`, `Slice(1)`,
/// `Slice(None, -1)`, `Slice(0, None, 2)`.
class Slice {
 public:
  Slice(std::optional<std::int64_t> start = std::nullopt, std::optional<std::int64_t> stop = std::nullopt,
        std::optional<std::int64_t> step = std::nullopt)
      : start_(start), stop_(stop), step_(step) {}
  std::optional<std::int64_t> start() const { return start_; }
  std::optional<std::int64_t> stop() const { return stop_; }
  std::optional<std::int64_t> step() const { return step_; }

 private:
  std::optional<std::int64_t> start_, stop_, step_;
};

}  // namespace indexing

/// One entry of x.index({...}): an integer, a bool, a Slice, None, Ellipsis or a tensor.
class TensorIndex {
 public:
  enum class Kind { None, Ellipsis, Integer, Boolean, Slice, Tensor };

  TensorIndex(std::nullopt_t) : kind_(Kind::None) {}
  TensorIndex(indexing::EllipsisIndexType) : kind_(Kind::Ellipsis) {}
  template <typename I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
  TensorIndex(I i) : kind_(Kind::Integer), integer_(static_cast<std::int64_t>(i)) {}
  TensorIndex(bool b) : kind_(Kind::Boolean), boolean_(b) {}
  TensorIndex(indexing::Slice s) : kind_(Kind::Slice), slice_(s) {}
  TensorIndex(Tensor t) : kind_(Kind::Tensor), tensor_(std::move(t)) {}

  Kind kind() const { return kind_; }
  std::int64_t integer() const { return integer_; }
  bool boolean() const { return boolean_; }
  const indexing::Slice& slice() const { return slice_; }
  const Tensor& tensor() const { return tensor_; }

 private:
  Kind kind_;
  std::int64_t integer_ = 0;
  bool boolean_ = false;
  indexing::Slice slice_;
  Tensor tensor_;
};

/// Out-of-place x[indices] = value (x itself unchanged): differentiable for x and value.
Tensor index_put(const Tensor& x, const std::vector<TensorIndex>& indices, const Tensor& value,
                 bool accumulate = false);

}  // namespace kiln
