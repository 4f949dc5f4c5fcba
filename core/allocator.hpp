#pragma once
/// Memory for tensors. The CPU allocator caches freed blocks (64-byte aligned)
/// by size within a cap (evicting the least recently freed), so a steady-state
/// training step never goes back to the OS:
///   auto s = kiln::cpu_allocator_stats();  // s.os_allocs stops growing after step 1
///   kiln::cpu_empty_cache();               // hand cached blocks back to the OS
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "device.hpp"

namespace kiln {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(std::size_t nbytes) = 0;
  virtual void deallocate(void* p, std::size_t nbytes) = 0;
  virtual Device device() const = 0;
  /// Page-locked host memory (Tensor::is_pinned): GPU copies from it need no staging.
  virtual bool is_pinned() const { return false; }
};

struct AllocatorStats {
  std::size_t in_use_bytes = 0;  // handed to live tensors (rounded sizes)
  std::size_t cached_bytes = 0;  // freed blocks kept for reuse
  std::size_t peak_in_use_bytes = 0;
  std::uint64_t os_allocs = 0;   // blocks obtained from the OS so far
  std::uint64_t cache_hits = 0;  // allocations served from the cache
  std::uint64_t os_frees = 0;    // cached blocks handed back (evicted or emptied)
};

/// The bookkeeping a caching allocator needs, whatever memory it hands out: sizes rounded
/// into buckets, freed blocks kept per bucket in the order they were freed, and the statistics.
/// Not thread-safe (the allocator locks around it). The CPU and CUDA allocators share it:
///   BlockCache cache(64, 4096);
///   std::size_t n = cache.round(nbytes);
///   void* p = cache.take(n);             // the most recently freed block of size n, or null:
///   if (!p) { p = os_alloc(n); cache.note_os_alloc(n); }
///   cache.give(p, n);                    // on free
///   for (auto b : cache.trim(n, cap)) os_free(b.p, b.n);  // least recently freed blocks first
class BlockCache {
 public:
  struct Block {
    void* p;
    std::size_t n;
  };
  /// Multiples of `quantum` up to `small_limit` bytes, then 8 steps per power of two (<= 12.5%
  /// waste), so blocks of nearly equal size share a bucket.
  BlockCache(std::size_t quantum, std::size_t small_limit);
  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  std::size_t round(std::size_t nbytes) const;
  /// The most recently freed cached block of rounded size n (counted as a hit and in use), or nullptr.
  void* take(std::size_t n);
  /// The most recently freed block of the smallest cached size in (n, max_n] (in use at its own
  /// size, returned in *got), or nullptr: a miss can reuse an idle larger block instead of the OS.
  void* take_larger(std::size_t n, std::size_t max_n, std::size_t* got);
  /// A block of rounded size n just obtained from the OS or driver is in use.
  void note_os_alloc(std::size_t n);
  /// A block of rounded size n is free for reuse.
  void give(void* p, std::size_t n);
  /// Makes room for a new block of `incoming` bytes under `cap` (in use + cached + incoming):
  /// when it would not fit, removes the least recently freed cached blocks until in use + cached
  /// + incoming <= 7/8 of cap (the slack lets the next misses fit without another eviction) or
  /// nothing is cached, and returns them for the caller to free. Blocks freed recently (the
  /// sizes the running loop asks for) stay.
  std::vector<Block> trim(std::size_t incoming, std::size_t cap);
  /// Removes every cached block and returns them for the caller to free.
  std::vector<Block> take_all();
  /// Hands every cached block to free_fn(p) and forgets it.
  template <typename F>
  void release_all(F&& free_fn) {
    for (const Block& b : take_all()) free_fn(b.p);
  }
  bool empty() const;
  const AllocatorStats& stats() const { return stats_; }

 private:
  struct Buckets;  // allocator.cpp: freed blocks by size, each with the time it was freed
  void note_in_use(std::size_t n);
  Block pop_oldest();
  std::size_t quantum_, small_limit_;
  std::unique_ptr<Buckets> free_;
  AllocatorStats stats_;
};

Allocator& cpu_allocator();
AllocatorStats cpu_allocator_stats();
/// Returns every cached CPU block to the OS.
void cpu_empty_cache();

/// A reference-counted buffer shared by a tensor and all its views.
struct Storage {
  void* data = nullptr;
  std::size_t nbytes = 0;
  Device device{};
  Allocator* allocator = nullptr;  // null: memory owned elsewhere (from_blob)
  /// Bumped by every in-place write; autograd compares it with the value saved for backward.
  std::uint64_t version = 0;

  Storage(std::size_t n, Allocator& a) : nbytes(n), device(a.device()), allocator(&a) {
    data = n ? a.allocate(n) : nullptr;
  }
  Storage(void* p, std::size_t n, Device d) : data(p), nbytes(n), device(d) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (allocator && data) allocator->deallocate(data, nbytes);
  }
};

}  // namespace kiln
