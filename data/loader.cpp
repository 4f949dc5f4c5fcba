#include "loader.hpp"

#include <fmt/format.h>

#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"
#include "../core/backend.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/shape.hpp"

namespace kiln::data {

Batch default_collate(std::vector<Example>&& examples) {
  KILN_CHECK(!examples.empty(), "default_collate", "no examples to collate");
  const std::size_t fields = examples[0].size();
  Batch batch;
  batch.reserve(fields);
  std::vector<Tensor> column(examples.size());
  for (std::size_t f = 0; f < fields; ++f) {
    for (std::size_t i = 0; i < examples.size(); ++i) {
      KILN_CHECK(examples[i].size() == fields, "default_collate", "example {} has {} fields, example 0 has {}", i,
                 examples[i].size(), fields);
      const Tensor& t = examples[i][f];
      const Tensor& t0 = examples[0][f];
      KILN_CHECK(t.defined(), "default_collate", "field {} of example {} is undefined", f, i);
      KILN_CHECK(t.shape() == t0.shape() && t.dtype() == t0.dtype() && t.device() == t0.device(), "default_collate",
                 "field {}: example {} is {} {} on {}, example 0 is {} {} on {} (stack needs equal ones; pass a "
                 "custom collate to pad)",
                 f, i, dtype_name(t.dtype()), shape_str(t.shape()), t.device().str(), dtype_name(t0.dtype()),
                 shape_str(t0.shape()), t0.device().str());
      column[i] = t;
    }
    batch.push_back(stack(column, 0));
  }
  return batch;
}

namespace detail {

// The examples of batch k (nullopt: the epoch has no batch k), from indices or from a stream.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::optional<std::vector<Example>> fetch(std::int64_t k) = 0;
  // True: fetch(k) must be called for k = 0, 1, ... in order, one at a time (a stream).
  virtual bool ordered() const = 0;
};

namespace {

class IndexSource : public Source {
 public:
  IndexSource(std::shared_ptr<Dataset> ds, std::vector<std::vector<std::int64_t>> batches)
      : ds_(std::move(ds)), batches_(std::move(batches)) {}
  std::optional<std::vector<Example>> fetch(std::int64_t k) override {
    if (k >= static_cast<std::int64_t>(batches_.size())) return std::nullopt;
    std::vector<Example> out;
    for (std::int64_t i : batches_[static_cast<std::size_t>(k)]) out.push_back(ds_->get(i));
    return out;
  }
  bool ordered() const override { return false; }

 private:
  std::shared_ptr<Dataset> ds_;
  std::vector<std::vector<std::int64_t>> batches_;
};

class StreamSource : public Source {
 public:
  StreamSource(std::shared_ptr<IterableDataset> ds, std::int64_t batch_size, bool drop_last)
      : ds_(std::move(ds)), batch_size_(batch_size), drop_last_(drop_last) {}
  std::optional<std::vector<Example>> fetch(std::int64_t) override {
    std::vector<Example> out;
    while (!done_ && static_cast<std::int64_t>(out.size()) < batch_size_) {
      std::optional<Example> e = ds_->next();
      if (e) out.push_back(std::move(*e));
      else done_ = true;
    }
    if (out.empty() || (drop_last_ && static_cast<std::int64_t>(out.size()) < batch_size_)) return std::nullopt;
    return out;
  }
  bool ordered() const override { return true; }

