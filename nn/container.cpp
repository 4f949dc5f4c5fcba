#include "container.hpp"

namespace kiln::nn {

namespace detail {
void throw_bad_index(const char* op, std::size_t index, std::size_t size) {
  throw_error(op, fmt::format("index {} out of range for {} module{}", index, size, size == 1 ? "" : "s"));
}
void throw_bad_cast(const char* op, std::size_t index, const Module& m) {
  throw_error(op, fmt::format("module {} is a {}, not the requested type", index, m.name()));
}
}  // namespace detail

Tensor SequentialImpl::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& f : forwards_) y = f(y);
  return y;
}

}  // namespace kiln::nn
