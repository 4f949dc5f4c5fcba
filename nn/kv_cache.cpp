#include "kv_cache.hpp"

#include <fmt/format.h>

#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"

namespace kiln::nn {

namespace {

constexpr const char* kOp = "KVCache";

Shape with_tail(Shape s, std::initializer_list<std::int64_t> tail) {
  s.insert(s.end(), tail);
  return s;
}

// "(2, 4, L, 16)": the shape an append must have, L free.
std::string expected(const Shape& batch, std::int64_t heads, std::int64_t d) {
  std::string s = "(";
  for (std::int64_t b : batch) s += fmt::format("{}, ", b);
  return s + fmt::format("{}, L, {})", heads, d);
}

}  // namespace

KVCache::KVCache(Shape batch, std::int64_t num_kv_heads, std::int64_t max_length, std::int64_t head_dim,
                 std::int64_t v_head_dim, TensorOptions opts)
    : batch_(std::move(batch)), heads_(num_kv_heads), max_length_(max_length), dk_(head_dim), dv_(v_head_dim) {
  KILN_CHECK(num_kv_heads > 0 && max_length > 0 && head_dim > 0 && v_head_dim > 0, kOp,
             "num_kv_heads, max_length, head_dim and v_head_dim must be > 0, got {}, {}, {} and {}", num_kv_heads,
             max_length, head_dim, v_head_dim);
  for (std::int64_t b : batch_) KILN_CHECK(b >= 0, kOp, "batch dims must be >= 0, got {}", shape_str(batch_));
  KILN_CHECK(is_floating(opts.dtype()), kOp, "the cache must be floating point, got {}", dtype_name(opts.dtype()));
  k_ = zeros(with_tail(batch_, {heads_, max_length_, dk_}), opts);
  v_ = zeros(with_tail(batch_, {heads_, max_length_, dv_}), opts);
}

Tensor KVCache::keys() const {
  KILN_CHECK(defined(), kOp, "the cache is empty (default-constructed)");
  return k_.narrow(-2, 0, length_);
}

Tensor KVCache::values() const {
  KILN_CHECK(defined(), kOp, "the cache is empty (default-constructed)");
  return v_.narrow(-2, 0, length_);
}

void KVCache::check_append(std::int64_t L) const {
  KILN_CHECK(defined(), kOp,
             "the cache is empty (default-constructed); make one with MultiHeadAttention::make_kv_cache");
  KILN_CHECK(length_ + L <= max_length_, kOp,
             "cache overflow: appending {} positions to the {} stored would need length {}, but max_length is {}", L,
             length_, length_ + L, max_length_);
}

std::pair<Tensor, Tensor> KVCache::append(const Tensor& k, const Tensor& v) {
  KILN_CHECK(k.defined() && v.defined(), kOp, "keys and values must be defined");
  const std::int64_t L = k.dim() >= 2 ? k.size(-2) : 0;
  KILN_CHECK(k.shape() == with_tail(batch_, {heads_, L, dk_}), kOp,
             "keys of shape {} do not match the cache's (batch..., Hkv, L, head_dim) = {}", shape_str(k.shape()),
             expected(batch_, heads_, dk_));
  KILN_CHECK(v.shape() == with_tail(batch_, {heads_, L, dv_}), kOp,
             "values of shape {} do not match the cache's (batch..., Hkv, L, v_head_dim) = {} with the keys' L = {}",
             shape_str(v.shape()), expected(batch_, heads_, dv_), L);
  KILN_CHECK(k.dtype() == dtype() && v.dtype() == dtype(), kOp,
             "keys/values of dtype {}/{} do not match the cache's {}", dtype_name(k.dtype()), dtype_name(v.dtype()),
             dtype_name(dtype()));
  KILN_CHECK(k.device() == device() && v.device() == device(), kOp, "keys/values must be on the cache's device");
  check_append(L);
  const std::int64_t old = length_;
  {
    NoGradGuard ng;
    k_.narrow(-2, old, L).copy_(k);
    v_.narrow(-2, old, L).copy_(v);
  }
  length_ = old + L;
  if (autograd::grad_enabled() && (k.requires_grad() || v.requires_grad())) {
    // History is constant; the new part keeps its graph.
    return {cat({k_.narrow(-2, 0, old), k}, -2), cat({v_.narrow(-2, 0, old), v}, -2)};
  }
  return {keys(), values()};
}

void KVCache::crop(std::int64_t length) {
  KILN_CHECK(length >= 0 && length <= length_, kOp, "crop length must be in [0, {}] (the stored length), got {}",
             length_, length);
  length_ = length;
}

void KVCache::reorder(const Tensor& indices) {
  KILN_CHECK(defined() && !batch_.empty(), kOp, "reorder needs a cache with a batch dim");
  KILN_CHECK(indices.defined() && indices.dtype() == kInt64 && indices.shape() == Shape{batch_[0]}, kOp,
             "reorder indices must be int64 of shape ({},), got {}", batch_[0],
             indices.defined() ? fmt::format("{} of shape {}", dtype_name(indices.dtype()), shape_str(indices.shape()))
                               : std::string("undefined"));
  auto idx = indices.to_vector<std::int64_t>();
  for (std::int64_t i : idx)
    KILN_CHECK(i >= 0 && i < batch_[0], kOp, "reorder index {} out of range [0, {})", i, batch_[0]);
  NoGradGuard ng;
  Tensor on = indices.to(device());
  Tensor k = index_select(keys(), 0, on), v = index_select(values(), 0, on);  // copies before overwriting
  keys().copy_(k);
  values().copy_(v);
}

}  // namespace kiln::nn
