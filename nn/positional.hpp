#pragma once
/// Positional embeddings for (..., T, dim) inputs, batch first.
///   nn::SinusoidalPositionalEmbedding pos(/*max_len=*/1024, /*dim=*/64);   // fixed table, no parameters
///   Tensor h = pos(x);                  // x + table[0:T]
///   Tensor h2 = pos(x, /*offset=*/t0);  // x + table[t0:t0+T] (decoding with a KV cache)
///   Tensor p = pos->positions(T);       // the (T, dim) table itself
///   nn::LearnedPositionalEmbedding wpe(1024, 64);                        // weight (1024, 64), trained
/// Positions past max_len raise kiln::Error naming the layer and the lengths.
#include <cstdint>

#include "init.hpp"
#include "module.hpp"

namespace kiln::nn {

struct SinusoidalPositionalEmbeddingOptions {
  SinusoidalPositionalEmbeddingOptions(std::int64_t max_len, std::int64_t dim) : max_len_(max_len), dim_(dim) {}
  KILN_ARG(std::int64_t, max_len);
  KILN_ARG(std::int64_t, dim);
  KILN_ARG(double, base) = 10000.0;
};

/// pe[p, 2i] = sin(p / base^(2i/dim)), pe[p, 2i+1] = cos(p / base^(2i/dim)) (Vaswani et al.).
/// The table is a non-persistent buffer "pe": it follows to() but is not in state_dict().
class SinusoidalPositionalEmbeddingImpl : public Module {
 public:
  SinusoidalPositionalEmbeddingImpl(std::int64_t max_len, std::int64_t dim)
      : SinusoidalPositionalEmbeddingImpl(SinusoidalPositionalEmbeddingOptions(max_len, dim)) {}
  explicit SinusoidalPositionalEmbeddingImpl(const SinusoidalPositionalEmbeddingOptions& options);

  void reset() override;
  std::string extra_repr() const override;
  /// x (..., T, dim) + pe[offset : offset + T].
  Tensor forward(const Tensor& x, std::int64_t offset = 0);
  /// pe[offset : offset + length], shape (length, dim).
  Tensor positions(std::int64_t length, std::int64_t offset = 0) const;

  SinusoidalPositionalEmbeddingOptions options;
  Tensor pe;  // (max_len, dim)
};
KILN_MODULE(SinusoidalPositionalEmbedding);

struct LearnedPositionalEmbeddingOptions {
  LearnedPositionalEmbeddingOptions(std::int64_t max_len, std::int64_t dim) : max_len_(max_len), dim_(dim) {}
  KILN_ARG(std::int64_t, max_len);
  KILN_ARG(std::int64_t, dim);
  /// Default: N(0, 0.02^2) (GPT-2).
  KILN_ARG(InitFn, weight_init);
};

class LearnedPositionalEmbeddingImpl : public Module {
 public:
  LearnedPositionalEmbeddingImpl(std::int64_t max_len, std::int64_t dim)
      : LearnedPositionalEmbeddingImpl(LearnedPositionalEmbeddingOptions(max_len, dim)) {}
  explicit LearnedPositionalEmbeddingImpl(const LearnedPositionalEmbeddingOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;
  /// x (..., T, dim) + weight[offset : offset + T].
  Tensor forward(const Tensor& x, std::int64_t offset = 0);
  /// weight[offset : offset + length], shape (length, dim) (differentiable).
  Tensor positions(std::int64_t length, std::int64_t offset = 0) const;

  LearnedPositionalEmbeddingOptions options;
  Tensor weight;  // (max_len, dim)
};
KILN_MODULE(LearnedPositionalEmbedding);

}  // namespace kiln::nn
