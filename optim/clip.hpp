#pragma once
/// Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_), in place on .grad.
/// Parameters without a gradient are skipped.
///   loss.backward();
///   double norm = optim::clip_grad_norm_(net->parameters(), 1.0);   // global L2 norm before clipping
///   optim::clip_grad_value_(net->parameters(), 0.5);                // every entry into [-0.5, 0.5]
///   opt.step();
#include <vector>

#include "../core/tensor.hpp"

namespace kiln::optim {

/// Scales all gradients by min(1, max_norm / (total + 1e-6)), where total is the norm of order
/// `norm_type` (> 0, or infinity for the max-abs norm) of all gradients taken together as one
/// vector. Returns total. A NaN/Inf total throws when error_if_nonfinite; otherwise the
/// gradients are scaled by the resulting factor (NaN for a NaN norm, 0 for an infinite one),
/// as in PyTorch.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);

/// Clamps every gradient entry into [-clip_value, clip_value] (clip_value >= 0).
void clip_grad_value_(const std::vector<Tensor>& params, double clip_value);

}  // namespace kiln::optim
