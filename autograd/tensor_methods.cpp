// Tensor member functions that compute: thin forwards to the ops.
#include <fmt/format.h>

#include "node.hpp"
#include "ops.hpp"

namespace kiln {

namespace autograd {
// For Tensor::str() in core/format.cpp, which cannot see autograd's Node.
const char* grad_fn_name(const Tensor& t) { return t.grad_fn() ? t.grad_fn()->name() : ""; }
}  // namespace autograd

Tensor Tensor::view(const Shape& s) const { return kiln::view(*this, s); }
Tensor Tensor::reshape(const Shape& s) const { return kiln::reshape(*this, s); }
Tensor Tensor::flatten(std::int64_t a, std::int64_t b) const { return kiln::flatten(*this, a, b); }
Tensor Tensor::permute(const std::vector<std::int64_t>& d) const { return kiln::permute(*this, d); }
Tensor Tensor::transpose(std::int64_t a, std::int64_t b) const { return kiln::transpose(*this, a, b); }
Tensor Tensor::mT() const { return kiln::transpose(*this, -2, -1); }
Tensor Tensor::t() const {
  KILN_CHECK(dim() <= 2, "t", "expects a tensor with <= 2 dims, got shape {}", shape_str(shape()));
  return dim() < 2 ? *this : kiln::transpose(*this, 0, 1);
}
Tensor Tensor::narrow(std::int64_t d, std::int64_t s, std::int64_t l) const { return kiln::narrow(*this, d, s, l); }
Tensor Tensor::slice(std::int64_t d, std::int64_t s, std::int64_t e, std::int64_t st) const {
  return kiln::slice(*this, d, s, e, st);
}
Tensor Tensor::select(std::int64_t d, std::int64_t i) const { return kiln::select(*this, d, i); }
Tensor Tensor::expand(const Shape& s) const { return kiln::expand(*this, s); }
Tensor Tensor::squeeze() const { return kiln::squeeze(*this); }
Tensor Tensor::squeeze(std::int64_t d) const { return kiln::squeeze(*this, d); }
Tensor Tensor::unsqueeze(std::int64_t d) const { return kiln::unsqueeze(*this, d); }
Tensor Tensor::contiguous() const { return kiln::contiguous(*this); }
Tensor Tensor::clone() const { return kiln::clone(*this); }
Tensor Tensor::to(DType d) const { return kiln::to(*this, d); }
Tensor Tensor::to(Device d) const { return kiln::to(*this, d); }
Tensor Tensor::to(Device d, DType t) const { return kiln::to(kiln::to(*this, d), t); }
Tensor Tensor::to(Device d, bool non_blocking) const { return kiln::to(*this, d, non_blocking); }
Tensor Tensor::pin_memory() const { return kiln::pin_memory(*this); }
Tensor Tensor::sum(const std::vector<std::int64_t>& d, bool k) const { return kiln::sum(*this, d, k); }
Tensor Tensor::mean(const std::vector<std::int64_t>& d, bool k) const { return kiln::mean(*this, d, k); }
Tensor Tensor::pow(const Scalar& e) const { return kiln::pow(*this, e); }
Tensor Tensor::exp() const { return kiln::exp(*this); }
Tensor Tensor::log() const { return kiln::log(*this); }
Tensor Tensor::sqrt() const { return kiln::sqrt(*this); }
Tensor Tensor::abs() const { return kiln::abs(*this); }
Tensor Tensor::matmul(const Tensor& o) const { return kiln::matmul(*this, o); }

}  // namespace kiln
