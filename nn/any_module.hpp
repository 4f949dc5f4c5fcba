#pragma once
/// nn::AnyModule<Signature> — a module held by its forward signature rather than its type: any
/// module whose `forward` can be called with the signature's arguments fits, and calling it costs
/// one indirect call (no copies, no std::function). What the transformer layers hold for their
/// pluggable feed-forward, attention and norm blocks.
///
///   nn::AnyModule<Tensor(const Tensor&)> ff = nn::FeedForward(nn::FeedForwardOptions(64));
///   Tensor y = ff(x);                                  // FeedForwardImpl::forward(x)
///   ff = MySwiGLU(64, 172);                            // another type, same call
///   ff->named_parameters();                            // the held nn::Module
///   if (auto* f = ff->as<nn::FeedForward>()) f->options.dropout();   // back to the concrete type
///
/// Unlike torch::nn::AnyModule the signature is checked at compile time: assigning a module
/// whose forward does not accept it does not compile.
#include <concepts>
#include <cstddef>
#include <memory>
#include <utility>

#include "module.hpp"

namespace kiln::nn {

template <typename Signature>
class AnyModule;

template <typename R, typename... Args>
class AnyModule<R(Args...)> {
 public:
  /// True when M's forward accepts Args and returns something convertible to R.
  template <typename M>
  static constexpr bool fits = std::derived_from<M, Module>&& requires(M& m, Args... args) {
    { m.forward(std::forward<Args>(args)...) } -> std::convertible_to<R>;
  };

  AnyModule() = default;
  AnyModule(std::nullptr_t) {}  // NOLINT: implicit, an empty slot
  template <typename M>
  requires fits<M> AnyModule(std::shared_ptr<M> module)  // NOLINT: implicit
      : module_(std::move(module)), call_(module_ ? &call<M> : nullptr) {}
  template <typename H>
  requires is_module_holder_v<H> && fits<typename H::ContainedType> AnyModule(const H& holder)  // NOLINT: implicit
      : AnyModule(holder.is_empty() ? nullptr : holder.ptr()) {}

  /// Calls the module's forward.
  R operator()(Args... args) const {
    check();
    return call_(module_.get(), std::forward<Args>(args)...);
  }
  Module* operator->() const {
    check();
    return module_.get();
  }
  Module& operator*() const { return *operator->(); }
  /// The module, for register_module (empty when the slot is).
  const std::shared_ptr<Module>& ptr() const { return module_; }
  bool is_empty() const { return module_ == nullptr; }
  explicit operator bool() const { return module_ != nullptr; }
  friend bool operator==(const AnyModule& a, std::nullptr_t) { return a.module_ == nullptr; }

 private:
  template <typename M>
  static R call(Module* m, Args... args) {
    return static_cast<M*>(m)->forward(std::forward<Args>(args)...);
  }
  void check() const {
    if (!module_) throw_error("AnyModule", "calling an empty module slot");
  }
  std::shared_ptr<Module> module_;
  R (*call_)(Module*, Args...) = nullptr;
};

}  // namespace kiln::nn
