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

// Sizes are rounded so that blocks of nearly equal size share a bucket:
// multiples of 64 B below 4 KiB, then 8 steps per power of two (<= 12.5% waste).
std::size_t round_size(std::size_t n) {
  if (n <= 4096) return (n + 63) & ~std::size_t{63};
  std::size_t p = std::size_t{1} << (63 - __builtin_clzll(n));
  std::size_t step = p / 8;
  return (n + step - 1) / step * step;
}

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { release_all(); }

  void* allocate(std::size_t nbytes) override {
    std::size_t n = round_size(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(n);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= n;
        stats_.cache_hits++;
        note_in_use(n);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      cpu_empty_cache();
      p = std::aligned_alloc(64, n);
    }
    KILN_CHECK(p != nullptr, "alloc", "out of memory allocating {} bytes on cpu", nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.os_allocs++;
    note_in_use(n);
    return p;
  }

  void deallocate(void* p, std::size_t nbytes) override {
    std::size_t n = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    free_[n].push_back(p);
    stats_.in_use_bytes -= n;
    stats_.cached_bytes += n;
  }

  Device device() const override { return Device::cpu(); }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [n, v] : free_)
      for (void* p : v) std::free(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

 private:
  void note_in_use(std::size_t n) {
    stats_.in_use_bytes += n;
    if (stats_.in_use_bytes > stats_.peak_in_use_bytes) stats_.peak_in_use_bytes = stats_.in_use_bytes;
  }
  std::mutex mu_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

CachingCpuAllocator& instance() {
  // Leaked on purpose: tensors in static storage may be destroyed after any other static.
  static auto* a = new CachingCpuAllocator();
  return *a;
}

}  // namespace

Allocator& cpu_allocator() { return instance(); }
AllocatorStats cpu_allocator_stats() { return instance().stats(); }
void cpu_empty_cache() { instance().release_all(); }

}  // namespace kiln
