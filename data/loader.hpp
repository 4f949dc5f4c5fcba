#pragma once
/// DataLoader: batches from a dataset, optionally prefetched on worker threads.
///
///   namespace data = kiln::data;
///   auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{images, labels});
///   kiln::Generator gen(42);
///   data::DataLoader loader(ds, data::DataLoaderOptions().batch_size(64).shuffle(true)
///                                   .generator(&gen).num_workers(2));
///   for (int epoch = 0; epoch < 10; ++epoch)
///     for (data::Batch& batch : loader) {       // batch[0]: (64, 28, 28), batch[1]: (64,)
///       Tensor loss = cross_entropy(model(batch[0]), batch[1]);  ...
///     }
///
/// Each range-for is one epoch; the loader numbers them 0, 1, ... (set_epoch(e) sets the next
/// one, e.g. on resume) and passes the number to the sampler and the dataset. Batches are the
/// same, in the same order, whatever num_workers: batch k is always the sampler's k-th group of
/// indices collated in index order. With workers, up to `prefetch` batches per worker are made
/// ahead on background threads (a bounded queue); an exception thrown while making batch k
/// (by the dataset, a transform or collate) is re-thrown by the iterator when it reaches batch k.
/// Leaving the loop early (break, an exception) destroys the iterator, which stops the workers
/// and joins them (each finishes at most the batch it is making). Workers run kiln's kernels
/// single-threaded (SingleThreadGuard) so they do not compete with the OpenMP compute pool,
/// and under NoGradGuard: batches carry no autograd history.
///
/// With pin_memory, batches come in page-locked host memory (pinned on the worker threads), so
/// `batch[0].to(Device::cuda(0), /*non_blocking=*/true)` copies asynchronously while the next
/// step is queued (see Tensor::to).
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "../core/arg.hpp"
#include "dataset.hpp"
#include "sampler.hpp"

namespace kiln::data {

/// A collated batch: one tensor per field.
using Batch = std::vector<Tensor>;
using Collate = std::function<Batch(std::vector<Example>&&)>;

/// Stacks field f of every example along a new dim 0 (shapes and dtypes must agree per field):
/// kiln::Error "[default_collate] ..." naming the field and the example otherwise.
Batch default_collate(std::vector<Example>&& examples);

struct DataLoaderOptions {
  KILN_ARG(std::int64_t, batch_size) = 1;
  /// A new permutation per epoch from a RandomSampler keyed by `generator` (default: kiln's
  /// default generator), drawn when the loader is built.
  KILN_ARG(bool, shuffle) = false;
  KILN_ARG(Generator*, generator) = nullptr;
  /// Drop the last batch of an epoch when it is smaller than batch_size.
  KILN_ARG(bool, drop_last) = false;
  /// 0: batches are made on the caller's thread when it asks for them.
  KILN_ARG(int, num_workers) = 0;
  /// Batches made ahead per worker (the queue's bound is prefetch * num_workers).
  KILN_ARG(int, prefetch) = 2;
  /// Instead of shuffle: any sampler (e.g. a DistributedSampler).
  KILN_ARG(std::shared_ptr<Sampler>, sampler);
  KILN_ARG(Collate, collate) = default_collate;
  /// Batches in page-locked host memory (Tensor::pin_memory of every CPU field, after collate).
  /// kiln::Error "[DataLoader] page-locked memory needs a CUDA GPU: ..." at construction when
  /// kiln was built without CUDA or no GPU is usable (PyTorch warns and ignores it instead;
  /// kiln refuses an option it cannot honour).
  KILN_ARG(bool, pin_memory) = false;
};

namespace detail {
class Epoch;
}

class DataLoader {
 public:
  DataLoader(std::shared_ptr<Dataset> dataset, DataLoaderOptions options = {});
  /// A stream: read in order by one thread at a time; workers collate. shuffle and sampler are
  /// errors here (a stream has no indices).
  DataLoader(std::shared_ptr<IterableDataset> dataset, DataLoaderOptions options = {});
  ~DataLoader();

  class Iterator {
   public:
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    Iterator() = default;
    Batch& operator*() { return batch_; }
    Batch* operator->() { return &batch_; }
    Iterator& operator++();
    bool operator==(const Iterator& o) const { return epoch_ == o.epoch_; }

   private:
    friend class DataLoader;
    explicit Iterator(std::shared_ptr<detail::Epoch> epoch);
    void advance();
    std::shared_ptr<detail::Epoch> epoch_;  // null at the end
    Batch batch_;
  };

  /// Starts the next epoch (the workers start here) and returns its first batch.
  Iterator begin();
  Iterator end() { return {}; }

  /// The number the next begin() gives its epoch, and the batch it starts at (to resume in the
  /// middle of an epoch: map-style datasets only; kiln::Error at begin() past the last batch).
  void set_epoch(std::uint64_t epoch, std::int64_t first_batch = 0);
  std::uint64_t epoch() const { return next_epoch_; }
  /// Batches per epoch (map-style datasets; kiln::Error for a stream, whose length is unknown).
  std::int64_t size() const;
  const DataLoaderOptions& options() const { return options_; }

 private:
  std::shared_ptr<Dataset> dataset_;
  std::shared_ptr<IterableDataset> stream_;
  std::shared_ptr<BatchSampler> batches_;
  DataLoaderOptions options_;
  std::uint64_t next_epoch_ = 0;
  std::int64_t first_batch_ = 0;
};

}  // namespace kiln::data
