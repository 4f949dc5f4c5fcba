#include "positional.hpp"

#include "functional.hpp"

namespace kiln::nn {

PositionalEmbeddingBase::PositionalEmbeddingBase(std::string name, std::int64_t max_len, std::int64_t dim)
    : Module(std::move(name)) {
  KILN_CHECK(max_len > 0 && dim > 0, this->name().c_str(), "max_len and dim must be positive, got max_len={} dim={}",
             max_len, dim);
}

Tensor PositionalEmbeddingBase::positions(std::int64_t length, std::int64_t offset) const {
  const char* op = name().c_str();
  const std::int64_t max_len = table().size(0);
  KILN_CHECK(length >= 0 && offset >= 0, op, "length and offset must be >= 0, got length={} offset={}", length, offset);
  KILN_CHECK(offset + length <= max_len, op,
             "sequence of length {} at offset {} needs positions up to {}, but max_len is {}", length, offset,
             offset + length, max_len);
  return table().narrow(0, offset, length);
}

Tensor PositionalEmbeddingBase::forward(const Tensor& x, std::int64_t offset) {
  const std::int64_t dim = table().size(1);
  check_floating_input(name().c_str(), x);
  KILN_CHECK(x.dim() >= 2 && x.size(-1) == dim, name().c_str(), "expected input (..., T, {}), got shape {}", dim,
             shape_str(x.shape()));
  return x + positions(x.size(-2), offset);
}

SinusoidalPositionalEmbeddingImpl::SinusoidalPositionalEmbeddingImpl(const SinusoidalPositionalEmbeddingOptions& o)
    : PositionalEmbeddingBase("SinusoidalPositionalEmbedding", o.max_len(), o.dim()), options(o) {
  reset();
}

void SinusoidalPositionalEmbeddingImpl::reset() {
  pe = register_buffer("pe", functional::sinusoidal_positions(options.max_len(), options.dim(), 0, options.base()),
                       /*persistent=*/false);
}

std::string SinusoidalPositionalEmbeddingImpl::extra_repr() const {
  return fmt::format("max_len={}, dim={}, base={}", options.max_len(), options.dim(), options.base());
}

LearnedPositionalEmbeddingImpl::LearnedPositionalEmbeddingImpl(const LearnedPositionalEmbeddingOptions& o)
    : PositionalEmbeddingBase("LearnedPositionalEmbedding", o.max_len(), o.dim()), options(o) {
  reset();
}

void LearnedPositionalEmbeddingImpl::reset() {
  weight = register_parameter("weight", empty({options.max_len(), options.dim()}));
  reset_parameters();
}

void LearnedPositionalEmbeddingImpl::reset_parameters() {
  if (options.weight_init()) options.weight_init()(weight, options.generator());
  else init::normal_(weight, 0.0, 0.02, options.generator());
}

std::string LearnedPositionalEmbeddingImpl::extra_repr() const {
  return fmt::format("max_len={}, dim={}", options.max_len(), options.dim());
}

}  // namespace kiln::nn
