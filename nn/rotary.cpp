#include "rotary.hpp"

#include <cmath>
#include <vector>

namespace kiln::nn {

namespace {

constexpr const char* kOp = "RotaryEmbedding";

}  // namespace

RotaryEmbeddingImpl::RotaryEmbeddingImpl(const RotaryEmbeddingOptions& o) : Module("RotaryEmbedding"), options(o) {
  KILN_CHECK(o.dim() > 0 && o.dim() % 2 == 0, kOp, "dim (the rotated features) must be positive and even, got {}",
             o.dim());
  KILN_CHECK(std::isfinite(o.base()) && o.base() > 0.0, kOp, "base must be positive and finite, got {}", o.base());
}

std::string RotaryEmbeddingImpl::extra_repr() const {
  return fmt::format("dim={}, base={}{}", options.dim(), options.base(),
                     options.interleaved() ? ", interleaved=true" : "");
}

std::pair<Tensor, Tensor> RotaryEmbeddingImpl::cos_sin(const Tensor& positions, DType dtype) const {
  const std::int64_t half = options.dim() / 2;
  std::vector<double> inv(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inv[static_cast<std::size_t>(i)] =
        std::pow(options.base(), -2.0 * static_cast<double>(i) / static_cast<double>(options.dim()));
  Tensor invf = tensor(inv, {half}, TensorOptions(kFloat64).device(positions.device()));
  // float64 angles: p * theta in float32 loses ~1e-4 radians already at p ~ 1000
  Tensor ang = unsqueeze(kiln::to(positions.detach(), kFloat64), -1) * invf;
  return {kiln::to(cos(ang), dtype), kiln::to(sin(ang), dtype)};
}

Tensor RotaryEmbeddingImpl::forward(const Tensor& x, const Tensor& positions) {
  const std::int64_t r = options.dim(), half = r / 2;
  check_floating_input(kOp, x);
  KILN_CHECK(positions.defined(), kOp, "positions tensor is undefined");
  KILN_CHECK(x.dim() >= 2 && x.size(-1) >= r, kOp, "expected input (..., L, D) with D >= dim={}, got shape {}", r,
             shape_str(x.shape()));
  KILN_CHECK(positions.dtype() == kInt64 || positions.is_floating_point(), kOp,
             "positions must be int64 or floating point, got {}", dtype_name(positions.dtype()));
  const Shape lead(x.shape().begin(), x.shape().end() - 1);
  KILN_CHECK(broadcastable(positions.shape(), lead), kOp,
             "positions of shape {} cannot be broadcast to the input's {} (its shape {} without the feature dim)",
             shape_str(positions.shape()), shape_str(lead), shape_str(x.shape()));
  auto [c, s] = cos_sin(positions, x.dtype());  // (positions..., half)
  const std::int64_t D = x.size(-1);
  Tensor xr = r == D ? x : x.slice(-1, 0, r);
  Tensor out;
  if (!options.interleaved()) {
    Tensor a = xr.slice(-1, 0, half), b = xr.slice(-1, half, r);
    out = cat({a * c - b * s, b * c + a * s}, -1);
  } else {
    Shape pairs = xr.shape();
    pairs.back() = half;
    pairs.push_back(2);
    Tensor xp = reshape(xr, pairs);  // (..., half, 2)
    Tensor a = xp.select(-1, 0), b = xp.select(-1, 1);
    out = reshape(stack({a * c - b * s, b * c + a * s}, -1), xr.shape());
  }
  if (r < D) out = cat({out, x.slice(-1, r, D)}, -1);
  return out;
}

Tensor RotaryEmbeddingImpl::forward(const Tensor& x, std::int64_t offset) {
  check_floating_input(kOp, x);
  KILN_CHECK(x.defined() && x.dim() >= 2, kOp, "expected input (..., L, D), got {}",
             x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  const std::int64_t L = x.size(-2);
  return forward(x, arange(offset, offset + L, 1, TensorOptions(kInt64).device(x.device())));
}

}  // namespace kiln::nn
