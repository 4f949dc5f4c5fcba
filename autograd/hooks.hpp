#pragma once
/// Hooks into the backward pass (what data-parallel training needs to overlap communication
/// with the rest of backward):
///
///   auto h = kiln::autograd::register_post_accumulate_grad_hook(w, [](const kiln::Tensor& leaf) {
///     // leaf.grad() holds this backward's gradient for w (summed over all its uses)
///     kiln::autograd::queue_callback([] { /* runs once, before backward() returns */ });
///   });
///   loss.backward();
///   h.remove();
///
/// A post-accumulate-grad hook runs after the engine has added a backward pass's gradient into
/// a leaf's .grad: once per pass that reaches the leaf with a gradient (a leaf used several
/// times fires once, after the sum), in registration order, on the thread running backward.
/// autograd::grad (which accumulates nothing) does not fire them. queue_callback, called while a
/// backward pass runs on this thread (from a hook or a Function's backward), queues work that runs
/// after the pass's last node and before backward() returns; callbacks may queue more. If the pass
/// throws, its queued callbacks are dropped. Hooks are not synchronized with a backward running on
/// another thread: register and remove them between passes.
#include <cstdint>
#include <functional>
#include <memory>

#include "../core/tensor.hpp"

namespace kiln::autograd {

using PostAccumulateGradHook = std::function<void(const Tensor& leaf)>;

struct LeafHooks;

/// Returned by the register functions; `remove()` unregisters (idempotent). Dropping the handle
/// keeps the hook registered.
class HookHandle {
 public:
  HookHandle() = default;
  HookHandle(std::weak_ptr<LeafHooks> hooks, std::uint64_t id) : hooks_(std::move(hooks)), id_(id) {}
  void remove();
  /// Whether the hook is still registered (false after remove() or once its tensor is gone).
  bool active() const;

 private:
  std::weak_ptr<LeafHooks> hooks_;
  std::uint64_t id_ = 0;
};

/// Runs `hook(leaf)` after each backward pass has accumulated into leaf.grad. `leaf` must be a
/// leaf that requires grad (kiln::Error otherwise).
HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook);

/// Queues `callback` to run when the backward pass running on this thread has finished its graph
/// (before backward()/grad() returns). kiln::Error when no backward pass is running on this thread.
void queue_callback(std::function<void()> callback);

/// Whether a backward pass is running on this thread (true inside hooks and backward functions).
bool backward_running();

}  // namespace kiln::autograd
