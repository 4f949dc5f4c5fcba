#include "clip.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"
#include "../core/backend.hpp"

namespace kiln::optim {
namespace {

std::vector<Tensor> grads_of(const std::vector<Tensor>& params, const char* op) {
  std::vector<Tensor> out;
  for (std::size_t i = 0; i < params.size(); ++i) {
    KILN_CHECK(params[i].defined(), op, "parameter {} is an undefined tensor", i);
    Tensor g = params[i].grad();
    if (g.defined()) out.push_back(g);
  }
  return out;
}

// Norm of one gradient as a 0-d float64 tensor on `device` (no host round trip). A 16-bit
// gradient is widened first: its squares would overflow float16 past |g| = 256 (an inf norm,
// so a zero coefficient) and round to 8 bits in bfloat16; PyTorch's vector_norm computes in
// float32 too.
Tensor grad_norm(const Tensor& g16, double p, Device device) {
  const Tensor g = is_reduced_float(g16.dtype()) ? g16.to(kFloat32) : g16;
  Tensor n;
  if (g.numel() == 0) n = zeros({}, TensorOptions(g.dtype()).device(g.device()));
  else if (std::isinf(p)) n = amax(abs(g));
  else if (p == 2) n = sqrt(sum(square(g)));
  else if (p == 1) n = sum(abs(g));
  else n = pow(sum(pow(abs(g), p)), 1.0 / p);
  return n.to(device, kFloat64);
}

}  // namespace

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  const char* op = "clip_grad_norm_";
  KILN_CHECK(max_norm >= 0, op, "max_norm must be >= 0, got {}", max_norm);
  KILN_CHECK(norm_type > 0, op, "norm_type must be > 0 or infinity, got {}", norm_type);
  NoGradGuard ng;
  const std::vector<Tensor> grads = grads_of(params, op);
  if (grads.empty()) return 0.0;
  const Device dev = grads[0].device();
  std::vector<Tensor> norms;
  norms.reserve(grads.size());
  for (const Tensor& g : grads) norms.push_back(grad_norm(g, norm_type, dev));
  Tensor all = stack(norms);
  Tensor total_t = std::isinf(norm_type) ? amax(all)
                   : norm_type == 1      ? sum(all)
                                         : pow(sum(pow(all, norm_type)), 1.0 / norm_type);
  const double total = total_t.item<double>();  // the one host sync
  if (error_if_nonfinite && !std::isfinite(total))
    throw_error(op, fmt::format("the total norm of order {} of the gradients is {}, so they cannot be clipped; pass "
                                "error_if_nonfinite = false to scale them by it anyway",
                                norm_type, total));
  double coef = max_norm / (total + 1e-6);
  if (!std::isnan(coef)) coef = std::min(coef, 1.0);
  if (coef != 1.0)
    for (Tensor g : grads) g.mul_(coef);
  return total;
}

void clip_grad_value_(const std::vector<Tensor>& params, double clip_value) {
  const char* op = "clip_grad_value_";
  KILN_CHECK(clip_value >= 0, op, "clip_value must be >= 0, got {}", clip_value);
  NoGradGuard ng;
  for (Tensor g : grads_of(params, op)) {
    // In place through the backend: no temporary, any strides.
    backend_for(g.device(), op).unary(UnaryOp::Clamp, g, g, -clip_value, clip_value);
    g.bump_version();
  }
}

}  // namespace kiln::optim
