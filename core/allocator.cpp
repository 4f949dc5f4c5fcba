#include "allocator.hpp"

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "error.hpp"

namespace kiln {
namespace {

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { release_all(); }

  void* allocate(std::size_t nbytes) override {
    const std::size_t n = cache_.round(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (void* p = cache_.take(n)) return p;
    }
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      cpu_empty_cache();
      p = std::aligned_alloc(64, n);
    }
    KILN_CHECK(p != nullptr, "empty", "cannot allocate {} bytes on cpu: out of memory", nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    cache_.note_os_alloc(n);
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

  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    cache_.release_all([](void* p) { std::free(p); });
  }

 private:
  std::mutex mu_;
  BlockCache cache_{64, 4096};  // 64-byte aligned blocks
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
void cpu_empty_cache() { instance().release_all(); }

}  // namespace kiln
