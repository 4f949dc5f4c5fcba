#pragma once
/// kiln::Error — the one exception type kiln throws for bad input.
///
/// Messages start with the op in brackets and show the offending values:
///   try { kiln::matmul(a, b); } catch (const kiln::Error& e) { puts(e.what()); }
///   // [matmul] shapes (2, 3) and (4, 5) cannot be multiplied: 3 != 4
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// Throws kiln::Error("[op] msg"). Out of line so headers stay free of fmt.
[[noreturn]] void throw_error(const char* op, const std::string& msg);

}  // namespace kiln

/// KILN_CHECK(cond, "op", "fmt {}", args...) — throws kiln::Error when cond is false.
/// Needs <fmt/format.h>; used in .cpp files only.
#define KILN_CHECK(cond, op, ...)                                   \
  do {                                                              \
    if (!(cond)) ::kiln::throw_error(op, fmt::format(__VA_ARGS__)); \
  } while (0)
