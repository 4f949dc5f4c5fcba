// The device caching allocator, the pinned host staging pool and the page-locked allocator of
// pinned tensors.
#include <fmt/format.h>

#include "runtime.hpp"

namespace kiln::cuda {
namespace {

std::string mib(std::size_t b) { return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1024.0 * 1024.0)); }

}  // namespace

void* DeviceAllocator::allocate(std::size_t nbytes) {
  const std::size_t n = cache_.round(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (void* p = cache_.take(n)) return p;
  DeviceGuard g(device_);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, n);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cached_locked();  // blocks of other sizes go back to the driver, then retry once
    e = cudaMalloc(&p, n);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    std::size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw_error("alloc", fmt::format("out of memory allocating {} bytes on cuda:{} ({}; kiln holds {} in use, {} "
                                     "cached; the device has {} free of {})",
                                     nbytes, device_, cudaGetErrorString(e), mib(cache_.stats().in_use_bytes),
                                     mib(cache_.stats().cached_bytes), mib(free_b), mib(total_b)));
  }
  cache_.note_os_alloc(n);
  return p;
}

void DeviceAllocator::deallocate(void* p, std::size_t nbytes) {
  if (!p) return;
  const std::size_t n = cache_.round(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  cache_.give(p, n);
}

AllocatorStats DeviceAllocator::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.stats();
}

void DeviceAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceGuard g(device_);
  release_cached_locked();
}

void DeviceAllocator::release_cached_locked() {
  // A cached block may still be read by queued kernels (its tensor died after the launch):
  // wait for the device before handing blocks back.
  if (!cache_.empty()) cudaDeviceSynchronize();
  cache_.release_all([](void* p) { cudaFree(p); });
}

// ---- pinned staging ----

void* PinnedPool::acquire(std::size_t nbytes) {
  std::size_t n = std::size_t{1} << 16;  // powers of two from 64 KiB
  while (n < nbytes) n <<= 1;
  std::lock_guard<std::mutex> lock(mu_);
  for (std::size_t i = 0; i < free_.size(); ++i) {
    Block b = free_[i];
    if (b.n != n || (b.ev && cudaEventQuery(b.ev) != cudaSuccess)) continue;
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
    used_[b.p] = b;
    stats_.cache_hits++;
    stats_.cached_bytes -= n;
    stats_.in_use_bytes += n;
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
    return b.p;
  }
  cudaGetLastError();  // cudaEventQuery's cudaErrorNotReady is not an error here
  Block b{nullptr, n, nullptr, -1};
  check(cudaHostAlloc(&b.p, n, cudaHostAllocPortable), "to");
  used_[b.p] = b;
  stats_.os_allocs++;
  stats_.in_use_bytes += n;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return b.p;
}

void PinnedPool::release(void* p, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = used_.find(p);
  if (it == used_.end()) return;
  Block b = it->second;
  used_.erase(it);
  int cur = 0;
  cudaGetDevice(&cur);  // the stream's device (callers hold a DeviceGuard)
  if (b.device != cur) {
    if (b.ev) cudaEventDestroy(b.ev);
    b.ev = nullptr;
    if (cudaEventCreateWithFlags(&b.ev, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      b.ev = nullptr;
    }
    b.device = cur;
  }
  if (!b.ev || cudaEventRecord(b.ev, stream) != cudaSuccess) {
    // Without an event the block cannot be proven idle: wait for the stream instead.
    cudaGetLastError();
    cudaStreamSynchronize(stream);
  }
  free_.push_back(b);
  stats_.in_use_bytes -= b.n;
  stats_.cached_bytes += b.n;
}

AllocatorStats PinnedPool::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

PinnedPool& pinned_pool() {
  static auto* p = new PinnedPool();  // leaked: see DeviceContext
  return *p;
}

// ---- page-locked memory for tensors ----

namespace {

// True when every event has completed (each is destroyed then); false leaves them all.
bool all_done(std::vector<cudaEvent_t>& events) {
  for (cudaEvent_t e : events) {
    if (cudaEventQuery(e) != cudaSuccess) {
      cudaGetLastError();  // cudaErrorNotReady is an answer, not an error
      return false;
    }
  }
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  events.clear();
  return true;
}

}  // namespace

void* HostAllocator::allocate(std::size_t nbytes) {
  const std::size_t n = cache_.round(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  collect_locked();
  if (void* p = cache_.take(n)) return p;
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, n, cudaHostAllocPortable);  // usable with every device
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    cache_.release_all([](void* q) { cudaFreeHost(q); });  // other sizes back to the driver, then retry once
    e = cudaHostAlloc(&p, n, cudaHostAllocPortable);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw_error("pin_memory", fmt::format("cannot allocate {} bytes of page-locked host memory ({}; kiln holds {} "
                                          "pinned in use, {} cached)",
                                          nbytes, cudaGetErrorString(e), mib(cache_.stats().in_use_bytes),
                                          mib(cache_.stats().cached_bytes)));
  }
  cache_.note_os_alloc(n);
  return p;
}

void HostAllocator::deallocate(void* p, std::size_t nbytes) {
  if (!p) return;
  const std::size_t n = cache_.round(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = uses_.find(p);
  if (it == uses_.end()) {
    cache_.give(p, n);
    return;
  }
  std::vector<cudaEvent_t> events = std::move(it->second);
  uses_.erase(it);
  if (all_done(events)) cache_.give(p, n);
  else waiting_.push_back({p, n, std::move(events)});  // still counted in use: a copy reads it
}

void HostAllocator::record_use(void* p, cudaStream_t stream) {
  cudaEvent_t e = nullptr;
  cudaError_t err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventRecord(e, stream);
  if (err != cudaSuccess) {
    // Without an event the block's reuse cannot be ordered after the copy: wait for it now.
    cudaGetLastError();
    if (e) cudaEventDestroy(e);
    check(cudaStreamSynchronize(stream), "to");
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  uses_[p].push_back(e);
}

void HostAllocator::collect_locked() {
  for (std::size_t i = 0; i < waiting_.size();) {
    if (all_done(waiting_[i].events)) {
      cache_.give(waiting_[i].p, waiting_[i].n);
      waiting_[i] = std::move(waiting_.back());
      waiting_.pop_back();
    } else {
      ++i;
    }
  }
}

AllocatorStats HostAllocator::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  collect_locked();
  return cache_.stats();
}

void HostAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  collect_locked();
  cache_.release_all([](void* p) { cudaFreeHost(p); });
}

HostAllocator& host_allocator() {
  static auto* a = new HostAllocator();  // leaked: pinned tensors in static storage may outlive it
  return *a;
}

}  // namespace kiln::cuda
