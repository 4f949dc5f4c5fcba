// kiln::data datasets and samplers: values, permutations, distributed partitions, bad input.
#include <kiln/data/data.hpp>

#include <algorithm>
#include <numeric>
#include <set>

#include "test_util.hpp"

using namespace kiln;
namespace data = kiln::data;
using namespace kt;

TEST_CASE("data: TensorDataset rows, Subset and map") {
  Tensor x = arange(0, 12, 1, kFloat32).view({4, 3}), y = tensor({7, 8, 9, 10});
  auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{x, y});
  CHECK(ds->size() == 4);
  data::Example e = ds->get(2);
  REQUIRE(e.size() == 2);
  expect_values(e[0], {6, 7, 8});
  CHECK(e[1].dim() == 0);
  CHECK(e[1].item<std::int64_t>() == 9);

  auto sub = data::subset(ds, {3, 0});
  CHECK(sub->size() == 2);
  expect_values(sub->get(0)[0], {9, 10, 11});
  expect_values(sub->get(1)[0], {0, 1, 2});

  auto doubled = data::map(ds, [](data::Example ex) {
    ex[0] = ex[0] * 2.0f;
    return ex;
  });
  expect_values(doubled->get(1)[0], {6, 8, 10});
  CHECK(doubled->get(1)[1].item<std::int64_t>() == 8);
}

TEST_CASE("data: a random transform draws per (seed, epoch, index), not per call order") {
  auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{zeros({5, 3})});
  auto noisy = data::map(
      ds, [](data::Example e, Generator& g) { return data::Example{e[0] + randn({3}, {}, &g)}; }, /*seed=*/11);
  std::vector<std::vector<float>> a, b;
  for (std::int64_t i = 0; i < 5; ++i) a.push_back(noisy->get(i)[0].to_vector<float>());
  for (std::int64_t i = 4; i >= 0; --i) b.insert(b.begin(), noisy->get(i)[0].to_vector<float>());
  CHECK(a == b);
  CHECK(a[0] != a[1]);
  noisy->set_epoch(1);
  CHECK(noisy->get(0)[0].to_vector<float>() != a[0]);  // a new epoch, new draws
  noisy->set_epoch(0);
  CHECK(noisy->get(0)[0].to_vector<float>() == a[0]);
}

TEST_CASE("data: bad dataset input names the op and the values") {
  CHECK_KILN_ERROR(data::TensorDataset({zeros({4, 2}), zeros({3})}),
                   "[TensorDataset] tensors must share their size in dim 0: tensor 0 has shape (4, 2), tensor 1 has "
                   "shape (3,)");
  CHECK_KILN_ERROR(data::TensorDataset({zeros({4}), scalar_tensor(1.0)}), "[TensorDataset] tensor 1 is 0-dimensional");
  CHECK_KILN_ERROR(data::TensorDataset({}), "[TensorDataset] needs at least one tensor");
  auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{zeros({4, 2})});
  CHECK_KILN_ERROR(ds->get(4), "[TensorDataset] index 4 is out of range for a dataset of 4 examples");
  CHECK_KILN_ERROR(ds->get(-1), "[TensorDataset] index -1 is out of range");
  CHECK_KILN_ERROR(data::subset(ds, {0, 7}), "[Subset] index 7 is out of range for a dataset of 4 examples");
  CHECK_KILN_ERROR(data::subset(ds, {1})->get(1), "[Subset] index 1 is out of range for a dataset of 1 examples");
}

TEST_CASE("data: permutations are permutations, reproducible per (key, epoch)") {
  for (std::int64_t n : {0, 1, 2, 17, 1000}) {
    std::vector<std::int64_t> p = data::permutation(n, 5, 0), sorted = p;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> iota(static_cast<std::size_t>(n));
    std::iota(iota.begin(), iota.end(), 0);
    CHECK(sorted == iota);
    CHECK(p == data::permutation(n, 5, 0));
  }
  CHECK(data::permutation(1000, 5, 0) != data::permutation(1000, 5, 1));
  CHECK(data::permutation(1000, 5, 0) != data::permutation(1000, 6, 0));
  // Every position takes every value with about equal frequency (a biased shuffle would not).
  std::vector<int> first(10, 0);
  for (std::uint64_t e = 0; e < 5000; ++e) first[static_cast<std::size_t>(data::permutation(10, 3, e)[0])]++;
  for (int c : first) CHECK(std::abs(c - 500) < 100);
}

TEST_CASE("data: RandomSampler draws its key from the generator and changes order per epoch") {
  Generator g1(42), g2(42);
  data::RandomSampler a(50, g1), b(50, g2), c(50, g1);
  CHECK(a.indices() == b.indices());
  CHECK(a.indices() != c.indices());  // the generator advanced
  std::vector<std::int64_t> e0 = a.indices();
  a.set_epoch(1);
  CHECK(a.indices() != e0);
  CHECK(a.indices() == data::permutation(50, a.key(), 1));
  CHECK(data::SequentialSampler(3).indices() == std::vector<std::int64_t>{0, 1, 2});
}

TEST_CASE("data: BatchSampler with and without drop_last") {
  auto seq = std::make_shared<data::SequentialSampler>(10);
  data::BatchSampler keep(seq, 4, false), drop(seq, 4, true);
  using B = std::vector<std::vector<std::int64_t>>;
  CHECK(keep.batches() == B{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}});
  CHECK(keep.size() == 3);
  CHECK(drop.batches() == B{{0, 1, 2, 3}, {4, 5, 6, 7}});
  CHECK(drop.size() == 2);
  CHECK_KILN_ERROR(data::BatchSampler(seq, 0, false), "[BatchSampler] batch size must be > 0, got 0");
  CHECK_KILN_ERROR(data::SequentialSampler(-2), "[SequentialSampler] the dataset size must be >= 0, got -2");
}

