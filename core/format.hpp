#pragma once
/// fmt support: `fmt::format("{}", t)` prints values (elided like NumPy when
/// large), shape, dtype and device:
///   tensor([[0, 1, 2],
///           [3, 4, 5]], shape=(2, 3), dtype=int64, device=cpu)
#include <fmt/format.h>

#include "tensor.hpp"

template <>
struct fmt::formatter<kiln::Tensor> : fmt::formatter<std::string_view> {
  auto format(const kiln::Tensor& t, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(t.str(), ctx);
  }
};
template <>
struct fmt::formatter<kiln::DType> : fmt::formatter<std::string_view> {
  auto format(kiln::DType d, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(kiln::dtype_name(d), ctx);
  }
};
template <>
struct fmt::formatter<kiln::Device> : fmt::formatter<std::string_view> {
  auto format(kiln::Device d, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(d.str(), ctx);
  }
};
