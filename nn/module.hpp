#pragma once
/// kiln::nn::Module — the base of every layer, following the PyTorch C++ frontend:
/// parameters, buffers and submodules are registered by name, a module is written as
/// `XxxImpl` and used through a shared-pointer holder declared with KILN_MODULE.
///
///   struct MLPImpl : kiln::nn::Module {
///     MLPImpl(int64_t in, int64_t hidden, int64_t out)
///         : fc1(register_module("fc1", nn::Linear(in, hidden))),
///           fc2(register_module("fc2", nn::Linear(hidden, out))) {}
///     Tensor forward(const Tensor& x) { return fc2(kiln::relu(fc1(x))); }
///     nn::Linear fc1, fc2;
///   };
///   KILN_MODULE(MLP);
///
///   MLP net(3, 16, 1);
///   net->named_parameters();        // "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"
///   net->eval(); net->to(kiln::kFloat64);
///   auto sd = net->state_dict();    // name -> tensor (parameters and persistent buffers)
///   fmt::print("{}\n", net);        // the module tree with shapes and parameter counts
#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"
#include "../core/arg.hpp"
#include "../core/state_dict.hpp"
#include "../core/tensor.hpp"
#include "ordered_dict.hpp"

namespace kiln::nn {

class Module;

template <typename Impl>
class ModuleHolder;

namespace detail {
template <typename Impl>
std::true_type holder_base_test(const ModuleHolder<Impl>*);
std::false_type holder_base_test(...);
}  // namespace detail

/// True for ModuleHolder<Impl> and for the classes KILN_MODULE declares.
template <typename T>
inline constexpr bool is_module_holder_v =
    decltype(detail::holder_base_test(std::declval<const std::remove_cvref_t<T>*>()))::value;

/// What load_state_dict reports when `strict` is false.
struct LoadStateDictResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  /// `name` is what printing shows; empty means the class name without its "Impl" suffix.
  explicit Module(std::string name = "");
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// The module's type name for printing ("Linear", or the demangled class name).
  const std::string& name() const;
  /// Options shown in parentheses after the name: "in_features=3, out_features=4, bias=true".
  virtual std::string extra_repr() const { return {}; }

  /// This module as `T` (an Impl class, or a holder such as nn::Linear, meaning its Impl), or
  /// nullptr when it is not one, as torch::nn::Module::as:
  ///   if (auto* lin = m.as<nn::Linear>()) nn::init::zeros_(lin->bias);   // lin: nn::LinearImpl*
  template <typename T>
  auto* as() noexcept {
    if constexpr (is_module_holder_v<T>) return dynamic_cast<typename T::ContainedType*>(this);
    else return dynamic_cast<T*>(this);
  }
  template <typename T>
  const auto* as() const noexcept {
    if constexpr (is_module_holder_v<T>) return dynamic_cast<const typename T::ContainedType*>(this);
    else return dynamic_cast<const T*>(this);
  }

