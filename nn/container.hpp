#pragma once
/// Containers: nn::Sequential chains modules whose forward takes one Tensor; nn::ModuleList
/// holds modules for a forward you write yourself; nn::Functional wraps a function as a module.
/// Children are registered as "0", "1", ..., so parameters read "blocks.0.attn.q_proj.weight".
///   nn::Sequential mlp(nn::Linear(4, 16), nn::ReLU(), nn::Linear(16, 2));
///   mlp->push_back([](const Tensor& x) { return kiln::softmax(x, -1); });   // a Functional
///   Tensor y = mlp(x);
///   mlp->at<nn::LinearImpl>(0).weight;                                     // typed access
///
///   nn::ModuleList blocks;
///   for (int i = 0; i < 4; ++i) blocks->push_back(Block(cfg));
///   for (auto& b : *blocks) x = std::dynamic_pointer_cast<BlockImpl>(b)->forward(x);
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "module.hpp"

namespace kiln::nn {

namespace detail {
template <typename T>
struct is_shared_ptr : std::false_type {};
template <typename T>
struct is_shared_ptr<std::shared_ptr<T>> : std::true_type {};

/// The std::shared_ptr<Module subclass> inside a holder or a shared_ptr.
template <typename M>
auto module_ptr(M&& m) {
  using D = std::remove_cvref_t<M>;
  if constexpr (is_module_holder_v<D>) {
    return m.ptr();
  } else {
    static_assert(is_shared_ptr<D>::value && std::is_base_of_v<Module, typename D::element_type>,
                  "expected a module holder (nn::Linear), a std::shared_ptr to a Module, or a function");
    return m;
  }
}

[[noreturn]] void throw_bad_index(const char* op, std::size_t index, std::size_t size);
[[noreturn]] void throw_bad_cast(const char* op, std::size_t index, const Module& m);
}  // namespace detail

/// A function Tensor -> Tensor as a module (printed as "Functional", or the name given).
class FunctionalImpl : public Module {
 public:
  using Fn = std::function<Tensor(const Tensor&)>;
  explicit FunctionalImpl(Fn fn, std::string name = "Functional") : Module(std::move(name)), fn_(std::move(fn)) {}
  Tensor forward(const Tensor& x) { return fn_(x); }

 private:
  Fn fn_;
};
KILN_MODULE(Functional);

/// Shared indexing for the containers.
class IndexedModules : public Module {
 public:
  using Module::Module;
  std::size_t size() const { return items_.size(); }
  bool is_empty() const { return items_.empty(); }
  /// The i-th module (throws kiln::Error when out of range).
  const std::shared_ptr<Module>& operator[](std::size_t i) const {
    if (i >= items_.size()) detail::throw_bad_index(name().c_str(), i, items_.size());
    return items_[i];
  }
  /// The i-th module as its concrete type: `seq->at<nn::LinearImpl>(0).weight`.
  template <typename T>
  T& at(std::size_t i) const {
    return *ptr<T>(i);
  }
  template <typename T>
  std::shared_ptr<T> ptr(std::size_t i) const {
    auto p = std::dynamic_pointer_cast<T>((*this)[i]);
    if (!p) detail::throw_bad_cast(name().c_str(), i, *items_[i]);
    return p;
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 protected:
  void add(std::string name, std::shared_ptr<Module> m) {
    add_child(std::move(name), m);
    items_.push_back(std::move(m));
  }
  std::vector<std::shared_ptr<Module>> items_;
};

class SequentialImpl : public IndexedModules {
 public:
  SequentialImpl() : IndexedModules("Sequential") {}
  template <typename First, typename... Rest>
  explicit SequentialImpl(First&& first, Rest&&... rest) : SequentialImpl() {
    push_back(std::forward<First>(first));
    (push_back(std::forward<Rest>(rest)), ...);
  }

  /// Appends a module (named by its index) or a function Tensor -> Tensor (as a Functional).
  template <typename M>
  void push_back(M&& m) {
    push_back(std::to_string(size()), std::forward<M>(m));
  }
  template <typename M>
  void push_back(std::string name, M&& m) {
    using D = std::remove_cvref_t<M>;
    if constexpr (!is_module_holder_v<D> && !detail::is_shared_ptr<D>::value &&
                  std::is_invocable_r_v<Tensor, D&, const Tensor&>) {
      append(std::move(name), std::make_shared<FunctionalImpl>(std::forward<M>(m)));
    } else {
      append(std::move(name), detail::module_ptr(std::forward<M>(m)));
    }
  }

  /// Calls each module's forward on the previous one's output (identity when empty).
  Tensor forward(const Tensor& x);

 private:
  template <typename T>
  void append(std::string name, std::shared_ptr<T> m) {
    static_assert(
        requires(T & t, const Tensor& x) {
          { t.forward(x) } -> std::convertible_to<Tensor>;
        },
        "Sequential holds modules whose forward takes one Tensor and returns a Tensor");
    forwards_.push_back([raw = m.get()](const Tensor& x) -> Tensor { return raw->forward(x); });
    add(std::move(name), std::move(m));
  }
  std::vector<std::function<Tensor(const Tensor&)>> forwards_;
};
KILN_MODULE(Sequential);

class ModuleListImpl : public IndexedModules {
 public:
  ModuleListImpl() : IndexedModules("ModuleList") {}
  template <typename First, typename... Rest>
  explicit ModuleListImpl(First&& first, Rest&&... rest) : ModuleListImpl() {
    push_back(std::forward<First>(first));
    (push_back(std::forward<Rest>(rest)), ...);
  }
  /// Appends a module holder or shared_ptr, named by its index.
  template <typename M>
  void push_back(M&& m) {
    add(std::to_string(size()), detail::module_ptr(std::forward<M>(m)));
  }
  /// Appends every module of another list (shared, not copied).
  void extend(const ModuleListImpl& other) {
    for (const auto& m : other) add(std::to_string(size()), m);
  }
};
KILN_MODULE(ModuleList);

}  // namespace kiln::nn
