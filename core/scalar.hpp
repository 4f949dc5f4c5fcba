#pragma once
/// A number passed to an op (`x * 2`, `full({2}, 0.5)`): remembers whether it
/// was written as a bool, an integer or a floating-point value.
#include <cstdint>
#include <type_traits>
#include "dtype.hpp"

namespace kiln {

class Scalar {
 public:
  Scalar() = default;
  Scalar(bool v) : kind_(DType::Bool), i_(v), d_(v) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Scalar(T v) : kind_(DType::Int64), i_(static_cast<std::int64_t>(v)), d_(static_cast<double>(v)) {}
  template <typename T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
  Scalar(T v) : kind_(DType::Float64), i_(trunc_int(static_cast<double>(v))), d_(static_cast<double>(v)) {}
  /// bfloat16 / float16 values are floating literals too (without this they would convert to bool).
  template <typename T, std::enable_if_t<is_reduced_float_v<T>, int> = 0>
  Scalar(T v) : Scalar(static_cast<double>(static_cast<float>(v))) {}

  /// DType::Bool, DType::Int64 or DType::Float64 (the kind of literal).
  DType kind() const { return kind_; }
  bool is_floating() const { return kind_ == DType::Float64; }
  double to_double() const { return d_; }
  std::int64_t to_int() const { return i_; }
  template <typename T>
  T to() const {
    if constexpr (std::is_same_v<T, bool>) return d_ != 0.0;
    else if constexpr (std::is_integral_v<T>) return static_cast<T>(i_);
    else return static_cast<T>(d_);
  }

 private:
  // Toward zero, saturating at int64's range, NaN -> 0: a plain cast of NaN, an infinity or a
  // value past int64 is undefined behaviour (x * 1e30 made every such Scalar UB).
  static constexpr std::int64_t trunc_int(double v) {
    if (!(v == v)) return 0;
    if (v >= 9223372036854775808.0) return INT64_MAX;
    if (v < -9223372036854775808.0) return INT64_MIN;
    return static_cast<std::int64_t>(v);
  }

  DType kind_ = DType::Int64;
  std::int64_t i_ = 0;
  double d_ = 0.0;
};

/// Result dtype of `tensor op scalar`: the scalar never widens the tensor's
/// category (float32 * 2.0 stays float32); a float scalar makes an integer tensor float32.
constexpr DType result_type_with_scalar(DType t, DType scalar_kind) {
  if (scalar_kind == DType::Float64 && !is_floating(t)) return DType::Float32;
  if (scalar_kind == DType::Int64 && t == DType::Bool) return DType::Int64;
  return t;
}

}  // namespace kiln
