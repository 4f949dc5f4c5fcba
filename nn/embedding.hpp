#pragma once
/// nn::Embedding — a lookup table (num_embeddings, embedding_dim) indexed by int64 ids of any
/// shape: ids (...) -> (..., embedding_dim).
///   nn::Embedding tok(nn::EmbeddingOptions(vocab, 64).padding_idx(0));
///   Tensor e = tok(ids);                 // row 0 starts at zero and never receives gradient
/// Default init N(0, 1) (as PyTorch), then the padding row set to 0.
#include <cstdint>
#include <optional>

#include "init.hpp"
#include "module.hpp"

namespace kiln::nn {

struct EmbeddingOptions {
  EmbeddingOptions(std::int64_t num_embeddings, std::int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}
  KILN_ARG(std::int64_t, num_embeddings);
  KILN_ARG(std::int64_t, embedding_dim);
  /// A row that is initialized to zero and gets no gradient (negative counts from the end).
  KILN_ARG(std::optional<std::int64_t>, padding_idx) = std::nullopt;
  /// Replaces the default N(0, 1) (the padding row is zeroed after it).
  KILN_ARG(InitFn, weight_init);
  /// Random numbers of the initializer (null = the default generator); it must outlive the layer.
  KILN_ARG(Generator*, generator) = nullptr;
};

class EmbeddingImpl : public Module {
 public:
  EmbeddingImpl(std::int64_t num_embeddings, std::int64_t embedding_dim)
      : EmbeddingImpl(EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit EmbeddingImpl(const EmbeddingOptions& options);

  void reset() override;
  void reset_parameters() override;
  std::string extra_repr() const override;
  /// int64 ids (...) -> (..., embedding_dim).
  Tensor forward(const Tensor& ids);

  EmbeddingOptions options;
  Tensor weight;  // (num_embeddings, embedding_dim)
};
KILN_MODULE(Embedding);

}  // namespace kiln::nn
