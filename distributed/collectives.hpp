#pragma once
/// Collectives on tensors: MPI for CPU tensors, NCCL for CUDA tensors, local copies in the
/// one-process world. Semantics follow torch.distributed:
/// - all_reduce, broadcast and recv write into their tensor in place; all_gather and
///   reduce_scatter write into `output`. Inputs may be any strided view (non-contiguous ones
///   travel through a contiguous copy) or empty; every rank passes the same dtype and shape.
/// - The plain forms return when the result is in place. The `_async` forms return a Work at
///   once; the result is in place after `wait()`, and until then the tensors must stay alive and
///   unmodified (the Work keeps their storage alive, not their values).
/// - Group ranks: `root`, `src` and `dst` are ranks in `group` (the world by default).
/// - Before an operation runs, the ranks compare what they were asked (collective, dtype,
///   shape, reduce op, root): a disagreement is a kiln::Error on every rank naming the ranks and
///   their values, never a hang or a silent mismatch. Calling before init(), a root out of range,
///   a tensor on another device than the others: kiln::Error at the call.
///   namespace dist = kiln::distributed;
///   dist::all_reduce(grad, dist::ReduceOp::Avg);                 // every rank: the mean
///   dist::Work w = dist::all_reduce_async(bucket);               // returns at once
///   ... more backward ...
///   w.wait();                                                    // bucket holds the sum
///   kiln::Tensor all = dist::all_gather(local);                  // (world, *local.shape)
#include <memory>
#include <string_view>
#include <vector>

#include "../core/tensor.hpp"
#include "process_group.hpp"

namespace kiln::distributed {

/// Sum, mean (floating dtypes only), maximum, minimum. For bool tensors Sum and Max are logical
/// OR, Min is logical AND. bfloat16/float16 travel as 16-bit words and reduce in float32 one
/// pair at a time, rounded back to the 16-bit dtype after each step (as NCCL does): a sum over N
/// ranks carries up to N - 1 roundings (in an order MPI picks; every rank gets the same bits),
/// and Avg divides that sum and rounds once more. Convert to float32 first where this matters
/// (DDPOptions().reduce_dtype(kFloat32) does it for a 16-bit model's gradients).
enum class ReduceOp { Sum, Avg, Max, Min };
std::string_view reduce_op_name(ReduceOp op);

namespace detail {
struct WorkState;
}

/// An operation in flight. Default-constructed: already complete.
class Work {
 public:
  Work() = default;
  explicit Work(std::shared_ptr<detail::WorkState> s) : state_(std::move(s)) {}
  /// Blocks until the operation is done and its result is in the output tensor; rethrows its
  /// error (kiln::Error). Later calls return at once (or rethrow again). For CUDA tensors the
  /// operation is queued on the device's stream, which orders all later work on that device
  /// after it: wait() then only finishes kiln's side (no host synchronization).
  void wait();
  /// The operation has finished (with or without an error); wait() would not block.
  bool is_completed() const;

 private:
  std::shared_ptr<detail::WorkState> state_;
};

/// Reduces `tensor` across the group's ranks; every rank ends with the result.
void all_reduce(const Tensor& tensor, ReduceOp op = ReduceOp::Sum, const Group& group = {});
Work all_reduce_async(const Tensor& tensor, ReduceOp op = ReduceOp::Sum, const Group& group = {});

/// Copies `tensor` of rank `root` into `tensor` of every other rank.
void broadcast(const Tensor& tensor, int root, const Group& group = {});
Work broadcast_async(const Tensor& tensor, int root, const Group& group = {});

/// output (group.size() * input.numel() elements, any shape) = the ranks' inputs concatenated
/// in rank order (row-major).
void all_gather(const Tensor& output, const Tensor& input, const Group& group = {});
Work all_gather_async(const Tensor& output, const Tensor& input, const Group& group = {});
/// A new tensor of shape (group.size(), *input.shape).
Tensor all_gather(const Tensor& input, const Group& group = {});

/// input (group.size() * output.numel() elements) is reduced across ranks, and rank r receives
/// chunk r of the result (row-major) in `output`.
void reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum, const Group& group = {});
Work reduce_scatter_async(const Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum,
                          const Group& group = {});

/// Returns when every rank of the group has called it.
void barrier(const Group& group = {});
Work barrier_async(const Group& group = {});

/// Point to point: `send` to rank `dst`, `recv` from rank `src` into `tensor` (the same dtype and
/// element count on both sides: the message carries the sender's dtype, so another dtype, even of
/// the same size (bfloat16 for float16), or another count is a kiln::Error at the receiver, e.g.
/// "[recv] rank 0 sent 3 bfloat16 elements, 3 float16 expected"; the sender is not told). Messages
/// between two ranks with the same tag arrive in the order sent. A send may complete before the
/// matching recv is posted, or only once it is (large messages).
void send(const Tensor& tensor, int dst, const Group& group = {}, int tag = 0);
Work send_async(const Tensor& tensor, int dst, const Group& group = {}, int tag = 0);
void recv(const Tensor& tensor, int src, const Group& group = {}, int tag = 0);
Work recv_async(const Tensor& tensor, int src, const Group& group = {}, int tag = 0);

}  // namespace kiln::distributed
