#include "functional.hpp"

#include <fmt/format.h>

#include <cmath>
#include <vector>

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
