#include "embedding.hpp"

#include "functional.hpp"

namespace kiln::nn {

EmbeddingImpl::EmbeddingImpl(const EmbeddingOptions& options_) : Module("Embedding"), options(options_) {
  const std::int64_t n = options.num_embeddings();
  KILN_CHECK(n >= 0 && options.embedding_dim() >= 0, "Embedding",
             "num_embeddings and embedding_dim must be >= 0, got {} and {}", n, options.embedding_dim());
  if (auto p = options.padding_idx()) {
    KILN_CHECK(*p >= -n && *p < n, "Embedding", "padding_idx {} out of range for {} embeddings", *p, n);
    if (*p < 0) options.padding_idx(*p + n);
  }
  reset();
}

void EmbeddingImpl::reset() {
  weight = register_parameter("weight", empty({options.num_embeddings(), options.embedding_dim()}));
  reset_parameters();
}

void EmbeddingImpl::reset_parameters() {
  if (options.weight_init()) options.weight_init()(weight, options.generator());
  else init::normal_(weight, 0.0, 1.0, options.generator());
  if (auto p = options.padding_idx()) init::zeros_(weight.select(0, *p));
}

std::string EmbeddingImpl::extra_repr() const {
  std::string s = fmt::format("{}, {}", options.num_embeddings(), options.embedding_dim());
  if (auto p = options.padding_idx()) s += fmt::format(", padding_idx={}", *p);
  return s;
}

Tensor EmbeddingImpl::forward(const Tensor& ids) {
  KILN_CHECK(ids.defined(), "Embedding", "input tensor is undefined");
  KILN_CHECK(ids.dtype() == kInt64, "Embedding", "input dtype {} is not supported: expected int64 indices",
             dtype_name(ids.dtype()));
  return functional::embedding(ids, weight, options.padding_idx());
}

}  // namespace kiln::nn