 private:
  std::shared_ptr<IterableDataset> ds_;
  std::int64_t batch_size_;
  bool drop_last_, done_ = false;
};

}  // namespace

// One pass over the data. With workers, each claims the next batch number (at most `capacity`
// ahead of the consumer), makes it and files it under its number; the consumer takes batch
// numbers in order, so the result does not depend on which worker made what.
class Epoch {
 public:
  Epoch(std::unique_ptr<Source> source, Collate collate, int workers, int prefetch)
      : source_(std::move(source)), collate_(std::move(collate)), capacity_(std::int64_t(workers) * prefetch) {
    threads_.reserve(static_cast<std::size_t>(workers));
    try {
      for (int w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
    } catch (...) {
      stop();
      throw;
    }
  }
  ~Epoch() { stop(); }

  // The next batch, or nullopt at the end of the epoch; re-throws a failure of this batch.
  std::optional<Batch> next() {
    if (threads_.empty()) {
      NoGradGuard no_grad;
      std::optional<std::vector<Example>> ex = source_->fetch(next_out_++);
      if (!ex) return std::nullopt;
      return collate_(std::move(*ex));
    }
    std::unique_lock lk(mu_);
    ready_.wait(lk, [&] { return results_.count(next_out_) != 0 || (end_known_ && next_out_ >= total_); });
    auto it = results_.find(next_out_);
    if (it == results_.end()) return std::nullopt;
    Slot slot = std::move(it->second);
    results_.erase(it);
    ++next_out_;
    lk.unlock();
    space_.notify_all();
    if (slot.error) std::rethrow_exception(slot.error);
    return std::move(slot.batch);
  }

 private:
  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };

  bool finished() const { return stop_ || (end_known_ && next_claim_ >= total_); }

  // Waits for room in the queue and claims a batch number; -1 when there is nothing left to do.
  std::int64_t claim() {
    std::unique_lock lk(mu_);
    space_.wait(lk, [&] { return finished() || next_claim_ < next_out_ + capacity_; });
    return finished() ? -1 : next_claim_++;
  }

  void work() {
    SingleThreadGuard serial;
    NoGradGuard no_grad;
    const bool ordered = source_->ordered();
    for (;;) {
      std::unique_lock<std::mutex> fetch_lock(fetch_mu_, std::defer_lock);
      if (ordered) fetch_lock.lock();  // claim and read a stream as one step: batches stay in order
      const std::int64_t k = claim();
      if (k < 0) return;
      Slot slot;
      std::optional<std::vector<Example>> ex;
      try {
        ex = source_->fetch(k);
      } catch (...) {
        slot.error = std::current_exception();
      }
      if (fetch_lock.owns_lock()) fetch_lock.unlock();
      if (!ex && !slot.error) {
        end_at(k);
        continue;
      }
      if (ex) {
        try {
          slot.batch = collate_(std::move(*ex));
        } catch (...) {
          slot.error = std::current_exception();
        }
      }
      const bool failed = slot.error != nullptr;
      {
        std::lock_guard lk(mu_);
        results_.emplace(k, std::move(slot));
      }
      if (failed && ordered) end_at(k + 1);  // a stream that failed cannot go on
      ready_.notify_all();
    }
  }

  void end_at(std::int64_t total) {
    {
      std::lock_guard lk(mu_);
      if (!end_known_ || total < total_) total_ = total;
      end_known_ = true;
    }
    ready_.notify_all();
    space_.notify_all();
  }

  void stop() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    space_.notify_all();
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }

