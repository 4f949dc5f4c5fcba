#pragma once
// Internal to the CUDA backend's host code (.cpp files and the host half of .cu files, so
// free of fmt): per-device state (stream, allocator, cuBLAS handle), error checks, the caching
// allocators.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../allocator.hpp"
#include "../backend.hpp"

namespace kiln::cuda {

/// Throws kiln::Error("[op] CUDA error <name>: <text>") when e is not cudaSuccess.
void check(cudaError_t e, const char* op);
/// Checks for a failed kernel launch (bad configuration; faults surface at the next sync).
void check_launch(const char* op);

/// Makes `device` current for a scope (cheap when it already is).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

/// Device memory, cached by rounded size. All of a device's work runs on its one stream, so a
/// block freed by the host can be handed out again at once: later kernels are stream-ordered
/// after every earlier use.
class DeviceAllocator final : public Allocator {
 public:
  explicit DeviceAllocator(int device) : device_(device) {}
  void* allocate(std::size_t nbytes) override;
  void deallocate(void* p, std::size_t nbytes) override;
  Device device() const override { return Device::cuda(device_); }
  AllocatorStats stats();
  void empty_cache();

 private:
  void release_cached_locked();
  int device_;
  std::mutex mu_;
  BlockCache cache_{512, std::size_t{1} << 20};  // 512-byte steps up to 1 MiB
};

/// Pinned host blocks for staging copies. A block returns to the pool with an event recorded
/// after its last copy and is reused only once that event has completed.
class PinnedPool {
 public:
  void* acquire(std::size_t nbytes);
  void release(void* p, cudaStream_t stream);
  AllocatorStats stats();

 private:
  struct Block {
    void* p;
    std::size_t n;
    cudaEvent_t ev;
    int device;  // the event's device (events are recorded on a stream of their own device)
  };
  std::mutex mu_;
  std::vector<Block> free_;
  std::unordered_map<void*, Block> used_;
  AllocatorStats stats_;
};
PinnedPool& pinned_pool();

/// Page-locked host memory that tensors live in (Tensor::pin_memory), cached by rounded size.
/// Asynchronous copies record an event per block they read (record_use); a freed block whose
/// events have not all completed waits aside and returns to the cache only once they have, so
/// a block is never handed out again while a copy may still read it.
class HostAllocator final : public Allocator {
 public:
  void* allocate(std::size_t nbytes) override;
  void deallocate(void* p, std::size_t nbytes) override;
  Device device() const override { return Device::cpu(); }
  bool is_pinned() const override { return true; }
  /// An asynchronous copy enqueued on `stream` (of the current device) reads block p.
  void record_use(void* p, cudaStream_t stream);
  AllocatorStats stats();
  void empty_cache();

 private:
  struct Waiting {
    void* p;
    std::size_t n;
    std::vector<cudaEvent_t> events;
  };
  void collect_locked();  // waiting blocks whose events have all completed go to the cache
  std::mutex mu_;
  BlockCache cache_{512, std::size_t{1} << 20};
  std::unordered_map<void*, std::vector<cudaEvent_t>> uses_;  // live blocks read by copies
  std::vector<Waiting> waiting_;
};
HostAllocator& host_allocator();

class CudaBackend;

/// What kiln keeps per GPU; created on first use and never destroyed (tensors in static
/// storage may outlive everything else).
struct DeviceContext {
  int index = 0;
  cudaStream_t stream = nullptr;
  DeviceAllocator allocator;
  std::size_t smem_optin = 0;  // largest dynamic shared memory per block
  int sm_count = 0;
  std::string name;
  CudaBackend* backend = nullptr;  // owned, never destroyed
  void* cublas = nullptr;          // cublasHandle_t, created by blas.cpp on first use
  void* cublas_workspace = nullptr;
  void* cublaslt = nullptr;  // cublasLtHandle_t (linear's bias epilogue), created by blas.cpp on first use
  explicit DeviceContext(int i) : index(i), allocator(i) {}
};

/// The context of a visible device; throws "[op] device cuda:N is not available: ..." otherwise.
DeviceContext& context(int index, const char* op);

/// TF32 for float32 GEMMs (kiln::cuda::set_allow_tf32).
bool tf32_enabled();

}  // namespace kiln::cuda
