#include "functional.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../autograd/autocast.hpp"

namespace kiln::nn {

const char* to_string(Activation a) {
  switch (a) {
    case Activation::ReLU: return "relu";
    case Activation::GELU: return "gelu";
    case Activation::GELUTanh: return "gelu_tanh";
    case Activation::SiLU: return "silu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::Identity: break;
  }
  return "identity";
}

}  // namespace kiln::nn

namespace kiln::nn::functional {

Tensor embedding(const Tensor& input, const Tensor& weight, std::optional<std::int64_t> padding_idx) {
  Tensor out = kiln::embedding(input, weight);
  if (!padding_idx) return out;
  const std::int64_t num = weight.size(0);
  std::int64_t pad = *padding_idx;
  KILN_CHECK(pad >= -num && pad < num, "embedding", "padding_idx {} out of range for {} embeddings", pad, num);
  if (pad < 0) pad += num;
  if (!out.requires_grad()) return out;
  // Padded positions take their value from a detached copy, so no gradient reaches that row.
  // The mask costs one pass over the output, not over the (much larger) table.
  Tensor is_pad = (input == Scalar(pad)).unsqueeze(-1);
  return where(is_pad, out.detach(), out);
}

Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, std::optional<double> eps) {
  // Under autocast the statistics and the output are float32 (no-ops otherwise).
  if (Tensor xc = autocast_input(x, AutocastPolicy::Float32), wc = autocast_input(weight, AutocastPolicy::Float32);
      !xc.is_same(x) || !wc.is_same(weight))
    return rms_norm(xc, normalized_shape, wc, eps);
  KILN_CHECK(x.defined(), "rms_norm", "input tensor is undefined");
  KILN_CHECK(x.is_floating_point(), "rms_norm", "expected a floating point input, got {}", dtype_name(x.dtype()));
  const auto k = static_cast<std::int64_t>(normalized_shape.size());
  bool fits = k >= 1 && k <= x.dim();
  for (std::int64_t i = 0; fits && i < k; ++i)
    fits = x.size(x.dim() - k + i) == normalized_shape[static_cast<std::size_t>(i)];
  KILN_CHECK(fits, "rms_norm", "input shape {} does not end with normalized_shape {}", shape_str(x.shape()),
             shape_str(normalized_shape));
  if (weight.defined())
    KILN_CHECK(weight.shape() == normalized_shape, "rms_norm", "weight shape {} must equal normalized_shape {}",
               shape_str(weight.shape()), shape_str(normalized_shape));
  // The machine epsilon of x's dtype: 2^-52, 2^-23, and 2^-7 / 2^-10 for bfloat16 / float16.
  const double dtype_eps = x.dtype() == kFloat64    ? std::numeric_limits<double>::epsilon()
                           : x.dtype() == kBFloat16 ? 0.0078125
                           : x.dtype() == kFloat16  ? 0.0009765625
                                                    : std::numeric_limits<float>::epsilon();
  double e = eps.value_or(dtype_eps);
  KILN_CHECK(e >= 0, "rms_norm", "eps must be >= 0, got {}", e);
  Dims dims;
  for (std::int64_t i = x.dim() - k; i < x.dim(); ++i) dims.push_back(i);
  // bfloat16/float16 inputs are normalized in float32 and rounded once.
  const Tensor xc = is_reduced_float(x.dtype()) ? kiln::to(x, kFloat32) : x;
  Tensor y = kiln::to(xc * rsqrt(mean(square(xc), dims, /*keepdim=*/true) + e), x.dtype());
  return weight.defined() ? y * weight : y;
}

Tensor activation(const Tensor& x, Activation a) {
  switch (a) {
    case Activation::ReLU: return relu(x);
    case Activation::GELU: return gelu(x);
    case Activation::GELUTanh: return gelu(x, "tanh");
    case Activation::SiLU: return silu(x);
    case Activation::Tanh: return kiln::tanh(x);
    case Activation::Sigmoid: return sigmoid(x);
    case Activation::Identity: break;
  }
  return x;
}

Tensor sinusoidal_positions(std::int64_t length, std::int64_t dim, std::int64_t offset, double base,
                            TensorOptions opts) {
  KILN_CHECK(length >= 0 && dim > 0 && offset >= 0, "sinusoidal_positions",
             "need length >= 0, dim > 0 and offset >= 0, got length={} dim={} offset={}", length, dim, offset);
  KILN_CHECK(base > 0, "sinusoidal_positions", "base must be positive, got {}", base);
  std::vector<double> v(static_cast<std::size_t>(length * dim));
  for (std::int64_t p = 0; p < length; ++p)
    for (std::int64_t j = 0; j < dim; ++j) {
      double freq = std::pow(base, -static_cast<double>(j - j % 2) / static_cast<double>(dim));
      double angle = static_cast<double>(p + offset) * freq;
      v[static_cast<std::size_t>(p * dim + j)] = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
    }
  Tensor t = tensor(v, {length, dim}, kFloat64);
  return t.to(opts.device(), opts.dtype());
}

}  // namespace kiln::nn::functional
