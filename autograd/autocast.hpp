#pragma once
/// Automatic mixed precision, after PyTorch's `torch.autocast`: while the guard lives, ops on
/// tensors of its device type pick their precision themselves. Matmul-like ops (matmul, linear
/// and so nn::Linear and MultiHeadAttention's projections, scaled_dot_product_attention) take
/// float32 inputs in the low-precision dtype (the kernels accumulate in float32); softmax,
/// log_softmax, layer_norm, rms_norm, the losses (cross_entropy, mse_loss) and the reductions
/// sum, mean, var, std, logsumexp take low-precision inputs in float32. Other ops run in the
/// dtype of their inputs (type promotion: bfloat16 + float32 -> float32). Parameters stay
/// float32: a cast of a leaf that requires grad is made once per outermost autocast region and
/// reused (a weight used by three ops converts once), and its gradient flows back to the
/// float32 parameter. Backward runs with autocast off: every gradient has its input's dtype.
///
///   {
///     auto mixed = kiln::autocast(kiln::kBFloat16);        // this thread, CPU tensors
///     Tensor logits = model(x);                            // the Linear layers run in bfloat16
///     loss = kiln::cross_entropy(logits, y);               // float32
///   }                                                      // the weight casts are dropped here
///   loss.backward();                                       // float32 gradients on float32 weights
///   opt.step();
///
/// Guards nest (the newest one wins until it ends; guards held in optionals may end in any order:
/// the newest guard still alive decides); `autocast(dtype, false)` turns autocast off
/// inside an enclosing region. bfloat16 and float16 work on the CPU (float16 converts to float32
/// around the CPU kernels, so it is correct but not faster: prefer bfloat16 there) and on CUDA.
/// float16 gradients can underflow: train float16 with kiln::amp::GradScaler (optim/grad_scaler.hpp).
#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "../core/tensor.hpp"

namespace kiln {

/// What autocast does to an op's floating point inputs.
enum class AutocastPolicy {
  LowPrecision,  // float32 -> the autocast dtype (float64 stays float64)
  Float32,       // bfloat16 / float16 -> float32
};

/// Sets autocast for one device type in this thread while alive (use kiln::autocast(...) to
/// make one). Throws kiln::Error for a dtype other than bfloat16/float16 or a device type this
/// build or machine cannot run.
class [[nodiscard]] AutocastGuard {
 public:
  AutocastGuard(DeviceType device, DType dtype, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;
};

/// Autocast for CPU tensors: `auto mixed = kiln::autocast(kiln::kBFloat16);`
[[nodiscard]] inline AutocastGuard autocast(DType dtype, bool enabled = true) {
  return AutocastGuard(DeviceType::CPU, dtype, enabled);
}
/// Autocast for tensors of `device`'s type: `auto mixed = kiln::autocast(Device::cuda(), kFloat16);`
[[nodiscard]] inline AutocastGuard autocast(Device device, DType dtype, bool enabled = true) {
  return AutocastGuard(device.type, dtype, enabled);
}

/// Whether autocast is on for `device` in this thread, and its dtype (bfloat16 when never set).
bool is_autocast_enabled(DeviceType device = DeviceType::CPU);
DType autocast_dtype(DeviceType device = DeviceType::CPU);
/// Number of weight casts autocast holds for reuse in this thread (dropped when the outermost
/// guard ends).
std::size_t autocast_cached_casts();

/// `t` as an op under `policy` sees it: unchanged unless autocast is on for t's device and t is
/// a floating point tensor the policy converts. For writing ops that follow autocast's rules:
///   Tensor my_op(const Tensor& x) { Tensor xf = kiln::autocast_input(x, AutocastPolicy::Float32); ... }
Tensor autocast_input(const Tensor& t, AutocastPolicy policy);
/// The dtype autocast_input(t, policy) would give, without converting anything (e.g. to allocate
/// a buffer for what a Linear layer will produce).
DType autocast_input_dtype(const Tensor& t, AutocastPolicy policy);

namespace detail {
/// Whether autocast is on for any device in this thread (one thread-local read; ops test it
/// before looking further).
bool autocast_active();

/// Turns autocast off in this thread while alive, keeping the cache (the engine runs backward
/// under it, so gradients get their forward inputs' dtypes).
class AutocastSuspend {
 public:
  AutocastSuspend();
  ~AutocastSuspend();
  AutocastSuspend(const AutocastSuspend&) = delete;
  AutocastSuspend& operator=(const AutocastSuspend&) = delete;

 private:
  std::size_t saved_;
};
}  // namespace detail

}  // namespace kiln
