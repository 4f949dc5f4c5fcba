#pragma once
/// nn::RotaryEmbedding — rotary position embedding (RoPE, Su et al. 2021) of q or k per head.
/// Each pair of features (a, b) at position p is rotated by the angle p * theta_i, with
/// theta_i = base^(-2i / rotary_dim), i = 0 .. rotary_dim/2 - 1:
///   a' = a cos - b sin,   b' = b cos + a sin.
/// So q_m . k_n after rotation depends only on the offset m - n. Pairs are (i, i + rotary_dim/2)
/// (half-split: GPT-NeoX, LLaMA, Hugging Face) or (2i, 2i + 1) with `.interleaved(true)`
/// (GPT-J, RoFormer). Features from rotary_dim on pass through unchanged (partial rotary).
///
///   nn::RotaryEmbedding rope(nn::RotaryEmbeddingOptions(64).base(10000));
///   Tensor qr = rope(q, 0);                   // q (batch..., H, T, 64), positions 0 .. T-1
///   Tensor kr = rope->forward(k, pos);        // pos: int64 (or float) broadcastable to (batch..., H, T)
///   // inside attention (see MultiHeadAttentionOptions::rotary), positions follow the KV cache.
///
/// Angles are computed in float64 and cast to x's dtype; differentiable w.r.t. x (not positions).
/// Holds no parameters or buffers.
#include <cstdint>

#include "module.hpp"

namespace kiln::nn {

struct RotaryEmbeddingOptions {
  /// rotary_dim: how many leading features of each head are rotated (even, <= head_dim).
  explicit RotaryEmbeddingOptions(std::int64_t dim) : dim_(dim) {}
  KILN_ARG(std::int64_t, dim);
  /// Wavelength base of the frequencies.
  KILN_ARG(double, base) = 10000.0;
  /// Rotate adjacent pairs (2i, 2i+1) instead of (i, i + dim/2).
  KILN_ARG(bool, interleaved) = false;
};

class RotaryEmbeddingImpl : public Module {
 public:
  explicit RotaryEmbeddingImpl(std::int64_t dim) : RotaryEmbeddingImpl(RotaryEmbeddingOptions(dim)) {}
  explicit RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options);
  std::string extra_repr() const override;

  /// x (..., L, D) with D >= dim; positions (int64 or floating point; fractional positions give
  /// position interpolation) broadcastable to x's shape without its last dim, e.g. (L,) or
  /// (batch..., 1, L) for x (batch..., H, L, D).
  Tensor forward(const Tensor& x, const Tensor& positions);
  /// Positions offset, offset + 1, ..., offset + L - 1 along x's second-to-last dim.
  Tensor forward(const Tensor& x, std::int64_t offset = 0);

  /// cos and sin of the angles, (positions..., dim / 2) in `dtype`.
  std::pair<Tensor, Tensor> cos_sin(const Tensor& positions, DType dtype) const;

  RotaryEmbeddingOptions options;
};
KILN_MODULE(RotaryEmbedding);

}  // namespace kiln::nn
