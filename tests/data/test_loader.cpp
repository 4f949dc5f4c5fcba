// kiln::data::DataLoader: batches, determinism across worker counts, exceptions, shutdown.
#include <kiln/data/data.hpp>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "test_util.hpp"

using namespace kiln;
namespace data = kiln::data;
using namespace kt;

namespace {

// Example i = {i * 10 + [0, 1, 2] (float32), label i (int64)}.
std::shared_ptr<data::TensorDataset> rows(std::int64_t n) {
  Tensor x = arange(0, n * 3, 1, kFloat32).view({n, 3});
  x = x + (arange(0, n, 1, kFloat32) * 7.0f).unsqueeze(1);  // row i: 10 i, 10 i + 1, 10 i + 2
  return std::make_shared<data::TensorDataset>(std::vector<Tensor>{x, arange(0, n, 1, kInt64)});
}

// Every batch of one epoch, flattened to host values.
std::vector<std::vector<float>> epoch_values(data::DataLoader& loader) {
  std::vector<std::vector<float>> out;
  for (data::Batch& b : loader) {
    out.push_back(b[0].to_vector<float>());
    for (std::int64_t l : b[1].to_vector<std::int64_t>()) out.back().push_back(float(l));
  }
  return out;
}

// A dataset whose get() sleeps a little (so workers finish out of order) and may throw.
struct SlowDataset : data::Dataset {
  std::int64_t n, bad = -1;
  mutable std::atomic<int> calls{0};
  explicit SlowDataset(std::int64_t n) : n(n) {}
  std::int64_t size() const override { return n; }
  data::Example get(std::int64_t i) const override {
    data::check_index("SlowDataset", i, n);
    ++calls;
    std::this_thread::sleep_for(std::chrono::microseconds(200 * ((i * 7) % 5)));
    if (i == bad) throw kiln::Error("[SlowDataset] example " + std::to_string(i) + " is broken");
    return {full({2}, double(i)), scalar_tensor(i, kInt64)};
  }
};

}  // namespace

