#pragma once
/// Datasets (namespace kiln::data): where a DataLoader takes its examples from.
///
/// A map-style `Dataset` has size() and get(i); an example is a `std::vector<Tensor>` of fields
/// (image, label, ...) that the loader's collate stacks field by field into a batch. An
/// `IterableDataset` yields examples one after another (a stream). Wrappers: `Subset`,
/// `MapDataset` (a transform per example, optionally drawing random numbers from a generator
/// seeded per (seed, epoch, index), so the result does not depend on which thread ran it).
///   namespace data = kiln::data;
///   auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{images, labels});
///   data::Example e = ds->get(3);                              // {images[3], labels[3]}
///   auto first = data::subset(ds, {0, 1, 2});
///   auto noisy = data::map(ds, [](data::Example e, kiln::Generator& g) {
///     e[0] = e[0] + 0.1 * kiln::randn_like(e[0], &g);          // reproducible per index and epoch
///     return e;
///   });
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln::data {

/// One example: its fields, each a tensor (a label is a 0-dim int64 tensor).
using Example = std::vector<Tensor>;

/// A map-style dataset. get() must be safe to call from several threads at once (the loader's
/// workers call it concurrently): read shared state, do not mutate it. set_epoch() is called by
/// the loader between epochs, never during one.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  /// The example at `index` in [0, size()); implementations check the range (data::check_index).
  virtual Example get(std::int64_t index) const = 0;
  /// The epoch about to be read (for transforms that draw random numbers per epoch).
  virtual void set_epoch(std::uint64_t /*epoch*/) {}
};

/// A stream of examples. The loader calls reset(epoch) before each pass, then next() on one
/// thread at a time, in order, until it returns std::nullopt.
class IterableDataset {
 public:
  virtual ~IterableDataset() = default;
  virtual void reset(std::uint64_t epoch) = 0;
  virtual std::optional<Example> next() = 0;
};

/// Throws kiln::Error "[<op>] index <index> is out of range for a dataset of <size> examples".
void check_index(const char* op, std::int64_t index, std::int64_t size);

/// Rows of tensors that share their first dimension: example i is {t[i] for t in tensors}
/// (views, no copy). The tensors must be on the CPU or one device each; sizes are checked.
class TensorDataset : public Dataset {
 public:
  explicit TensorDataset(std::vector<Tensor> tensors);
  std::int64_t size() const override { return size_; }
  Example get(std::int64_t index) const override;
  const std::vector<Tensor>& tensors() const { return tensors_; }

 private:
  std::vector<Tensor> tensors_;
  std::int64_t size_ = 0;
};

/// The examples of `dataset` at `indices` (checked against its size at construction).
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<Dataset> dataset, std::vector<std::int64_t> indices);
  std::int64_t size() const override { return static_cast<std::int64_t>(indices_.size()); }
  Example get(std::int64_t index) const override;
  void set_epoch(std::uint64_t epoch) override;

 private:
  std::shared_ptr<Dataset> dataset_;
  std::vector<std::int64_t> indices_;
};

/// A transform of each example. The generator it gets is seeded from (seed, epoch, index): the
/// same example in the same epoch always draws the same numbers, whichever worker thread reads
/// it, and a new epoch draws new ones.
using Transform = std::function<Example(Example, Generator&)>;

class MapDataset : public Dataset {
 public:
  MapDataset(std::shared_ptr<Dataset> dataset, Transform transform, std::uint64_t seed = 0);
  std::int64_t size() const override { return dataset_->size(); }
  Example get(std::int64_t index) const override;
  void set_epoch(std::uint64_t epoch) override;

 private:
  std::shared_ptr<Dataset> dataset_;
  Transform transform_;
  std::uint64_t seed_, epoch_ = 0;
};

/// The seed of example `index`'s generator in `epoch` (a Philox hash of the three): what
/// MapDataset uses; exposed for datasets that draw random numbers in their own get().
std::uint64_t sample_seed(std::uint64_t seed, std::uint64_t epoch, std::int64_t index);

/// Shorthands returning shared pointers (what DataLoader takes).
std::shared_ptr<Subset> subset(std::shared_ptr<Dataset> dataset, std::vector<std::int64_t> indices);
std::shared_ptr<MapDataset> map(std::shared_ptr<Dataset> dataset, Transform transform, std::uint64_t seed = 0);
/// A transform that draws no random numbers.
std::shared_ptr<MapDataset> map(std::shared_ptr<Dataset> dataset, std::function<Example(Example)> transform);

}  // namespace kiln::data
