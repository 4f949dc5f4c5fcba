#pragma once
/// Element types. `promote_types` gives the result dtype of a binary op on the lattice
/// bool < int64 < {bfloat16, float16} < float32 < float64, where bfloat16 with float16 gives
/// float32 (as PyTorch does: neither holds the other's values).
///   kiln::promote_types(kiln::kInt64, kiln::kFloat32) == kiln::kFloat32
///   kiln::promote_types(kiln::kBFloat16, kiln::kFloat16) == kiln::kFloat32
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "half.hpp"

namespace kiln {

// New dtypes are appended: the values are part of kiln's ABI.
enum class DType : std::uint8_t { Bool = 0, Int64 = 1, Float32 = 2, Float64 = 3, BFloat16 = 4, Float16 = 5 };

inline constexpr DType kBool = DType::Bool;
inline constexpr DType kInt64 = DType::Int64;
inline constexpr DType kFloat32 = DType::Float32;
inline constexpr DType kFloat64 = DType::Float64;
inline constexpr DType kBFloat16 = DType::BFloat16;
inline constexpr DType kFloat16 = DType::Float16;

constexpr std::size_t itemsize(DType d) {
  switch (d) {
    case DType::Bool: return 1;
    case DType::Int64: return 8;
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::BFloat16: return 2;
    case DType::Float16: return 2;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::Bool: return "bool";
    case DType::Int64: return "int64";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
  }
  return "?";
}

/// bfloat16 and float16: stored in 16 bits, computed in float32.
constexpr bool is_reduced_float(DType d) { return d == DType::BFloat16 || d == DType::Float16; }
constexpr bool is_floating(DType d) { return d == DType::Float32 || d == DType::Float64 || is_reduced_float(d); }
constexpr bool is_integral(DType d, bool include_bool = true) {
  return d == DType::Int64 || (include_bool && d == DType::Bool);
}

namespace dtype_detail {
constexpr int rank(DType d) {
  switch (d) {
    case DType::Bool: return 0;
    case DType::Int64: return 1;
    case DType::BFloat16:
    case DType::Float16: return 2;
    case DType::Float32: return 3;
    case DType::Float64: return 4;
  }
  return 0;
}
}  // namespace dtype_detail

constexpr DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (is_reduced_float(a) && is_reduced_float(b)) return DType::Float32;
  return dtype_detail::rank(a) > dtype_detail::rank(b) ? a : b;
}

/// The category of a dtype: 0 bool, 1 integer, 2 floating (what PyTorch's promotion of 0-dim
/// tensors and its in-place casting rules look at).
constexpr int dtype_category(DType d) { return d == DType::Bool ? 0 : is_floating(d) ? 2 : 1; }

/// torch.can_cast: whether a `from` result may be stored in a `to` tensor (an in-place op's
/// target): never a floating result into an integer tensor or a number into bool; a narrower type
/// of the same category is fine (a float32 result stored in a bfloat16 tensor rounds).
///   kiln::can_cast(kFloat32, kBFloat16) == true, kiln::can_cast(kFloat32, kInt64) == false
constexpr bool can_cast(DType from, DType to) { return dtype_category(from) <= dtype_category(to); }

/// C++ type -> DType.
template <typename T>
struct dtype_of;
template <>
struct dtype_of<bool> {
  static constexpr DType value = DType::Bool;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr DType value = DType::Int64;
};
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::Float32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::Float64;
};
template <>
struct dtype_of<BFloat16> {
  static constexpr DType value = DType::BFloat16;
};
template <>
struct dtype_of<Half> {
  static constexpr DType value = DType::Float16;
};

/// Calls f(T{}) with the C++ type of `d`.
template <typename F>
decltype(auto) visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::Bool: return f(bool{});
    case DType::Int64: return f(std::int64_t{});
    case DType::Float32: return f(float{});
    case DType::BFloat16: return f(BFloat16{});
    case DType::Float16: return f(Half{});
    default: return f(double{});
  }
}

/// visit_dtype for ops only defined on floating types (4 instantiations instead of 6); the
/// caller has checked is_floating(d).
template <typename F>
decltype(auto) visit_float_dtype(DType d, F&& f) {
  switch (d) {
    case DType::Float32: return f(float{});
    case DType::BFloat16: return f(BFloat16{});
    case DType::Float16: return f(Half{});
    default: return f(double{});
  }
}

}  // namespace kiln
