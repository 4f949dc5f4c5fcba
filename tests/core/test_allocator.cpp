// The caching CPU allocator and the thread-count setting.
#include <cstdint>

#include "test_util.hpp"

using namespace kiln;

namespace {
std::uintptr_t addr(const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.raw_data()); }

// One "training step" worth of allocations of fixed shapes, freed at the end.
void step() {
  auto a = zeros({64, 64});
  auto b = ones({1000}, kFloat64);
  auto c = empty({3, 5, 7}, kInt64);
  auto d = a + 1.0;             // an op's output
  auto e = zeros({200000});     // a large block
  auto f = a.t().contiguous();  // a copy
  auto g = zeros({17}, kBool);
  CHECK(d.numel() + e.numel() + f.numel() + g.numel() + b.numel() + c.numel() > 0);
}
}  // namespace

TEST_CASE("allocations are 64-byte aligned") {
  for (std::int64_t n : {1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 1000, 1023, 4097, 100001}) {
    INFO("numel " << n);
    for (DType dt : {kBool, kInt64, kFloat32, kFloat64}) {
      auto t = empty({n}, dt);
      CHECK(addr(t) % 64 == 0);
    }
  }
  // Outputs of ops and copies too.
  auto x = ones({33});
  CHECK(addr(x * 2.0) % 64 == 0);
  CHECK(addr(x.clone()) % 64 == 0);
  CHECK(addr(arange(5)) % 64 == 0);
}

TEST_CASE("steady-state allocation does not go back to the OS") {
  step();  // warm-up: fills the cache with every size this step needs
  step();
  const auto before = cpu_allocator_stats();
  for (int i = 0; i < 50; ++i) step();
  const auto after = cpu_allocator_stats();
  CHECK(after.os_allocs == before.os_allocs);
  CHECK(after.cache_hits > before.cache_hits);
  CHECK(after.in_use_bytes == before.in_use_bytes);
}

TEST_CASE("freed blocks are reused for the same size") {
  cpu_empty_cache();
  void* p;
  {
    auto t = empty({12345});
    p = t.raw_data();
  }
  auto s0 = cpu_allocator_stats();
  auto t2 = empty({12345});
  auto s1 = cpu_allocator_stats();
  CHECK(t2.raw_data() == p);
  CHECK(s1.os_allocs == s0.os_allocs);
  CHECK(s1.cache_hits == s0.cache_hits + 1);
  // A nearby size shares the rounded bucket.
  t2 = Tensor();
  auto t3 = empty({12346});
  CHECK(t3.raw_data() == p);
}

TEST_CASE("stats track bytes in use and peak and cached bytes") {
  cpu_empty_cache();
  const auto s0 = cpu_allocator_stats();
  CHECK(s0.cached_bytes == 0);
  const std::size_t mib = 1 << 20;
  {
    auto t = empty({static_cast<std::int64_t>(mib / 4)});  // 1 MiB of float32
    auto s1 = cpu_allocator_stats();
    CHECK(s1.in_use_bytes >= s0.in_use_bytes + mib);
    CHECK(s1.in_use_bytes <= s0.in_use_bytes + mib + mib / 8);  // rounding wastes <= 12.5%
    CHECK(s1.peak_in_use_bytes >= s1.in_use_bytes);
    // A view does not allocate.
    auto v = t.view({256, -1});
    CHECK(cpu_allocator_stats().in_use_bytes == s1.in_use_bytes);
  }
  auto s2 = cpu_allocator_stats();
  CHECK(s2.in_use_bytes == s0.in_use_bytes);
  CHECK(s2.cached_bytes >= mib);
  cpu_empty_cache();
  auto s3 = cpu_allocator_stats();
  CHECK(s3.cached_bytes == 0);
  CHECK(s3.in_use_bytes == s0.in_use_bytes);
  // After the cache is emptied, the next allocation goes to the OS again.
  auto t = empty({static_cast<std::int64_t>(mib / 4)});
  CHECK(cpu_allocator_stats().os_allocs == s3.os_allocs + 1);
}

TEST_CASE("empty_cache keeps live tensors intact") {
  auto live = arange(1000);
  { auto tmp = zeros({5000}); }
  cpu_empty_cache();
  CHECK(cpu_allocator_stats().cached_bytes == 0);
  CHECK(live.to_vector<std::int64_t>()[999] == 999);
  // Storage of a view keeps the block alive after the base handle is gone.
  Tensor v;
  {
    auto base = arange(10);
    v = base.slice(0, 5, 10);
  }
  cpu_empty_cache();
  CHECK(v.to_vector<std::int64_t>() == std::vector<std::int64_t>{5, 6, 7, 8, 9});
}

TEST_CASE("zero-size tensors allocate nothing") {
  const auto s0 = cpu_allocator_stats();
  auto z = empty({0, 5});
  CHECK(cpu_allocator_stats().os_allocs == s0.os_allocs);
  CHECK(cpu_allocator_stats().in_use_bytes == s0.in_use_bytes);
  CHECK(z.storage()->nbytes == 0);
  CHECK(cpu_allocator().device() == Device::cpu());
}

