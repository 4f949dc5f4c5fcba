#pragma once
/// Positional embeddings for (..., T, dim) inputs, batch first.
///   nn::SinusoidalPositionalEmbedding pos(/*max_len=*/1024, /*dim=*/64);   // fixed table, no parameters
///   Tensor h = pos(x);                  // x + table[0:T]
///   Tensor h2 = pos(x, /*offset=*/t0);  // x + table[t0:t0+T] (decoding with a KV cache)
///   Tensor p = pos->positions(T);       // the (T, dim) table itself
///   nn::LearnedPositionalEmbedding wpe(1024, 64);                        // weight (1024, 64), trained
/// Positions past max_len raise kiln::Error naming the layer and the lengths.
#include <cstdint>
#include <string>

#include "init.hpp"
#include "module.hpp"

namespace kiln::nn {

/// What both positional embeddings share: a (max_len, dim) table added to (..., T, dim) inputs
/// at an offset. Subclasses provide the table.
class PositionalEmbeddingBase : public Module {
 public:
  /// x (..., T, dim) + table[offset : offset + T].
  Tensor forward(const Tensor& x, std::int64_t offset = 0);
  /// table[offset : offset + length], shape (length, dim) (differentiable when the table is).
  Tensor positions(std::int64_t length, std::int64_t offset = 0) const;

 protected:
  /// Checks max_len > 0 and dim > 0, naming the layer `name`.
  PositionalEmbeddingBase(std::string name, std::int64_t max_len, std::int64_t dim);
  virtual const Tensor& table() const = 0;
};

struct SinusoidalPositionalEmbeddingOptions {
  SinusoidalPositionalEmbeddingOptions(std::int64_t max_len, std::int64_t dim) : max_len_(max_len), dim_(dim) {}
  KILN_ARG(std::int64_t, max_len);
  KILN_ARG(std::int64_t, dim);
  KILN_ARG(double, base) = 10000.0;
};

/// pe[p, 2i] = sin(p / base^(2i/dim)), pe[p, 2i+1] = cos(p / base^(2i/dim)) (Vaswani et al.).
/// The table is a non-persistent buffer "pe": it follows to() but is not in state_dict().
class SinusoidalPositionalEmbeddingImpl : public PositionalEmbeddingBase {
 public:
  SinusoidalPositionalEmbeddingImpl(std::int64_t max_len, std::int64_t dim)
      : SinusoidalPositionalEmbeddingImpl(SinusoidalPositionalEmbeddingOptions(max_len, dim)) {}
  explicit SinusoidalPositionalEmbeddingImpl(const SinusoidalPositionalEmbeddingOptions& options);

  void reset() override;
  std::string extra_repr() const override;

  SinusoidalPositionalEmbeddingOptions options;
  Tensor pe;  // (max_len, dim)

 protected:
  const Tensor& table() const override { return pe; }
};
KILN_MODULE(SinusoidalPositionalEmbedding);

struct LearnedPositionalEmbeddingOptions {
  LearnedPositionalEmbeddingOptions(std::int64_t max_len, std::int64_t dim) : max_len_(max_len), dim_(dim) {}
  KILN_ARG(std::int64_t, max_len);
  KILN_ARG(std::int64_t, dim);
  /// Default: N(0, 0.02^2) (GPT-2).
  KILN_ARG(InitFn, weight_init);
  /// Random numbers of the initializer (null = the default generator); it must outlive the layer.
  KILN_ARG(Generator*, generator) = nullptr;
};

class LearnedPositionalEmbeddingImpl : public PositionalEmbeddingBase {
 public:
  LearnedPositionalEmbeddingImpl(std::int64_t max_len, std::int64_t dim)
      : LearnedPositionalEmbeddingImpl(LearnedPositionalEmbeddingOptions(max_len, dim)) {}
  explicit LearnedPositionalEmbeddingImpl(const LearnedPositionalEmbeddingOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;

  LearnedPositionalEmbeddingOptions options;
  Tensor weight;  // (max_len, dim)

 protected:
  const Tensor& table() const override { return weight; }
};
KILN_MODULE(LearnedPositionalEmbedding);

}  // namespace kiln::nn
