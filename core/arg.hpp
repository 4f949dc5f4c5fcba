#pragma once
/// KILN_ARG: the one way kiln declares an option (nn layers, functional ops, optimizers,
/// schedulers, checkpoints). It adds a chained setter and a getter, like TORCH_ARG:
///   struct FooOptions { KILN_ARG(double, eps) = 1e-5; };
///   FooOptions().eps(1e-6).eps()  // 1e-6
/// Types with commas need an alias first (`using Fn = std::function<void(Tensor, int)>;`).
#include <utility>

#define KILN_ARG(T, name)                                  \
 public:                                                   \
  auto name(T const& new_##name)->decltype(*this) {        \
    this->name##_ = new_##name;                            \
    return *this;                                          \
  }                                                        \
  auto name(T&& new_##name)->decltype(*this) {             \
    this->name##_ = std::move(new_##name);                 \
    return *this;                                          \
  }                                                        \
  T const& name() const noexcept { return this->name##_; } \
  T& name() noexcept { return this->name##_; }             \
                                                           \
 private:                                                  \
  T name##_