  std::unique_ptr<Source> source_;
  Collate collate_;
  std::int64_t capacity_;
  std::mutex mu_, fetch_mu_;
  std::condition_variable ready_, space_;
  std::map<std::int64_t, Slot> results_;
  std::int64_t next_claim_ = 0, next_out_ = 0, total_ = 0;
  bool end_known_ = false, stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace detail

namespace {

void check_options(const DataLoaderOptions& o) {
  KILN_CHECK(o.batch_size() > 0, "DataLoader", "batch_size must be > 0, got {}", o.batch_size());
  KILN_CHECK(o.num_workers() >= 0, "DataLoader", "num_workers must be >= 0, got {}", o.num_workers());
  KILN_CHECK(o.prefetch() >= 1, "DataLoader", "prefetch must be >= 1, got {}", o.prefetch());
  KILN_CHECK(static_cast<bool>(o.collate()), "DataLoader", "the collate function is empty");
  if (o.pin_memory()) pinned_allocator("DataLoader");  // "[DataLoader] page-locked memory needs a CUDA GPU: ..."
}

// The options' collate, followed with pin_memory when asked (run where collate runs: on the
// worker threads when there are workers). CPU fields are pinned; fields already on a device
// (a custom collate may move them) are left as they are.
Collate batch_maker(const DataLoaderOptions& o) {
  if (!o.pin_memory()) return o.collate();
  return [collate = o.collate()](std::vector<Example>&& examples) {
    Batch b = collate(std::move(examples));
    for (Tensor& t : b)
      if (t.defined() && t.device().is_cpu()) t = t.pin_memory();
    return b;
  };
}

}  // namespace

DataLoader::DataLoader(std::shared_ptr<Dataset> dataset, DataLoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  KILN_CHECK(dataset_ != nullptr, "DataLoader", "the dataset is null");
  check_options(options_);
  KILN_CHECK(!(options_.shuffle() && options_.sampler()), "DataLoader",
             "shuffle and sampler are exclusive (shuffle with the sampler itself)");
  std::shared_ptr<Sampler> sampler = options_.sampler();
  const std::int64_t n = dataset_->size();
  if (!sampler && options_.shuffle())
    sampler = options_.generator() ? std::make_shared<RandomSampler>(n, *options_.generator())
                                   : std::make_shared<RandomSampler>(n);
  if (!sampler) sampler = std::make_shared<SequentialSampler>(n);
  batches_ = std::make_shared<BatchSampler>(std::move(sampler), options_.batch_size(), options_.drop_last());
}

DataLoader::DataLoader(std::shared_ptr<IterableDataset> dataset, DataLoaderOptions options)
    : stream_(std::move(dataset)), options_(std::move(options)) {
  KILN_CHECK(stream_ != nullptr, "DataLoader", "the dataset is null");
  check_options(options_);
  KILN_CHECK(!options_.shuffle() && !options_.sampler(), "DataLoader",
             "shuffle and sampler need a map-style dataset (an IterableDataset has no indices)");
}

DataLoader::~DataLoader() = default;

std::int64_t DataLoader::size() const {
  KILN_CHECK(batches_ != nullptr, "DataLoader", "an IterableDataset's number of batches is unknown");
  return batches_->size();
}

void DataLoader::set_epoch(std::uint64_t epoch, std::int64_t first_batch) {
  KILN_CHECK(first_batch >= 0, "DataLoader", "set_epoch: first batch must be >= 0, got {}", first_batch);
  KILN_CHECK(first_batch == 0 || dataset_ != nullptr, "DataLoader",
             "set_epoch: an IterableDataset cannot start at batch {} (only map-style datasets can)", first_batch);
  next_epoch_ = epoch;
  first_batch_ = first_batch;
}

DataLoader::Iterator DataLoader::begin() {
  const std::uint64_t epoch = next_epoch_++;
  const std::int64_t first = std::exchange(first_batch_, 0);
  std::unique_ptr<detail::Source> source;
  if (dataset_) {
    dataset_->set_epoch(epoch);
    batches_->set_epoch(epoch);
    std::vector<std::vector<std::int64_t>> batches = batches_->batches();
    KILN_CHECK(first <= static_cast<std::int64_t>(batches.size()), "DataLoader",
               "epoch {} has {} batches: cannot start at batch {}", epoch, batches.size(), first);
    batches.erase(batches.begin(), batches.begin() + first);
    source = std::make_unique<detail::IndexSource>(dataset_, std::move(batches));
  } else {
    stream_->reset(epoch);
    source = std::make_unique<detail::StreamSource>(stream_, options_.batch_size(), options_.drop_last());
  }
  return Iterator(std::make_shared<detail::Epoch>(std::move(source), batch_maker(options_), options_.num_workers(),
                                                  options_.prefetch()));
}

DataLoader::Iterator::Iterator(std::shared_ptr<detail::Epoch> epoch) : epoch_(std::move(epoch)) { advance(); }

DataLoader::Iterator& DataLoader::Iterator::operator++() {
  advance();
  return *this;
}

void DataLoader::Iterator::advance() {
  if (!epoch_) return;
  std::optional<Batch> b = epoch_->next();
  if (b) {
    batch_ = std::move(*b);
  } else {
    epoch_.reset();  // joins the workers
    batch_.clear();
  }
}

}  // namespace kiln::data
