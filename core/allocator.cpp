#include "allocator.hpp"

#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "error.hpp"

namespace kiln {
namespace {

// Blocks this large come from mmap and go back with munmap, so an emptied or evicted cache
// really shrinks the process (glibc keeps freed heap memory, and raises its own mmap threshold
// after each large free). Smaller blocks come from the heap; empty_cache trims it.
constexpr std::size_t kMapThreshold = std::size_t{64} << 10;
// The cache keeps in-use + cached bytes within max(kCapFloor, 1.25 x peak in-use). A miss that
// would pass that takes an idle cached block of up to twice the size if there is one, and
// otherwise evicts the least recently freed blocks down to 7/8 of the cap. Fixed shapes never go
// back to the OS after their first steps (a loop whose phases need different sizes, as a mixed-
// precision step's bf16 forward and float32 backward, borrows blocks across sizes instead);
// varying shapes cannot pile up blocks of sizes no longer asked for; and a loop over the cap
// loses only its oldest blocks, not the whole cache (which would fault every page in again).
constexpr std::size_t kCapFloor = std::size_t{32} << 20;

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { release_all(false); }

  void* allocate(std::size_t nbytes) override {
    const std::size_t n = cache_.round(nbytes);
    std::vector<BlockCache::Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (void* p = cache_.take(n)) return p;
      const std::size_t limit = cap(n);
      if (held() + n > limit) {
        // At the cap: an idle block up to twice the size serves the request (the loop's next
        // phase asks for other sizes than the last one freed) before any block is evicted.
        std::size_t got = 0;
        if (void* p = cache_.take_larger(n, 2 * n, &got)) {
          oversized_.emplace(p, got);
          return p;
        }
        evicted = cache_.trim(n, limit);
      }
    }
    os_free(evicted);  // outside the lock: munmap is a system call
    void* p = os_alloc(n);
    if (!p) {
      release_all(true);
      p = os_alloc(n);
    }
    KILN_CHECK(p != nullptr, "empty", "cannot allocate {} bytes on cpu: out of memory", nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    cache_.note_os_alloc(n);
    return p;
  }

  void deallocate(void* p, std::size_t nbytes) override {
    std::size_t n = cache_.round(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    if (!oversized_.empty()) {  // a block handed out for a smaller request goes back to its own bucket
      auto it = oversized_.find(p);
      if (it != oversized_.end()) n = it->second, oversized_.erase(it);
    }
    cache_.give(p, n);
  }

  Device device() const override { return Device::cpu(); }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return cache_.stats();
  }

  /// Every cached block back to the OS; `trim` also returns the heap's free pages (malloc_trim).
  void release_all(bool trim) {
    std::vector<BlockCache::Block> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks = cache_.take_all();
    }
    os_free(blocks);
    if (trim) malloc_trim(0);
  }

 private:
  std::size_t held() const { return cache_.stats().in_use_bytes + cache_.stats().cached_bytes; }
  std::size_t cap(std::size_t n) const {
    const AllocatorStats& s = cache_.stats();
    const std::size_t peak = std::max(s.peak_in_use_bytes, s.in_use_bytes + n);
    return std::max(kCapFloor, peak + peak / 4);
  }

  static void* os_alloc(std::size_t n) {
    if (n < kMapThreshold) return std::aligned_alloc(64, n);
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;  // page-aligned
  }

  // A block's rounded size tells where it came from (os_alloc is called with that size).
  static void os_free(const std::vector<BlockCache::Block>& blocks) {
    for (const BlockCache::Block& b : blocks) {
      if (b.n < kMapThreshold) std::free(b.p);
      else ::munmap(b.p, b.n);
    }
  }

  std::mutex mu_;
  BlockCache cache_{64, 4096};                        // 64-byte aligned blocks
  std::unordered_map<void*, std::size_t> oversized_;  // live blocks larger than their request: size
};

CachingCpuAllocator& instance() {
  // Leaked on purpose: tensors in static storage may be destroyed after any other static.
  static auto* a = new CachingCpuAllocator();
  return *a;
}

}  // namespace

