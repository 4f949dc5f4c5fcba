#pragma once
// Helpers shared by the op implementations (not installed API).
#include <fmt/format.h>

#include <functional>
#include <vector>

#include "../core/backend.hpp"
#include "autocast.hpp"
#include "grad_mode.hpp"
#include "node.hpp"
#include "ops.hpp"

namespace kiln::detail {

inline Backend& backend(const Tensor& t, const char* op) { return backend_for(t.device(), op); }

inline void check_defined(const Tensor& t, const char* op, const char* what = "input") {
  if (!t.defined()) throw_error(op, fmt::format("{} tensor is undefined", what));
}

inline void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.device() == b.device(), op, "expected all tensors on the same device, got {} and {}", a.device().str(),
             b.device().str());
}

/// Same data converted to `dtype` (no autograd).
inline Tensor cast_raw(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  Tensor out = Tensor::empty(t.shape(), dtype, t.device());
  backend(t, "to").copy(out, t);
  return out;
}

/// A broadcast view of t with `shape` (no autograd).
inline Tensor expand_raw(const Tensor& t, const Shape& shape, const char* op) {
  if (t.shape() == shape) return t;
  return Tensor::make_view(t, shape, broadcast_strides(t.shape(), t.strides(), shape, op), t.offset());
}

/// Contiguous version of t (no autograd).
inline Tensor contiguous_raw(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  backend(t, "contiguous").copy(out, t);
  return out;
}

inline Tensor scalar_on(const Scalar& s, DType dtype, Device device) {
  return full({}, s, TensorOptions(dtype).device(device));
}

/// The gradient for input `x` from gradient g of a broadcast result.
inline Tensor reduce_grad(const Tensor& g, const Tensor& x) {
  Tensor r = sum_to_shape(g, x.shape());
  return r.dtype() == x.dtype() ? r : to(r, x.dtype());
}

/// Under autocast, `t` as `policy` wants it; sets `changed` when that is a new tensor (the op then
/// reruns on the cast inputs, where autocast changes nothing more).
inline Tensor autocast_arg(const Tensor& t, AutocastPolicy policy, bool& changed) {
  Tensor c = autocast_input(t, policy);
  changed = changed || !c.is_same(t);
  return c;
}
constexpr AutocastPolicy kLowPrecision = AutocastPolicy::LowPrecision;
constexpr AutocastPolicy kFloat32Policy = AutocastPolicy::Float32;

inline void check_floating(const Tensor& t, const char* op) {
  KILN_CHECK(t.is_floating_point(), op, "expected a floating point tensor, got {}", dtype_name(t.dtype()));
}

/// Runs the post-accumulate-grad hooks of `leaf` (autograd/hooks.hpp); AccumulateGrad calls it
/// after adding a pass's gradient into leaf.grad.
void run_post_accumulate_grad_hooks(const std::shared_ptr<TensorImpl>& leaf);

/// One backward pass's queue for autograd::queue_callback on this thread, alive for the pass
/// (a nested backward, e.g. from a hook, gets its own and restores the outer one).
class BackwardCallbacks {
 public:
  BackwardCallbacks();
  ~BackwardCallbacks();
  BackwardCallbacks(const BackwardCallbacks&) = delete;
  BackwardCallbacks& operator=(const BackwardCallbacks&) = delete;
  /// Runs the queued callbacks in order, including those they queue.
  void run();
  void push(std::function<void()> callback) { queue_.push_back(std::move(callback)); }

 private:
  std::vector<std::function<void()>> queue_;
  BackwardCallbacks* outer_;
};

}  // namespace kiln::detail