  // ---- registration (each returns what it registered) ----
  /// Registers a leaf tensor as a parameter (requires_grad set to `requires_grad`). Re-registering
  /// a name replaces the tensor; an undefined tensor is kept but skipped by every listing.
  Tensor register_parameter(std::string name, Tensor tensor, bool requires_grad = true);
  /// A buffer is state that is not trained (running stats, fixed tables). Non-persistent
  /// buffers move with to() but are left out of state_dict().
  Tensor register_buffer(std::string name, Tensor tensor, bool persistent = true);
  template <typename M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> module) {
    static_assert(std::is_base_of_v<Module, M>, "register_module expects a kiln::nn::Module");
    add_child(std::move(name), module);
    return module;
  }
  template <typename H, std::enable_if_t<is_module_holder_v<H>, int> = 0>
  std::remove_cvref_t<H> register_module(std::string name, H&& holder) {
    add_child(std::move(name), holder.is_empty() ? nullptr : holder.ptr());
    return std::forward<H>(holder);
  }
  /// Replaces a registered submodule (same name) with another.
  template <typename H, std::enable_if_t<is_module_holder_v<H>, int> = 0>
  std::remove_cvref_t<H> replace_module(const std::string& name, H&& holder) {
    replace_child(name, holder.is_empty() ? nullptr : holder.ptr());
    return std::forward<H>(holder);
  }

  // ---- traversal (registration order; shared tensors/modules listed once) ----
  /// Dotted names: "blocks.0.attn.q_proj.weight".
  OrderedDict<Tensor> named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  OrderedDict<Tensor> named_buffers(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  OrderedDict<std::shared_ptr<Module>> named_children() const;
  std::vector<std::shared_ptr<Module>> children() const;
  /// Depth-first, this module first (named "" or `prefix`). A module not owned by a shared_ptr
  /// appears as a non-owning pointer.
  OrderedDict<std::shared_ptr<Module>> named_modules(const std::string& prefix = "", bool include_self = true);
  std::vector<std::shared_ptr<Module>> modules(bool include_self = true);
  /// Calls fn on this module, then on every descendant (depth-first).
  void apply(const std::function<void(Module&)>& fn);
  void apply(const std::function<void(const std::string&, Module&)>& fn, const std::string& prefix = "");

  // ---- modes, devices, dtypes ----
  /// Sets training mode here and in every descendant.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  /// Moves parameters and buffers in place: every handle to a parameter (the layer's member, an
  /// optimizer's list) sees the new device/dtype, and parameters stay leaves requiring grad.
  /// to(DType) converts floating point tensors only; existing .grad tensors are converted too.
  void to(Device device);
  void to(DType dtype);
  void to(Device device, DType dtype);

  // ---- gradients ----
  /// Clears every parameter's .grad (set_to_none) or zeroes it in place.
  void zero_grad(bool set_to_none = true);
  /// Number of elements over all (distinct) parameters; only those requiring grad if asked.
  std::int64_t num_parameters(bool trainable_only = false) const;

  // ---- (re)initialization ----
  /// Creates the module's parameters and submodules (layers call it from their constructor).
  virtual void reset() {}
  /// Re-draws the parameters with the module's initializers; by default recurses into children.
  virtual void reset_parameters();

  // ---- checkpoints ----
  /// Parameters then persistent buffers, per module in registration order, dotted names,
  /// detached (sharing storage with the module). Tied tensors appear under every name.
  StateDict state_dict() const;
  /// Copies values in place (converting dtype and device) under NoGradGuard. Throws kiln::Error
  /// listing missing and unexpected keys (strict) and shape mismatches (always); nothing is
  /// copied when it throws. Scalars (a module has none) count as unexpected keys.
  LoadStateDictResult load_state_dict(const StateDict& dict, bool strict = true);

  /// The module tree: one line per module with its options and parameter count, one line per
  /// parameter/buffer with its shape, and a total.
  std::string str() const;

 protected:
  /// Names of this module's own entries (not recursive), for subclasses that print or check.
  const OrderedDict<Tensor>& own_parameters() const { return parameters_; }
  const OrderedDict<Tensor>& own_buffers() const { return buffers_; }
  void add_child(std::string name, std::shared_ptr<Module> module);
  void replace_child(const std::string& name, std::shared_ptr<Module> module);

 private:
  void check_new_name(const std::string& name, const char* what, int kind) const;
  void collect_state(const std::string& prefix, OrderedDict<Tensor>& out) const;
  void print_tree(std::string& out, const std::string& label, int depth) const;

  mutable std::string name_;
  OrderedDict<Tensor> parameters_;
  OrderedDict<Tensor> buffers_;
  std::vector<std::string> non_persistent_;
  OrderedDict<std::shared_ptr<Module>> children_;
  bool training_ = true;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

/// Checks a layer's input for a floating dtype (float32, float64, bfloat16, float16), as kiln's
/// layers do (an integer tensor is an error, not a silent promotion, as in PyTorch); for layers
/// of your own too. `what` names the argument:
///   nn::check_floating_input("SwiGLU", x);
///   // [SwiGLU] input dtype int64 is not supported: expected a floating dtype (float32, float64, bfloat16, float16)
void check_floating_input(const char* layer, const Tensor& x, const char* what = "input");

/// Shared-pointer wrapper around a module implementation (like torch::nn::ModuleHolder):
/// copies share the module; `holder->member`, `holder(x)` (calls forward), `holder.ptr()`.
/// An empty holder is made with `nullptr`: `nn::Linear fc{nullptr};`.
template <typename Impl>
class ModuleHolder {
 public:
  using ContainedType = Impl;

  /// Default-constructs the module (only for modules that have a default constructor).
  ModuleHolder() : impl_(default_construct()) {
    static_assert(std::is_default_constructible_v<Impl>,
                  "this module has no default constructor; use `= nullptr` for an empty holder "
                  "(e.g. `nn::Linear fc{nullptr};`) and assign it later");
  }
  ModuleHolder(std::nullptr_t) {}
  ModuleHolder(std::shared_ptr<Impl> module) : impl_(std::move(module)) {}
  /// Forwards the arguments to Impl's constructor.
  template <typename Head, typename... Tail,
            typename = std::enable_if_t<!(sizeof...(Tail) == 0 &&
                                          (std::is_base_of_v<ModuleHolder, std::remove_cvref_t<Head>> ||
                                           std::is_same_v<std::remove_cvref_t<Head>, std::nullptr_t> ||
                                           std::is_same_v<std::remove_cvref_t<Head>, std::shared_ptr<Impl>>))>>
  explicit ModuleHolder(Head&& head, Tail&&... tail)
      : impl_(std::make_shared<Impl>(std::forward<Head>(head), std::forward<Tail>(tail)...)) {}

  Impl* operator->() { return get(); }
  const Impl* operator->() const { return get(); }
  Impl& operator*() { return *get(); }
  const Impl& operator*() const { return *get(); }
  Impl* get() {
    check();
    return impl_.get();
  }
  const Impl* get() const {
    check();
    return impl_.get();
  }
  const std::shared_ptr<Impl>& ptr() const {
    check();
    return impl_;
  }
  bool is_empty() const { return impl_ == nullptr; }
  explicit operator bool() const { return impl_ != nullptr; }

  /// Calls the module's forward.
  template <typename... Args>
  decltype(auto) operator()(Args&&... args) {
    return get()->forward(std::forward<Args>(args)...);
  }
  /// Forwards indexing to the module (containers: `seq[0]`).
  template <typename Arg>
  decltype(auto) operator[](Arg&& arg) const {
    return (*get())[std::forward<Arg>(arg)];
  }

 private:
  static std::shared_ptr<Impl> default_construct() {
    if constexpr (std::is_default_constructible_v<Impl>) return std::make_shared<Impl>();
    else return nullptr;
  }
  void check() const {
    if (!impl_) throw_error("ModuleHolder", "accessing an empty module holder (constructed from nullptr)");
  }
  std::shared_ptr<Impl> impl_;
};

template <typename Impl>
std::ostream& operator<<(std::ostream& os, const ModuleHolder<Impl>& h) {
  return os << *h;
}

}  // namespace kiln::nn

/// Declares `Name` as the holder of `NameImpl` (like TORCH_MODULE).
#define KILN_MODULE(Name)                                     \
  class Name : public ::kiln::nn::ModuleHolder<Name##Impl> {  \
   public:                                                    \
    using ::kiln::nn::ModuleHolder<Name##Impl>::ModuleHolder; \
    using Impl = Name##Impl;                                  \
  }

/// `fmt::format("{}", module)` for modules and holders: the tree of Module::str().
template <typename T>
struct fmt::formatter<T, char, std::enable_if_t<std::is_base_of_v<kiln::nn::Module, T>>>
    : fmt::formatter<std::string_view> {
  auto format(const T& m, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(m.str(), ctx);
  }
};
template <typename T>
struct fmt::formatter<T, char, std::enable_if_t<kiln::nn::is_module_holder_v<T>>> : fmt::formatter<std::string_view> {
  auto format(const T& m, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(m->str(), ctx);
  }
};
