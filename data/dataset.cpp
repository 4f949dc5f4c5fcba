#include "dataset.hpp"

#include <fmt/format.h>

#include "../core/error.hpp"
#include "../core/shape.hpp"

namespace kiln::data {

void check_index(const char* op, std::int64_t index, std::int64_t size) {
  KILN_CHECK(index >= 0 && index < size, op, "index {} is out of range for a dataset of {} examples", index, size);
}

TensorDataset::TensorDataset(std::vector<Tensor> tensors) : tensors_(std::move(tensors)) {
  KILN_CHECK(!tensors_.empty(), "TensorDataset", "needs at least one tensor");
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    KILN_CHECK(tensors_[i].defined(), "TensorDataset", "tensor {} is undefined", i);
    KILN_CHECK(tensors_[i].dim() >= 1, "TensorDataset", "tensor {} is 0-dimensional: every tensor needs a dim 0", i);
    KILN_CHECK(tensors_[i].size(0) == tensors_[0].size(0), "TensorDataset",
               "tensors must share their size in dim 0: tensor 0 has shape {}, tensor {} has shape {}",
               shape_str(tensors_[0].shape()), i, shape_str(tensors_[i].shape()));
  }
  size_ = tensors_[0].size(0);
}

Example TensorDataset::get(std::int64_t index) const {
  check_index("TensorDataset", index, size_);
  Example e;
  e.reserve(tensors_.size());
  for (const Tensor& t : tensors_) e.push_back(t.select(0, index));
  return e;
}

Subset::Subset(std::shared_ptr<Dataset> dataset, std::vector<std::int64_t> indices)
    : dataset_(std::move(dataset)), indices_(std::move(indices)) {
  KILN_CHECK(dataset_ != nullptr, "Subset", "the dataset is null");
  const std::int64_t n = dataset_->size();
  for (std::int64_t i : indices_) check_index("Subset", i, n);
}

Example Subset::get(std::int64_t index) const {
  check_index("Subset", index, size());
  return dataset_->get(indices_[static_cast<std::size_t>(index)]);
}

void Subset::set_epoch(std::uint64_t epoch) { dataset_->set_epoch(epoch); }

std::uint64_t sample_seed(std::uint64_t seed, std::uint64_t epoch, std::int64_t index) {
  auto r = philox4x32(seed, static_cast<std::uint64_t>(index), epoch);
  return (static_cast<std::uint64_t>(r[0]) << 32) | r[1];
}

MapDataset::MapDataset(std::shared_ptr<Dataset> dataset, Transform transform, std::uint64_t seed)
    : dataset_(std::move(dataset)), transform_(std::move(transform)), seed_(seed) {
  KILN_CHECK(dataset_ != nullptr, "MapDataset", "the dataset is null");
  KILN_CHECK(static_cast<bool>(transform_), "MapDataset", "the transform is empty");
}

Example MapDataset::get(std::int64_t index) const {
  check_index("MapDataset", index, size());
  Generator gen(sample_seed(seed_, epoch_, index));
  return transform_(dataset_->get(index), gen);
}

void MapDataset::set_epoch(std::uint64_t epoch) {
  epoch_ = epoch;
  dataset_->set_epoch(epoch);
}

std::shared_ptr<Subset> subset(std::shared_ptr<Dataset> dataset, std::vector<std::int64_t> indices) {
  return std::make_shared<Subset>(std::move(dataset), std::move(indices));
}

std::shared_ptr<MapDataset> map(std::shared_ptr<Dataset> dataset, Transform transform, std::uint64_t seed) {
  return std::make_shared<MapDataset>(std::move(dataset), std::move(transform), seed);
}

std::shared_ptr<MapDataset> map(std::shared_ptr<Dataset> dataset, std::function<Example(Example)> transform) {
  KILN_CHECK(static_cast<bool>(transform), "MapDataset", "the transform is empty");
  return map(std::move(dataset), [f = std::move(transform)](Example e, Generator&) { return f(std::move(e)); });
}

}  // namespace kiln::data