TEST_CASE("data: DataLoader batches in order, the last one short or dropped") {
  data::DataLoader loader(rows(10), data::DataLoaderOptions().batch_size(4));
  CHECK(loader.size() == 3);
  std::vector<std::int64_t> sizes, labels;
  for (auto& b : loader) {
    REQUIRE(b.size() == 2);
    CHECK(b[0].dtype() == kFloat32);
    CHECK(b[0].size(1) == 3);
    sizes.push_back(b[0].size(0));
    for (auto l : b[1].to_vector<std::int64_t>()) labels.push_back(l);
  }
  CHECK(sizes == std::vector<std::int64_t>{4, 4, 2});
  CHECK(labels == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  auto first = *loader.begin();
  expect_values(first[0], {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32});

  data::DataLoader drop(rows(10), data::DataLoaderOptions().batch_size(4).drop_last(true));
  CHECK(drop.size() == 2);
  CHECK(epoch_values(drop).size() == 2);
  data::DataLoader empty(rows(0), data::DataLoaderOptions().batch_size(4).num_workers(2));
  CHECK(empty.begin() == empty.end());
}

TEST_CASE("data: shuffled batches are identical for 0, 1 and 3 workers, and differ per epoch") {
  std::vector<std::vector<std::vector<float>>> runs;
  for (int workers : {0, 1, 3}) {
    Generator gen(123);
    data::DataLoader loader(
        rows(37),
        data::DataLoaderOptions().batch_size(5).shuffle(true).generator(&gen).num_workers(workers).prefetch(1));
    auto e0 = epoch_values(loader), e1 = epoch_values(loader);
    CHECK(e0 != e1);
    // Each epoch visits every example once.
    std::multiset<float> labels;
    for (auto& b : e0)
      for (std::size_t j = b.size() - (b.size() / 4); j < b.size(); ++j) labels.insert(b[j]);
    CHECK(labels.size() == 37);
    CHECK(std::set<float>(labels.begin(), labels.end()).size() == 37);
    loader.set_epoch(1);
    CHECK(epoch_values(loader) == e1);  // an epoch replays
    loader.set_epoch(1, 3);             // resume at batch 3 of epoch 1
    CHECK(epoch_values(loader) == std::vector<std::vector<float>>(e1.begin() + 3, e1.end()));
    runs.push_back(e0);
    runs.push_back(e1);
  }
  CHECK(runs[0] == runs[2]);
  CHECK(runs[0] == runs[4]);
  CHECK(runs[1] == runs[3]);
  CHECK(runs[1] == runs[5]);
}

TEST_CASE("data: random transforms give the same batches whatever the number of workers") {
  auto base = std::make_shared<SlowDataset>(23);
  auto noisy = data::map(
      base,
      [](data::Example e, Generator& g) {
        return data::Example{e[0] + rand({2}, {}, &g), e[1]};
      },
      5);
  std::vector<std::vector<std::vector<float>>> got;
  for (int workers : {0, 1, 3}) {
    Generator gen(7);
    data::DataLoader loader(noisy,
                            data::DataLoaderOptions().batch_size(4).shuffle(true).generator(&gen).num_workers(workers));
    got.push_back(epoch_values(loader));
  }
  CHECK(got[0] == got[1]);
  CHECK(got[0] == got[2]);
}

TEST_CASE("data: custom collate and a sampler") {
  auto sum_collate = [](std::vector<data::Example>&& ex) {
    Tensor total = zeros({3});
    for (auto& e : ex) total = total + e[0];
    return data::Batch{total, scalar_tensor(std::int64_t(ex.size()), kInt64)};
  };
  auto sampler =
      std::make_shared<data::DistributedSampler>(6, data::DistributedSamplerOptions().rank(1).world(2).shuffle(false));
  data::DataLoader loader(rows(6),
                          data::DataLoaderOptions().batch_size(2).sampler(sampler).collate(sum_collate).num_workers(2));
  std::vector<std::vector<float>> got;
  for (auto& b : loader) got.push_back(b[0].to_vector<float>());
  // rank 1 of 2 takes examples 1, 3, 5: batches {1, 3} and {5}
  CHECK(got == std::vector<std::vector<float>>{{40, 42, 44}, {50, 51, 52}});
}

TEST_CASE("data: an exception in a worker is re-thrown at its batch") {
  for (int workers : {0, 1, 3}) {
    CAPTURE(workers);
    auto ds = std::make_shared<SlowDataset>(20);
    ds->bad = 9;  // in batch 2 (batch size 4)
    data::DataLoader loader(ds, data::DataLoaderOptions().batch_size(4).num_workers(workers));
    auto it = loader.begin();
    CHECK((*it)[1].to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3});
    ++it;
    CHECK((*it)[1].to_vector<std::int64_t>() == std::vector<std::int64_t>{4, 5, 6, 7});
    CHECK_THROWS_WITH_AS(++it, "[SlowDataset] example 9 is broken", kiln::Error);
    ++it;  // the loader goes on after the failed batch
    CHECK((*it)[1].to_vector<std::int64_t>() == std::vector<std::int64_t>{12, 13, 14, 15});
    // In a range-for the exception leaves the loop (and joins the workers).
    auto loop = [&] {
      for (auto& b : loader) (void)b;
    };
    CHECK_THROWS_WITH_AS(loop(), "[SlowDataset] example 9 is broken", kiln::Error);
  }
  auto bad_collate = [](std::vector<data::Example>&&) -> data::Batch { throw std::runtime_error("collate failed"); };
  data::DataLoader loader(rows(8), data::DataLoaderOptions().batch_size(2).collate(bad_collate).num_workers(2));
  CHECK_THROWS_WITH_AS(loader.begin(), "collate failed", std::runtime_error);
}

TEST_CASE("data: leaving an epoch early stops the workers without making the rest") {
  auto ds = std::make_shared<SlowDataset>(1000);
  data::DataLoader loader(ds, data::DataLoaderOptions().batch_size(10).num_workers(3).prefetch(2));
  int seen = 0;
  for (auto& b : loader) {
    (void)b;
    if (++seen == 2) break;
  }
  // At most the consumed batches plus the bounded queue (3 workers x 2) were made.
  CHECK(ds->calls.load() <= (2 + 6 + 1) * 10);
  // The loader is reusable, and a live iterator outlives its loader safely.
  auto it = std::make_unique<data::DataLoader>(ds, data::DataLoaderOptions().batch_size(10).num_workers(2))->begin();
  CHECK((*it)[1].to_vector<std::int64_t>().front() == 0);
  ++it;
  CHECK((*it)[1].to_vector<std::int64_t>().front() == 10);
}

