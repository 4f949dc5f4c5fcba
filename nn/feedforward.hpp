#pragma once
/// nn::FeedForward — the transformer MLP: fc1 -> activation -> dropout -> fc2, or with `gated`
/// the GLU form act(gate(x)) * fc1(x) -> dropout -> fc2 (SwiGLU with SiLU, GEGLU with GELU).
///   nn::FeedForward ff(nn::FeedForwardOptions(512).hidden_dim(2048).activation(nn::Activation::GELU).dropout(0.1));
///   nn::FeedForward swiglu(nn::FeedForwardOptions(512,
///   1376).activation(nn::Activation::SiLU).gated(true).bias(false)); Tensor y = ff(x);   // x (..., dim) -> (...,
///   out_dim)
#include <cstdint>

#include "dropout.hpp"
#include "functional.hpp"
#include "linear.hpp"
#include "module.hpp"

namespace kiln::nn {

struct FeedForwardOptions {
  /// hidden_dim 0 means 4 * dim.
  FeedForwardOptions(std::int64_t dim, std::int64_t hidden_dim = 0) : dim_(dim), hidden_dim_(hidden_dim) {}
  KILN_ARG(std::int64_t, dim);
  KILN_ARG(std::int64_t, hidden_dim);
  /// Output features; 0 means dim.
  KILN_ARG(std::int64_t, out_dim) = 0;
  KILN_ARG(Activation, activation) = Activation::GELU;
  KILN_ARG(bool, gated) = false;
  /// Dropout on the hidden activations.
  KILN_ARG(double, dropout) = 0.0;
  KILN_ARG(bool, bias) = true;
};

class FeedForwardImpl : public Module {
 public:
  FeedForwardImpl(std::int64_t dim, std::int64_t hidden_dim) : FeedForwardImpl(FeedForwardOptions(dim, hidden_dim)) {}
  explicit FeedForwardImpl(const FeedForwardOptions& options);

  void reset() override;
  std::string extra_repr() const override;
  Tensor forward(const Tensor& x);

  std::int64_t hidden_dim() const { return options.hidden_dim() > 0 ? options.hidden_dim() : 4 * options.dim(); }
  std::int64_t out_dim() const { return options.out_dim() > 0 ? options.out_dim() : options.dim(); }

  FeedForwardOptions options;
  Linear fc1{nullptr};
  Linear gate{nullptr};  // only when gated
  Dropout dropout{nullptr};
  Linear fc2{nullptr};
};
KILN_MODULE(FeedForward);

}  // namespace kiln::nn
