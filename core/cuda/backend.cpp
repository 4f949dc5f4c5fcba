// Host side of the CUDA backend that launches no kernel of its own: host <-> device copies
// through pinned staging, the fused optimizer step, and the formatted errors of the .cu files'
// host code (which cannot include fmt). The other methods live beside their kernels in *.cu.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "cuda_backend.hpp"
#include "kernels.hpp"

namespace kiln::cuda {
namespace {

constexpr std::size_t kStageChunk = std::size_t{8} << 20;  // pinned staging block per copy step

}  // namespace

void throw_too_many_dims(const char* op, const Shape& shape, std::size_t ndim) {
  throw_error(op, fmt::format("operands of shape {} have {} dims that cannot be merged; the CUDA kernels take at "
                              "most {} (make the inputs contiguous first)",
                              shape_str(shape), ndim, kMaxDims));
}

void check_float(const Tensor& t, const char* op) {
  KILN_CHECK(is_floating(t.dtype()), op, "expected floating point tensors, got {}", dtype_name(t.dtype()));
}

// ---- host <-> device copies ----

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  const std::size_t n = dst.nbytes();
  if (n == 0) return;
  DeviceGuard g(ctx_.index);
  // Through pinned blocks: the host copy of one chunk overlaps the DMA of the previous one,
  // and the call returns without waiting (the caller's buffer is already copied).
  PinnedPool& pool = pinned_pool();
  char* d = static_cast<char*>(dst.raw_data());
  const char* s = static_cast<const char*>(src);
  for (std::size_t off = 0; off < n; off += kStageChunk) {
    const std::size_t len = std::min(kStageChunk, n - off);
    void* stage = pool.acquire(len);
    std::memcpy(stage, s + off, len);
    const cudaError_t e = cudaMemcpyAsync(d + off, stage, len, cudaMemcpyHostToDevice, ctx_.stream);
    pool.release(stage, ctx_.stream);
    check(e, "to");
  }
}

void CudaBackend::copy_from_pinned(const Tensor& dst, const Tensor& src) {
  const std::size_t n = dst.nbytes();
  if (n == 0) return;
  DeviceGuard g(ctx_.index);
  // Straight from the tensor's page-locked block by DMA, in stream order; the block's reuse is
  // ordered after the copy by an event (HostAllocator::record_use).
  check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), n, cudaMemcpyHostToDevice, ctx_.stream), "to");
  host_allocator().record_use(src.storage()->data, ctx_.stream);
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  const std::size_t n = src.nbytes();
  if (n == 0) return;
  DeviceGuard g(ctx_.index);
  PinnedPool& pool = pinned_pool();
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(dst);
  const std::size_t chunks = (n + kStageChunk - 1) / kStageChunk;
  if (chunks == 1) {  // the common small read (item(), printing): one wait on the stream
    void* stage = pool.acquire(n);
    cudaError_t e = cudaMemcpyAsync(stage, s, n, cudaMemcpyDeviceToHost, ctx_.stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ctx_.stream);
    if (e == cudaSuccess) std::memcpy(d, stage, n);
    pool.release(stage, ctx_.stream);
    check(e, "to");  // asynchronous faults of earlier kernels surface here
    return;
  }
  // Up to two chunks in flight: the DMA of chunk i + 1 overlaps the host copy of chunk i.
  std::vector<void*> stage(chunks, nullptr);
  std::vector<cudaEvent_t> done(chunks, nullptr);
  auto enqueue = [&](std::size_t i) {
    const std::size_t off = i * kStageChunk, len = std::min(kStageChunk, n - off);
    stage[i] = pool.acquire(len);
    check(cudaMemcpyAsync(stage[i], s + off, len, cudaMemcpyDeviceToHost, ctx_.stream), "to");
    check(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming), "to");
    check(cudaEventRecord(done[i], ctx_.stream), "to");
  };
  cudaError_t err = cudaSuccess;
  for (std::size_t i = 0; i < chunks; ++i) {
    if (i == 0) enqueue(0);
    if (i + 1 < chunks) enqueue(i + 1);
    const cudaError_t e = cudaEventSynchronize(done[i]);
    if (e == cudaSuccess) {
      const std::size_t off = i * kStageChunk;
      std::memcpy(d + off, stage[i], std::min(kStageChunk, n - off));
    } else if (err == cudaSuccess) {
      err = e;
    }
    cudaEventDestroy(done[i]);
    pool.release(stage[i], ctx_.stream);
  }
  // Asynchronous faults of earlier kernels surface here, at the first wait.
  check(err, "to");
}

// ---- launches for kernels outside core (optim/ foreach updates) ----

void launch_on(int device, const char* op, void (*launch)(cudaStream_t, const void*), const void* ctx) {
  DeviceContext& c = context(device, op);
  DeviceGuard g(c.index);
  launch(c.stream, ctx);
  check_launch(op);
}

}  // namespace kiln::cuda