namespace {

// A stream of `n` examples {i}, throwing at `bad`.
struct Counter : data::IterableDataset {
  std::int64_t n, i = 0, bad = -1;
  std::uint64_t epoch = 99;
  explicit Counter(std::int64_t n) : n(n) {}
  void reset(std::uint64_t e) override { i = 0, epoch = e; }
  std::optional<data::Example> next() override {
    if (i == bad) throw kiln::Error("[Counter] bad element");
    if (i >= n) return std::nullopt;
    return data::Example{scalar_tensor(i++, kInt64)};
  }
};

}  // namespace

TEST_CASE("data: an IterableDataset is read in order whatever the number of workers") {
  for (int workers : {0, 1, 3}) {
    CAPTURE(workers);
    auto stream = std::make_shared<Counter>(11);
    data::DataLoader loader(stream, data::DataLoaderOptions().batch_size(3).num_workers(workers));
    std::vector<std::int64_t> all;
    std::vector<std::int64_t> sizes;
    for (auto& b : loader) {
      sizes.push_back(b[0].size(0));
      for (auto v : b[0].to_vector<std::int64_t>()) all.push_back(v);
    }
    CHECK(stream->epoch == 0);
    CHECK(sizes == std::vector<std::int64_t>{3, 3, 3, 2});
    CHECK(all == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    data::DataLoader drop(stream, data::DataLoaderOptions().batch_size(3).drop_last(true).num_workers(workers));
    int batches = 0;
    for (auto& b : drop) batches += b[0].size(0) == 3;
    CHECK(batches == 3);
    stream->bad = 4;
    auto loop = [&] {
      for (auto& b : loader) (void)b;
    };
    CHECK_THROWS_WITH_AS(loop(), "[Counter] bad element", kiln::Error);
  }
  CHECK_KILN_ERROR(data::DataLoader(std::make_shared<Counter>(3), data::DataLoaderOptions().shuffle(true)),
                   "[DataLoader] shuffle and sampler need a map-style dataset");
}

TEST_CASE("data: DataLoader bad input") {
  using O = data::DataLoaderOptions;
  CHECK_KILN_ERROR(data::DataLoader(rows(4), O().batch_size(0)), "[DataLoader] batch_size must be > 0, got 0");
  CHECK_KILN_ERROR(data::DataLoader(rows(4), O().num_workers(-1)), "[DataLoader] num_workers must be >= 0, got -1");
  CHECK_KILN_ERROR(data::DataLoader(rows(4), O().prefetch(0)), "[DataLoader] prefetch must be >= 1, got 0");
  CHECK_KILN_ERROR(data::DataLoader(std::shared_ptr<data::Dataset>(), O()), "[DataLoader] the dataset is null");
  CHECK_KILN_ERROR(data::DataLoader(rows(4), O().shuffle(true).sampler(std::make_shared<data::SequentialSampler>(4))),
                   "[DataLoader] shuffle and sampler are exclusive");
  // A sampler index past the dataset: the dataset's own range check, at its batch.
  data::DataLoader past(rows(4), O().batch_size(2).sampler(std::make_shared<data::SequentialSampler>(6)));
  CHECK_KILN_ERROR(epoch_values(past), "[TensorDataset] index 4 is out of range for a dataset of 4 examples");
  data::DataLoader loader(rows(4), O().batch_size(2));
  loader.set_epoch(0, 3);
  CHECK_KILN_ERROR(loader.begin(), "[DataLoader] epoch 0 has 2 batches: cannot start at batch 3");
  // Examples that cannot be stacked.
  auto ragged = data::map(rows(4), [](data::Example e) {
    if (e[1].item<std::int64_t>() == 1) e[0] = zeros({4});
    return e;
  });
  data::DataLoader rag(ragged, O().batch_size(4));
  CHECK_KILN_ERROR(rag.begin(),
                   "[default_collate] field 0: example 1 is float32 (4,) on cpu, example 0 is float32 (3,)");
}