namespace {

std::vector<std::vector<std::int64_t>> shards(std::int64_t n, int world, data::Remainder r, bool shuffle = true) {
  std::vector<std::vector<std::int64_t>> out;
  for (int rank = 0; rank < world; ++rank) {
    data::DistributedSampler s(n,
                               data::DistributedSamplerOptions().rank(rank).world(world).seed(9).remainder(r).shuffle(
                                   shuffle));
    s.set_epoch(2);
    out.push_back(s.indices());
    CHECK(static_cast<std::int64_t>(out.back().size()) == s.size());
  }
  return out;
}

}  // namespace

TEST_CASE("data: DistributedSampler partitions: cover, disjoint, equal lengths") {
  for (std::int64_t n : {0, 1, 5, 12, 13, 100}) {
    for (int world : {1, 2, 3, 4, 7}) {
      CAPTURE(n);
      CAPTURE(world);
      // Drop: disjoint, equal, n - n % world indices.
      auto d = shards(n, world, data::Remainder::Drop);
      std::multiset<std::int64_t> all;
      for (auto& s : d) {
        CHECK(s.size() == d[0].size());
        all.insert(s.begin(), s.end());
      }
      CHECK(std::set<std::int64_t>(all.begin(), all.end()).size() == all.size());
      CHECK(static_cast<std::int64_t>(all.size()) == n - n % world);
      // Uneven: every index exactly once; lengths differ by at most one.
      auto u = shards(n, world, data::Remainder::Uneven);
      std::multiset<std::int64_t> every;
      for (auto& s : u) {
        CHECK(std::abs(static_cast<long>(s.size()) - static_cast<long>(u[0].size())) <= 1);
        every.insert(s.begin(), s.end());
      }
      std::vector<std::int64_t> iota(static_cast<std::size_t>(n));
      std::iota(iota.begin(), iota.end(), 0);
      CHECK(std::vector<std::int64_t>(every.begin(), every.end()) == iota);
      // Pad: equal lengths ceil(n / world), the union covers the dataset.
      if (n == 0 && world > 1) continue;
      auto p = shards(n, world, data::Remainder::Pad);
      std::set<std::int64_t> covered;
      for (auto& s : p) {
        CHECK(static_cast<std::int64_t>(s.size()) == (n + world - 1) / world);
        covered.insert(s.begin(), s.end());
      }
      CHECK(static_cast<std::int64_t>(covered.size()) == n);
      if (n % world == 0) CHECK(p == d);  // nothing to pad: the same shares as Drop
    }
  }
}

TEST_CASE("data: DistributedSampler: the ranks' batch k together is the global batch k") {
  const std::int64_t n = 40, b = 3;
  const int world = 3;
  std::vector<std::int64_t> order = data::permutation(n, 9, 2);
  auto s = shards(n, world, data::Remainder::Drop);
  for (std::int64_t k = 0; k * b < static_cast<std::int64_t>(s[0].size()); ++k) {
    std::set<std::int64_t> ranks, global;
    for (int r = 0; r < world; ++r)
      for (std::int64_t j = k * b; j < std::min<std::int64_t>((k + 1) * b, s[0].size()); ++j)
        ranks.insert(s[static_cast<std::size_t>(r)][static_cast<std::size_t>(j)]);
    for (std::int64_t j = k * b * world; j < std::min<std::int64_t>((k + 1) * b * world, n - n % world); ++j)
      global.insert(order[static_cast<std::size_t>(j)]);
    CHECK(ranks == global);
  }
  // Without shuffle: rank r takes r, r + world, ...
  CHECK(shards(7, 3, data::Remainder::Uneven, false)[1] == std::vector<std::int64_t>{1, 4});
  CHECK(shards(7, 3, data::Remainder::Pad, false)[2] == std::vector<std::int64_t>{2, 5, 1});
}

TEST_CASE("data: DistributedSampler bad input") {
  using O = data::DistributedSamplerOptions;
  CHECK_KILN_ERROR(data::DistributedSampler(10, O().rank(3).world(3)),
                   "[DistributedSampler] rank 3 is out of range for a world of 3");
  CHECK_KILN_ERROR(data::DistributedSampler(10, O().rank(0).world(0)),
                   "[DistributedSampler] world size must be >= 1, got 0");
  CHECK_KILN_ERROR(data::DistributedSampler(10, O().rank(-2).world(2)),
                   "[DistributedSampler] rank -2 / world 2: -1 means this process's (kiln::distributed), other "
                   "negative values are invalid");
  CHECK_KILN_ERROR(data::DistributedSampler(10, O().rank(0).world(-3)), "rank 0 / world -3: -1 means");
  // An empty dataset, or fewer examples than ranks: empty shares, or padded ones.
  CHECK(data::DistributedSampler(0, O().rank(1).world(2).remainder(data::Remainder::Drop)).indices().empty());
  CHECK(data::DistributedSampler(0, O().rank(0).world(2).remainder(data::Remainder::Uneven)).size() == 0);
  CHECK(data::DistributedSampler(2, O().rank(4).world(5).remainder(data::Remainder::Uneven)).indices().empty());
  CHECK(data::DistributedSampler(2, O().rank(4).world(5).shuffle(false)).indices() == std::vector<std::int64_t>{0});
  CHECK_KILN_ERROR(data::DistributedSampler(0, O().rank(0).world(2)),
                   "[DistributedSampler] cannot pad an empty dataset to 2 ranks");
  if (!distributed::is_initialized())
    CHECK_KILN_ERROR(data::DistributedSampler(10),
                     "[DistributedSampler] rank -1 / world -1: pass both, or call kiln::distributed::init() first");
}
