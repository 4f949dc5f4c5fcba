// Device discovery, per-device contexts, error reporting and the public kiln::cuda API.
#include "runtime.hpp"

#include <fmt/format.h>

#include <atomic>

#include "cuda.hpp"
#include "cuda_backend.hpp"

namespace kiln::cuda {

void check(cudaError_t e, const char* op) {
  if (e == cudaSuccess) return;
  throw_error(op, fmt::format("CUDA error {}: {}", cudaGetErrorName(e), cudaGetErrorString(e)));
}

void check_launch(const char* op) { check(cudaGetLastError(), op); }

DeviceGuard::DeviceGuard(int device) {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur != device) {
    prev_ = cur;
    check(cudaSetDevice(device), "cuda");
  }
}
DeviceGuard::~DeviceGuard() {
  if (prev_ >= 0) cudaSetDevice(prev_);
}

namespace {

struct Discovery {
  int count = 0;
  std::string reason;  // why count is 0
};

const Discovery& discovery() {
  static const Discovery d = [] {
    Discovery r;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver) {
      cudaGetLastError();  // not sticky, but keep later checks clean
      int rt = 0;
      cudaRuntimeGetVersion(&rt);
      r.reason = fmt::format(
          "no usable CUDA driver: none is installed, or it is older than CUDA runtime {}.{} "
          "(cudaGetDeviceCount: {})",
          rt / 1000, rt % 1000 / 10, cudaGetErrorString(e));
    } else if (e != cudaSuccess) {
      cudaGetLastError();
      r.reason = fmt::format("no CUDA GPU is visible (cudaGetDeviceCount: {})", cudaGetErrorString(e));
    } else if (n == 0) {
      r.reason = "no CUDA GPU is visible (cudaGetDeviceCount returned 0)";
    }
    r.count = e == cudaSuccess ? n : 0;
    return r;
  }();
  return d;
}

std::atomic<bool> g_tf32{false};

}  // namespace

DeviceContext& context(int index, const char* op) {
  const Discovery& d = discovery();
  if (d.count == 0) throw_error(op, fmt::format("device cuda:{} is not available: {}", index, d.reason));
  if (index < 0 || index >= d.count)
    throw_error(op, fmt::format("device cuda:{} is not available: {} CUDA device{} visible (cuda:0{})", index, d.count,
                                d.count == 1 ? " is" : "s are",
                                d.count == 1 ? "" : fmt::format(" .. cuda:{}", d.count - 1)));
  static std::mutex mu;
  static std::vector<DeviceContext*> ctxs(static_cast<std::size_t>(d.count), nullptr);
  std::lock_guard<std::mutex> lock(mu);
  DeviceContext*& c = ctxs[static_cast<std::size_t>(index)];
  if (!c) {
    auto* n = new DeviceContext(index);  // leaked on purpose, see DeviceContext
    DeviceGuard g(index);
    check(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking), op);
    cudaDeviceProp p{};
    check(cudaGetDeviceProperties(&p, index), op);
    n->smem_optin = p.sharedMemPerBlockOptin;
    n->sm_count = p.multiProcessorCount;
    n->name = fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
                          static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    n->backend = new CudaBackend(*n);
    c = n;
  }
  return *c;
}

Backend& backend_for_device(int index, const char* op) { return *context(index, op).backend; }

Allocator& pinned_host_allocator(const char* op) {
  const Discovery& d = discovery();
  if (d.count == 0) throw_error(op, fmt::format("page-locked memory needs a CUDA GPU: {}", d.reason));
  return host_allocator();
}

bool tf32_enabled() { return g_tf32.load(std::memory_order_relaxed); }

// ---- public API ----
bool is_built() { return true; }
int device_count() { return discovery().count; }
bool is_available() { return discovery().count > 0; }
std::string unavailable_reason() { return discovery().reason; }
std::string device_name(int device) { return context(device, "cuda.device_name").name; }
void synchronize(int device) {
  DeviceContext& c = context(device, "cuda.synchronize");
  DeviceGuard g(device);
  check(cudaStreamSynchronize(c.stream), "cuda.synchronize");
}
AllocatorStats allocator_stats(int device) { return context(device, "cuda.allocator_stats").allocator.stats(); }
void empty_cache(int device) {
  DeviceContext& c = context(device, "cuda.empty_cache");
  DeviceGuard g(device);
  check(cudaStreamSynchronize(c.stream), "cuda.empty_cache");
  c.allocator.empty_cache();
}
AllocatorStats pinned_stats() { return pinned_pool().stats(); }
AllocatorStats host_allocator_stats() { return host_allocator().stats(); }
void host_empty_cache() { host_allocator().empty_cache(); }
void set_allow_tf32(bool allow) { g_tf32.store(allow, std::memory_order_relaxed); }
bool allow_tf32() { return tf32_enabled(); }

}  // namespace kiln::cuda