TEST_CASE("set_num_threads / get_num_threads") {
  const int saved = get_num_threads();
  CHECK(saved >= 1);
  set_num_threads(1);
  CHECK(get_num_threads() == 1);
  set_num_threads(3);
  CHECK(get_num_threads() == 3);
  // Results of a parallel kernel do not change with the thread count.
  auto x = arange(0, 200000, 1, kFloat64);
  set_num_threads(1);
  auto a = (x * 3.0 + 1.0).to_vector<double>();
  set_num_threads(2);
  auto b = (x * 3.0 + 1.0).to_vector<double>();
  CHECK(a == b);
  CHECK(a[199999] == 599998.0);
  CHECK_KILN_ERROR(set_num_threads(0), "[set_num_threads] thread count must be >= 1, got 0");
  CHECK_KILN_ERROR(set_num_threads(-2), "[set_num_threads] thread count must be >= 1, got -2");
  CHECK(get_num_threads() == 2);  // unchanged by the failed calls
  set_num_threads(saved);
  CHECK(get_num_threads() == saved);
}

namespace {
void* fake(std::uintptr_t i) { return reinterpret_cast<void*>(i << 12); }  // never dereferenced
std::vector<std::size_t> sizes(const std::vector<BlockCache::Block>& bs) {
  std::vector<std::size_t> out;
  for (const auto& b : bs) out.push_back(b.n);
  return out;
}
}  // namespace

TEST_CASE("BlockCache hands out the most recently freed block and evicts the least recently freed first") {
  BlockCache c(64, 4096);
  const std::size_t k8 = 8192, k12 = 12288, k16 = 16384;
  CHECK(c.round(8000) == k8);
  CHECK(c.round(12000) == k12);
  // Five blocks in use, freed in the order 1..5 (sizes 8, 12, 8, 16, 12 KiB).
  const std::vector<std::size_t> n = {k8, k12, k8, k16, k12};
  for (std::size_t i = 0; i < n.size(); ++i) c.note_os_alloc(n[i]);
  for (std::size_t i = 0; i < n.size(); ++i) c.give(fake(i + 1), n[i]);
  CHECK(c.stats().cached_bytes == 57344);
  CHECK(c.stats().in_use_bytes == 0);
  CHECK(c.stats().os_allocs == 5);
  // Room under the cap: nothing is evicted.
  CHECK(c.trim(2048, 60000).empty());
  // Over the cap: the oldest blocks go until in use + cached + incoming <= 7/8 of the cap
  // (52500): block 1 alone leaves 49152 + 4096 > 52500, so block 2 goes too.
  auto ev = c.trim(4096, 60000);
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].p == fake(1));
  CHECK(ev[1].p == fake(2));
  CHECK(sizes(ev) == std::vector<std::size_t>{k8, k12});
  CHECK(c.stats().cached_bytes == 36864);
  CHECK(c.stats().os_frees == 2);
  // What stays is served: block 3 (the only 8 KiB left), block 5.
  CHECK(c.take(k8) == fake(3));
  CHECK(c.take(k8) == nullptr);
  CHECK(c.take(k12) == fake(5));
  CHECK(c.stats().cache_hits == 2);
  CHECK(c.stats().in_use_bytes == k8 + k12);
  // Within a bucket: the newest is handed out, the oldest evicted.
  c.note_os_alloc(k16);
  c.give(fake(6), k16);  // bucket 16 KiB: block 4 (older), block 6
  CHECK(c.take(k16) == fake(6));
  c.give(fake(6), k16);
  ev = c.trim(0, 16384);  // in use 20 KiB already passes the cap: everything cached goes, no more
  CHECK(sizes(ev) == std::vector<std::size_t>{k16, k16});
  CHECK(ev[0].p == fake(4));
  CHECK(c.empty());
  CHECK(c.stats().cached_bytes == 0);
  CHECK(c.stats().in_use_bytes == k8 + k12);
}

TEST_CASE("BlockCache take_larger lends the smallest idle block within the limit, take_all empties") {
  BlockCache c(64, 4096);
  const std::vector<std::size_t> n = {32768, 16384, 12288, 8192};
  for (std::size_t i = 0; i < n.size(); ++i) c.note_os_alloc(n[i]);
  for (std::size_t i = 0; i < n.size(); ++i) c.give(fake(i + 1), n[i]);
  std::size_t got = 0;
  CHECK(c.take_larger(8192, 16384, &got) == fake(3));  // 12 KiB: the smallest above 8 KiB
  CHECK(got == 12288);
  CHECK(c.take_larger(8192, 16384, &got) == fake(2));
  CHECK(got == 16384);
  CHECK(c.take_larger(8192, 16384, &got) == nullptr);  // 32 KiB is over the limit; 8 KiB is not larger
  CHECK(c.stats().in_use_bytes == 12288 + 16384);
  CHECK(c.stats().cache_hits == 2);
  auto all = c.take_all();
  CHECK(all.size() == 2);
  CHECK(c.empty());
  CHECK(c.stats().cached_bytes == 0);
  CHECK(c.stats().os_frees == 2);
  CHECK(c.take(8192) == nullptr);
  c.give(fake(2), 16384);  // the cache works on after being emptied
  CHECK(c.take(16384) == fake(2));
}
