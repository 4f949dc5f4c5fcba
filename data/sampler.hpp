#pragma once
/// Samplers: the order in which a DataLoader visits a map-style dataset's indices, per epoch.
///
/// Every sampler is a pure function of its settings and the epoch (set_epoch), so an epoch can
/// be replayed (resume) and every rank of a distributed job agrees on the permutation.
///   data::RandomSampler shuffle(n);                    // key drawn from kiln's default generator
///   shuffle.set_epoch(3);  auto order = shuffle.indices();      // epoch 3's permutation
///   data::DistributedSampler shard(n);                 // this rank's share (kiln::distributed)
///   data::DistributedSampler r1(n, data::DistributedSamplerOptions().rank(1).world(4).seed(7));
///   data::BatchSampler batches(std::make_shared<data::SequentialSampler>(10), 4, /*drop_last=*/false);
///   batches.batches();                                 // {0,1,2,3} {4,5,6,7} {8,9}
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/arg.hpp"

namespace kiln {
class Generator;
}

namespace kiln::data {

class Sampler {
 public:
  virtual ~Sampler() = default;
  /// The indices of the current epoch, in visiting order.
  virtual std::vector<std::int64_t> indices() const = 0;
  /// How many indices() returns.
  virtual std::int64_t size() const = 0;
  virtual void set_epoch(std::uint64_t epoch) { epoch_ = epoch; }
  std::uint64_t epoch() const { return epoch_; }

 protected:
  std::uint64_t epoch_ = 0;
};

/// A random permutation of [0, n) that depends only on (key, epoch): Fisher-Yates driven by
/// Philox draws, the same on every machine and thread.
std::vector<std::int64_t> permutation(std::int64_t n, std::uint64_t key, std::uint64_t epoch);

/// 0, 1, ..., n-1 every epoch.
class SequentialSampler : public Sampler {
 public:
  explicit SequentialSampler(std::int64_t n);
  std::vector<std::int64_t> indices() const override;
  std::int64_t size() const override { return n_; }

 private:
  std::int64_t n_;
};

/// A new permutation of [0, n) per epoch (as PyTorch's DistributedSampler with shuffle, call
/// set_epoch before each epoch; the DataLoader does it). The key is drawn from `gen` at
/// construction (one Philox counter): seed the generator for a reproducible order.
class RandomSampler : public Sampler {
 public:
  explicit RandomSampler(std::int64_t n);  // draws the key from kiln::default_generator()
  RandomSampler(std::int64_t n, Generator& gen);
  std::vector<std::int64_t> indices() const override;
  std::int64_t size() const override { return n_; }
  std::uint64_t key() const { return key_; }

 private:
  std::int64_t n_;
  std::uint64_t key_;
};

/// What a DistributedSampler does when the dataset size n is not a multiple of the world size.
enum class Remainder {
  Pad,    // repeat the epoch's first indices until every rank has ceil(n / world) (PyTorch's default)
  Drop,   // leave out the epoch's last n % world indices: every rank has floor(n / world)
  Uneven  // every index once: the first n % world ranks have one index more
};

struct DistributedSamplerOptions {
  KILN_ARG(int, rank) = -1;   // -1: kiln::distributed::rank() (init() must have run)
  KILN_ARG(int, world) = -1;  // -1: kiln::distributed::world_size()
  KILN_ARG(bool, shuffle) = true;
  KILN_ARG(std::uint64_t, seed) = 0;  // the permutation's key: the same on every rank
  KILN_ARG(Remainder, remainder) = Remainder::Pad;
};

/// This rank's share of each epoch: the epoch's order (a permutation of (seed, epoch), or 0..n-1
/// without shuffle), padded or cut per `remainder`, then every world-th index from position rank.
/// Batch k of size b on every rank together is the positions [k*b*world, (k+1)*b*world) of that
/// order: each rank gets a disjoint share of every global batch of b * world examples.
class DistributedSampler : public Sampler {
 public:
  explicit DistributedSampler(std::int64_t n, DistributedSamplerOptions options = {});
  std::vector<std::int64_t> indices() const override;
  std::int64_t size() const override;
  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  std::int64_t n_;
  int rank_, world_;
  DistributedSamplerOptions options_;
};

/// Groups a sampler's indices into batches of batch_size (the last one smaller, or dropped
/// with drop_last).
class BatchSampler {
 public:
  BatchSampler(std::shared_ptr<Sampler> sampler, std::int64_t batch_size, bool drop_last);
  std::vector<std::vector<std::int64_t>> batches() const;
  /// The number of batches per epoch.
  std::int64_t size() const;
  void set_epoch(std::uint64_t epoch) { sampler_->set_epoch(epoch); }
  const Sampler& sampler() const { return *sampler_; }

 private:
  std::shared_ptr<Sampler> sampler_;
  std::int64_t batch_size_;
  bool drop_last_;
};

}  // namespace kiln::data
