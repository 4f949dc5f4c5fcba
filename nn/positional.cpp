#include "positional.hpp"

#include "functional.hpp"

namespace kiln::nn {

namespace {
void check_options(std::int64_t max_len, std::int64_t dim, const char* op) {
  KILN_CHECK(max_len > 0 && dim > 0, op, "max_len and dim must be positive, got max_len={} dim={}", max_len, dim);
}

void check_range(std::int64_t length, std::int64_t offset, std::int64_t max_len, const char* op) {
  KILN_CHECK(length >= 0 && offset >= 0, op, "length and offset must be >= 0, got length={} offset={}", length, offset);
  KILN_CHECK(offset + length <= max_len, op,
             "sequence of length {} at offset {} needs positions up to {}, but max_len is {}", length, offset,
             offset + length, max_len);
}

void check_input(const Tensor& x, std::int64_t dim, const char* op) {
  KILN_CHECK(x.defined(), op, "input tensor is undefined");
  KILN_CHECK(x.dim() >= 2 && x.size(-1) == dim, op, "expected input (..., T, {}), got shape {}", dim,
             shape_str(x.shape()));
}
}  // namespace

SinusoidalPositionalEmbeddingImpl::SinusoidalPositionalEmbeddingImpl(const SinusoidalPositionalEmbeddingOptions& o)
    : Module("SinusoidalPositionalEmbedding"), options(o) {
  check_options(options.max_len(), options.dim(), "SinusoidalPositionalEmbedding");
  reset();
}

void SinusoidalPositionalEmbeddingImpl::reset() {
  pe = register_buffer("pe", functional::sinusoidal_positions(options.max_len(), options.dim(), 0, options.base()),
                       /*persistent=*/false);
}

std::string SinusoidalPositionalEmbeddingImpl::extra_repr() const {
  return fmt::format("max_len={}, dim={}, base={}", options.max_len(), options.dim(), options.base());
}

Tensor SinusoidalPositionalEmbeddingImpl::positions(std::int64_t length, std::int64_t offset) const {
  check_range(length, offset, options.max_len(), "SinusoidalPositionalEmbedding");
  return pe.narrow(0, offset, length);
}

Tensor SinusoidalPositionalEmbeddingImpl::forward(const Tensor& x, std::int64_t offset) {
  check_input(x, options.dim(), "SinusoidalPositionalEmbedding");
  return x + positions(x.size(-2), offset);
}

LearnedPositionalEmbeddingImpl::LearnedPositionalEmbeddingImpl(const LearnedPositionalEmbeddingOptions& o)
    : Module("LearnedPositionalEmbedding"), options(o) {
  check_options(options.max_len(), options.dim(), "LearnedPositionalEmbedding");
  reset();
}

void LearnedPositionalEmbeddingImpl::reset() {
  weight = register_parameter("weight", empty({options.max_len(), options.dim()}));
  reset_parameters();
}

void LearnedPositionalEmbeddingImpl::reset_parameters() {
  if (options.weight_init()) options.weight_init()(weight);
  else init::normal_(weight, 0.0, 0.02);
}

std::string LearnedPositionalEmbeddingImpl::extra_repr() const {
  return fmt::format("max_len={}, dim={}", options.max_len(), options.dim());
}

Tensor LearnedPositionalEmbeddingImpl::positions(std::int64_t length, std::int64_t offset) const {
  check_range(length, offset, options.max_len(), "LearnedPositionalEmbedding");
  return weight.narrow(0, offset, length);
}

Tensor LearnedPositionalEmbeddingImpl::forward(const Tensor& x, std::int64_t offset) {
  check_input(x, options.dim(), "LearnedPositionalEmbedding");
  return x + positions(x.size(-2), offset);
}

}  // namespace kiln::nn
