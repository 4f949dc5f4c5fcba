#pragma once
/// Memory for tensors. The CPU allocator caches freed blocks (64-byte aligned)
/// by size, so a steady-state training step never goes back to the OS:
///   auto s = kiln::cpu_allocator_stats();  // s.os_allocs stops growing after step 1
///   kiln::cpu_empty_cache();               // hand cached blocks back to the OS
#include <cstddef>
#include <cstdint>

#include "device.hpp"

namespace kiln {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(std::size_t nbytes) = 0;
  virtual void deallocate(void* p, std::size_t nbytes) = 0;
  virtual Device device() const = 0;
};

struct AllocatorStats {
  std::size_t in_use_bytes = 0;   // handed to live tensors (rounded sizes)
  std::size_t cached_bytes = 0;   // freed blocks kept for reuse
  std::size_t peak_in_use_bytes = 0;
  std::uint64_t os_allocs = 0;    // blocks obtained from the OS so far
  std::uint64_t cache_hits = 0;   // allocations served from the cache
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
