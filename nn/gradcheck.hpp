#pragma once
/// Gradient check of a module: autograd::gradcheck over the inputs that require grad and every
/// trainable parameter of the module, each compared with float64 central differences.
///
///   MyBlock block(8, 16);
///   block->to(kiln::kFloat64);   // gradcheck needs float64 parameters on the CPU
///   block->eval();               // and a deterministic forward (no dropout draws)
///   Tensor x = kiln::randn({2, 3, 8}, kiln::kFloat64).requires_grad_();
///   nn::gradcheck(block, [&](const std::vector<Tensor>& in) { return block(in[0]); }, {x});
///
/// fn receives `inputs` only; the parameters are perturbed in place (restored after each
/// evaluation), so fn must run the module itself. A mismatch names the parameter:
/// "[gradcheck] Jacobian mismatch for parameter fc1.weight (shape (16, 8)) at ...". Keep the
/// sizes tiny: each input/parameter element costs two forward passes.
#include <functional>
#include <vector>

#include "../autograd/gradcheck.hpp"
#include "module.hpp"

namespace kiln::nn {

bool gradcheck(const Module& module, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
               const std::vector<Tensor>& inputs, const autograd::GradcheckOptions& opts = {});

template <typename H>
requires is_module_holder_v<H>
bool gradcheck(const H& module, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
               const std::vector<Tensor>& inputs, const autograd::GradcheckOptions& opts = {}) {
  return gradcheck(*module, fn, inputs, opts);
}

}  // namespace kiln::nn
