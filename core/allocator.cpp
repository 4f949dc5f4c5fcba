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
// The cache keeps in-use + cached bytes within max(kCapFloor, 1.25 x peak in-use): a miss that
// would pass that returns every cached block first. Fixed shapes never miss after the first step,
// so they never pay for it; varying shapes cannot pile up blocks of sizes no longer asked for.
constexpr std::size_t kCapFloor = std::size_t{32} << 20;

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { release_all(false); }

  void* allocate(std::size_t nbytes) override {
    const std::size_t n = cache_.round(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (void* p = cache_.take(n)) return p;
      if (over_cap(n)) release_locked();
    }
    void* p = os_alloc(n);
    if (!p) {
      release_all(true);
      p = os_alloc(n);
    }
    KILN_CHECK(p != nullptr, "empty", "cannot allocate {} bytes on cpu: out of memory", nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    cache_.note_os_alloc(n);
    if (n >= kMapThreshold) mapped_.emplace(p, n);
    return p;
  }

  void deallocate(void* p, std::size_t nbytes) override {
    const std::size_t n = cache_.round(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    cache_.give(p, n);
  }

  Device device() const override { return Device::cpu(); }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return cache_.stats();
  }

  /// Every cached block back to the OS; `trim` also returns the heap's free pages (malloc_trim).
  void release_all(bool trim) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      release_locked();
    }
    if (trim) malloc_trim(0);
  }

 private:
  bool over_cap(std::size_t n) const {
    const AllocatorStats& s = cache_.stats();
    const std::size_t peak = std::max(s.peak_in_use_bytes, s.in_use_bytes + n);
    return s.cached_bytes > 0 && s.in_use_bytes + s.cached_bytes + n > std::max(kCapFloor, peak + peak / 4);
  }

  static void* os_alloc(std::size_t n) {
    if (n < kMapThreshold) return std::aligned_alloc(64, n);
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;  // page-aligned
  }

  void release_locked() {
    cache_.release_all([this](void* p) {
      auto it = mapped_.find(p);
      if (it == mapped_.end()) {
        std::free(p);
        return;
      }
      ::munmap(p, it->second);
      mapped_.erase(it);
    });
  }

  std::mutex mu_;
  BlockCache cache_{64, 4096};                     // 64-byte aligned blocks
  std::unordered_map<void*, std::size_t> mapped_;  // mmap-backed blocks (in use or cached) by size
};

CachingCpuAllocator& instance() {
  // Leaked on purpose: tensors in static storage may be destroyed after any other static.
  static auto* a = new CachingCpuAllocator();
  return *a;
}

}  // namespace

std::size_t BlockCache::round(std::size_t n) const {
  if (n <= small_limit_) return (n + quantum_ - 1) / quantum_ * quantum_;
  const std::size_t p = std::size_t{1} << (63 - __builtin_clzll(n));
  const std::size_t step = p / 8;
  return (n + step - 1) / step * step;
}

void* BlockCache::take(std::size_t n) {
  auto it = free_.find(n);
  if (it == free_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  stats_.cached_bytes -= n;
  stats_.cache_hits++;
  note_in_use(n);
  return p;
}

void BlockCache::note_os_alloc(std::size_t n) {
  stats_.os_allocs++;
  note_in_use(n);
}

void BlockCache::give(void* p, std::size_t n) {
  free_[n].push_back(p);
  stats_.in_use_bytes -= n;
  stats_.cached_bytes += n;
}

void BlockCache::note_in_use(std::size_t n) {
  stats_.in_use_bytes += n;
  if (stats_.in_use_bytes > stats_.peak_in_use_bytes) stats_.peak_in_use_bytes = stats_.in_use_bytes;
}

Allocator& cpu_allocator() { return instance(); }
AllocatorStats cpu_allocator_stats() { return instance().stats(); }
void cpu_empty_cache() { instance().release_all(true); }

}  // namespace kiln