struct BlockCache::Buckets {
  struct Entry {
    void* p;
    std::uint64_t freed_at;  // value of `clock` when given back: eviction takes the smallest
  };
  // Buckets are kept once created, so a steady-state loop never allocates map nodes.
  std::unordered_map<std::size_t, std::vector<Entry>> by_size;
  std::uint64_t clock = 0;
  std::size_t blocks = 0;
};

BlockCache::BlockCache(std::size_t quantum, std::size_t small_limit)
    : quantum_(quantum), small_limit_(small_limit), free_(std::make_unique<Buckets>()) {}

BlockCache::~BlockCache() = default;

std::size_t BlockCache::round(std::size_t n) const {
  if (n <= small_limit_) return (n + quantum_ - 1) / quantum_ * quantum_;
  const std::size_t p = std::size_t{1} << (63 - __builtin_clzll(n));
  const std::size_t step = p / 8;
  return (n + step - 1) / step * step;
}

void* BlockCache::take(std::size_t n) {
  auto it = free_->by_size.find(n);
  if (it == free_->by_size.end() || it->second.empty()) return nullptr;
  void* p = it->second.back().p;  // the most recently freed: likely still in the CPU's caches
  it->second.pop_back();
  free_->blocks--;
  stats_.cached_bytes -= n;
  stats_.cache_hits++;
  note_in_use(n);
  return p;
}

void* BlockCache::take_larger(std::size_t n, std::size_t max_n, std::size_t* got) {
  std::size_t best = 0;
  for (auto& [size, v] : free_->by_size)
    if (!v.empty() && size > n && size <= max_n && (best == 0 || size < best)) best = size;
  if (best == 0) return nullptr;
  *got = best;
  return take(best);
}

void BlockCache::note_os_alloc(std::size_t n) {
  stats_.os_allocs++;
  note_in_use(n);
}

void BlockCache::give(void* p, std::size_t n) {
  free_->by_size[n].push_back({p, free_->clock++});
  free_->blocks++;
  stats_.in_use_bytes -= n;
  stats_.cached_bytes += n;
}

bool BlockCache::empty() const { return free_->blocks == 0; }

BlockCache::Block BlockCache::pop_oldest() {
  // Each bucket is in freeing order, so the oldest block overall heads some bucket. Eviction is
  // rare (a miss over the cap) and there are a few hundred buckets at most: a scan is enough.
  std::vector<Buckets::Entry>* oldest = nullptr;
  std::size_t n = 0;
  for (auto& [size, v] : free_->by_size)
    if (!v.empty() && (!oldest || v.front().freed_at < oldest->front().freed_at)) oldest = &v, n = size;
  void* p = oldest->front().p;
  oldest->erase(oldest->begin());
  free_->blocks--;
  stats_.cached_bytes -= n;
  stats_.os_frees++;
  return {p, n};
}

std::vector<BlockCache::Block> BlockCache::trim(std::size_t incoming, std::size_t cap) {
  std::vector<Block> out;
  if (stats_.in_use_bytes + stats_.cached_bytes + incoming <= cap) return out;
  const std::size_t low = cap - cap / 8;
  while (free_->blocks > 0 && stats_.in_use_bytes + stats_.cached_bytes + incoming > low) out.push_back(pop_oldest());
  return out;
}

std::vector<BlockCache::Block> BlockCache::take_all() {
  std::vector<Block> out;
  out.reserve(free_->blocks);
  for (auto& [n, v] : free_->by_size) {
    for (const Buckets::Entry& e : v) out.push_back({e.p, n});
  }
  free_->by_size.clear();
  stats_.os_frees += out.size();
  stats_.cached_bytes = 0;
  free_->blocks = 0;
  return out;
}

void BlockCache::note_in_use(std::size_t n) {
  stats_.in_use_bytes += n;
  if (stats_.in_use_bytes > stats_.peak_in_use_bytes) stats_.peak_in_use_bytes = stats_.in_use_bytes;
}

Allocator& cpu_allocator() { return instance(); }
AllocatorStats cpu_allocator_stats() { return instance().stats(); }
void cpu_empty_cache() { instance().release_all(true); }

}  // namespace kiln
