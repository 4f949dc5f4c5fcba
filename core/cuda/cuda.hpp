#pragma once
/// The CUDA backend's controls. Tensors and modules move to a GPU with `.to(Device::cuda(0))`;
/// these functions report on the backend and tune it. In a build without CUDA they answer
/// "no GPU" (is_available() false, device_count() 0) and the others throw kiln::Error.
///   if (kiln::cuda::is_available()) {
///     kiln::cuda::set_allow_tf32(true);                   // faster float32 matmuls
///     auto x = kiln::randn({1024, 1024}).to(kiln::Device::cuda(0));
///     auto s = kiln::cuda::allocator_stats();              // s.os_allocs: cudaMalloc calls
///   } else {
///     puts(kiln::cuda::unavailable_reason().c_str());
///   }
#include <string>

#include "../allocator.hpp"

namespace kiln::cuda {

/// True when kiln was compiled with the CUDA backend (KILN_CUDA=ON/AUTO found nvcc).
bool is_built();
/// Visible GPUs; 0 without CUDA support or without a GPU. Never throws.
int device_count();
/// A GPU can be used.
bool is_available();
/// Why no GPU can be used ("" when one can), e.g. "kiln was built without CUDA".
std::string unavailable_reason();
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)".
std::string device_name(int device = 0);
/// Waits for all work queued on the device.
void synchronize(int device = 0);

/// The device's caching allocator: blocks freed by tensors are kept for reuse, so a
/// steady-state training step makes no cudaMalloc / cudaFree calls (os_allocs stops growing).
AllocatorStats allocator_stats(int device = 0);
/// Returns every cached device block to the driver.
void empty_cache(int device = 0);
/// The pinned host blocks that stage host <-> device copies.
AllocatorStats pinned_stats();
/// The page-locked host allocator of Tensor::pin_memory: freed blocks are kept for reuse (once
/// the asynchronous copies that read them are done), so pinning same-sized batches every step
/// makes no cudaHostAlloc calls after the first ones (os_allocs stops growing).
AllocatorStats host_allocator_stats();
/// Returns every cached page-locked block to the driver (cudaFreeHost).
void host_empty_cache();

/// TF32 tensor-core math for float32 matmuls (10-bit mantissa products, float32 accumulation):
/// several times faster on sm_80+ at lower precision. Off by default, as in PyTorch >= 1.12.
void set_allow_tf32(bool allow);
bool allow_tf32();

}  // namespace kiln::cuda
