#include "sampler.hpp"

#include <fmt/format.h>

#include <numeric>

#include "../core/error.hpp"
#include "../core/generator.hpp"
#include "../distributed/process_group.hpp"

namespace kiln::data {

namespace {

void check_size(const char* op, std::int64_t n) { KILN_CHECK(n >= 0, op, "the dataset size must be >= 0, got {}", n); }

std::uint64_t draw_key(Generator& gen) {
  auto r = philox4x32(gen.seed(), gen.reserve(1));
  return (static_cast<std::uint64_t>(r[0]) << 32) | r[1];
}

}  // namespace

std::vector<std::int64_t> permutation(std::int64_t n, std::uint64_t key, std::uint64_t epoch) {
  check_size("permutation", n);
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), std::int64_t{0});
  for (std::int64_t i = n - 1; i > 0; --i) {
    // 64 random bits scaled to [0, i]: the bias is below (i + 1) / 2^64.
    auto r = philox4x32(key, static_cast<std::uint64_t>(i), epoch);
    const std::uint64_t bits = (static_cast<std::uint64_t>(r[0]) << 32) | r[1];
    const auto j =
        static_cast<std::int64_t>((static_cast<unsigned __int128>(bits) * static_cast<std::uint64_t>(i + 1)) >> 64);
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
  }
  return p;
}

SequentialSampler::SequentialSampler(std::int64_t n) : n_(n) { check_size("SequentialSampler", n); }

std::vector<std::int64_t> SequentialSampler::indices() const {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n_));
  std::iota(idx.begin(), idx.end(), std::int64_t{0});
  return idx;
}

RandomSampler::RandomSampler(std::int64_t n) : RandomSampler(n, default_generator()) {}

RandomSampler::RandomSampler(std::int64_t n, Generator& gen) : n_(n), key_(draw_key(gen)) {
  check_size("RandomSampler", n);
}

std::vector<std::int64_t> RandomSampler::indices() const { return permutation(n_, key_, epoch_); }

DistributedSampler::DistributedSampler(std::int64_t n, DistributedSamplerOptions options) : n_(n), options_(options) {
  check_size("DistributedSampler", n);
  KILN_CHECK(options.rank() >= -1 && options.world() >= -1, "DistributedSampler",
             "rank {} / world {}: -1 means this process's (kiln::distributed), other negative values are invalid",
             options.rank(), options.world());
  if (options.rank() < 0 || options.world() < 0)
    KILN_CHECK(distributed::is_initialized(), "DistributedSampler",
               "rank {} / world {}: pass both, or call kiln::distributed::init() first", options.rank(),
               options.world());
  world_ = options.world() < 0 ? distributed::world_size() : options.world();
  rank_ = options.rank() < 0 ? distributed::rank() : options.rank();
  KILN_CHECK(world_ >= 1, "DistributedSampler", "world size must be >= 1, got {}", world_);
  KILN_CHECK(rank_ < world_, "DistributedSampler", "rank {} is out of range for a world of {}", rank_, world_);
  KILN_CHECK(options.remainder() != Remainder::Pad || n > 0 || world_ == 1, "DistributedSampler",
             "cannot pad an empty dataset to {} ranks", world_);
}

std::int64_t DistributedSampler::size() const {
  const std::int64_t w = world_;
  switch (options_.remainder()) {
    case Remainder::Pad: return (n_ + w - 1) / w;
    case Remainder::Drop: return n_ / w;
    case Remainder::Uneven: break;
  }
  return n_ / w + (rank_ < n_ % w ? 1 : 0);
}

std::vector<std::int64_t> DistributedSampler::indices() const {
  std::vector<std::int64_t> order;
  if (options_.shuffle()) {
    order = permutation(n_, options_.seed(), epoch_);
  } else {
    order.resize(static_cast<std::size_t>(n_));
    std::iota(order.begin(), order.end(), std::int64_t{0});
  }
  const std::int64_t mine = size();
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(mine));
  for (std::int64_t j = 0; j < mine; ++j) {
    // Padding wraps around the epoch's order (more than once when world > n).
    const std::int64_t pos = (rank_ + j * world_) % n_;
    out.push_back(order[static_cast<std::size_t>(pos)]);
  }
  return out;
}

BatchSampler::BatchSampler(std::shared_ptr<Sampler> sampler, std::int64_t batch_size, bool drop_last)
    : sampler_(std::move(sampler)), batch_size_(batch_size), drop_last_(drop_last) {
  KILN_CHECK(sampler_ != nullptr, "BatchSampler", "the sampler is null");
  KILN_CHECK(batch_size > 0, "BatchSampler", "batch size must be > 0, got {}", batch_size);
}

std::int64_t BatchSampler::size() const {
  const std::int64_t n = sampler_->size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

std::vector<std::vector<std::int64_t>> BatchSampler::batches() const {
  const std::vector<std::int64_t> idx = sampler_->indices();
  std::vector<std::vector<std::int64_t>> out;
  for (std::size_t b = 0; b < idx.size(); b += static_cast<std::size_t>(batch_size_)) {
    const std::size_t e = std::min(idx.size(), b + static_cast<std::size_t>(batch_size_));
    if (drop_last_ && e - b < static_cast<std::size_t>(batch_size_)) break;
    out.emplace_back(idx.begin() + static_cast<std::ptrdiff_t>(b), idx.begin() + static_cast<std::ptrdiff_t>(e));
  }
  return out;
}

}  // namespace kiln::data
