// Post-accumulate-grad hooks on leaves and the per-pass callback queue (autograd/hooks.hpp).
#include "hooks.hpp"

#include <algorithm>

#include "internal.hpp"

namespace kiln::autograd {

// A leaf's hooks, shared by the leaf's AutogradMeta and (weakly) by the handles. An entry is
// marked removed rather than erased while a pass may be iterating a snapshot of the list.
struct LeafHooks {
  struct Entry {
    std::uint64_t id;
    PostAccumulateGradHook fn;
    bool removed = false;
  };
  std::vector<std::shared_ptr<Entry>> entries;
  std::uint64_t next_id = 1;
};

void HookHandle::remove() {
  auto hooks = hooks_.lock();
  if (!hooks) return;
  auto& es = hooks->entries;
  auto it = std::find_if(es.begin(), es.end(), [&](const auto& e) { return e->id == id_; });
  if (it != es.end()) {
    (*it)->removed = true;
    es.erase(it);
  }
  hooks_.reset();
}

bool HookHandle::active() const {
  auto hooks = hooks_.lock();
  return hooks &&
         std::any_of(hooks->entries.begin(), hooks->entries.end(), [&](const auto& e) { return e->id == id_; });
}

HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook) {
  const char* op = "register_post_accumulate_grad_hook";
  KILN_CHECK(leaf.defined(), op, "the tensor is undefined");
  KILN_CHECK(leaf.requires_grad(), op,
             "the tensor (shape {}) does not require grad, so no gradient accumulates into it",
             shape_str(leaf.shape()));
  KILN_CHECK(leaf.is_leaf(), op,
             "the tensor (shape {}) is not a leaf (it was produced by '{}'); only leaves accumulate .grad",
             shape_str(leaf.shape()), leaf.grad_fn()->name());
  KILN_CHECK(static_cast<bool>(hook), op, "the hook is empty");
  auto& slot = leaf.impl_ptr()->autograd->hooks;
  if (!slot) slot = std::make_shared<LeafHooks>();
  const std::uint64_t id = slot->next_id++;
  slot->entries.push_back(std::make_shared<LeafHooks::Entry>(LeafHooks::Entry{id, std::move(hook)}));
  return HookHandle(slot, id);
}

namespace {
thread_local detail::BackwardCallbacks* t_callbacks = nullptr;
}

void queue_callback(std::function<void()> callback) {
  KILN_CHECK(t_callbacks != nullptr, "queue_callback",
             "no backward pass is running on this thread (call it from a hook or a backward function)");
  KILN_CHECK(static_cast<bool>(callback), "queue_callback", "the callback is empty");
  t_callbacks->push(std::move(callback));
}

bool backward_running() { return t_callbacks != nullptr; }

}  // namespace kiln::autograd

namespace kiln::detail {

void run_post_accumulate_grad_hooks(const std::shared_ptr<TensorImpl>& leaf) {
  if (!leaf->autograd || !leaf->autograd->hooks || leaf->autograd->hooks->entries.empty()) return;
  // A snapshot: a hook may register or remove hooks (itself included) while the list runs.
  const auto snapshot = leaf->autograd->hooks->entries;
  const Tensor t(leaf);
  for (const auto& e : snapshot)
    if (!e->removed) e->fn(t);
}

BackwardCallbacks::BackwardCallbacks() : outer_(autograd::t_callbacks) { autograd::t_callbacks = this; }

BackwardCallbacks::~BackwardCallbacks() { autograd::t_callbacks = outer_; }

void BackwardCallbacks::run() {
  // By index: a callback may queue more (the vector may grow while this runs).
  for (std::size_t i = 0; i < queue_.size(); ++i) {
    std::function<void()> cb = std::move(queue_[i]);
    cb();
  }
  queue_.clear();
}

}  // namespace kiln::detail
