#pragma once
/// Finite-difference check of a function's gradients (central differences, float64).
///   auto x = kiln::randn({3, 4}, kiln::kFloat64).requires_grad_();
///   kiln::autograd::gradcheck([](const std::vector<kiln::Tensor>& in) { return kiln::tanh(in[0]); }, {x});
/// Throws kiln::Error describing the first mismatching Jacobian entry (or returns
/// false with raise_on_failure = false). Inputs are CPU float64 tensors; those
/// with requires_grad are checked. fn must be deterministic.
#include <functional>
#include <string>
#include <vector>

#include "../core/arg.hpp"
#include "../core/tensor.hpp"

namespace kiln::autograd {

/// `GradcheckOptions().eps(1e-4).atol(1e-3)`.
struct GradcheckOptions {
  /// Finite-difference step.
  KILN_ARG(double, eps) = 1e-6;
  /// An entry passes when |numerical - analytical| <= atol + rtol * |numerical|.
  KILN_ARG(double, atol) = 1e-5;
  KILN_ARG(double, rtol) = 1e-3;
  /// Throw on the first mismatch (true) or return false.
  KILN_ARG(bool, raise_on_failure) = true;
  /// Names for the inputs in error messages ("parameter fc1.weight"), one per input; empty =
  /// "input <i>". nn::gradcheck (nn/gradcheck.hpp) fills it for a module's parameters.
  KILN_ARG(std::vector<std::string>, input_names);
};

bool gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs,
               const GradcheckOptions& opts = {});

}  // namespace kiln::autograd
