#pragma once
// Internal to distributed/: the state behind the process group, the jobs the communication
// thread runs, and the seams to the MPI (mpi.cpp or mpi_stub.cpp) and NCCL (nccl.cpp or
// nccl_stub.cpp) halves. No MPI or NCCL header appears here.
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../core/tensor.hpp"
#include "collectives.hpp"

namespace kiln::distributed::detail {

struct GroupImpl {
  std::vector<int> ranks;  // world ranks in group-rank order
  int rank = -1;           // this process's group rank; -1 when not a member
  void* comm = nullptr;    // MPI_Comm in the MPI world; null in the one-process world
  std::mutex nccl_mu;      // NCCL calls on one communicator are issued one at a time
  void* nccl = nullptr;    // ncclComm_t, made by the group's first CUDA collective
  int nccl_device = -1;
};

enum class Kind : std::int64_t {
  AllReduce = 1,
  Broadcast,
  AllGather,
  ReduceScatter,
  Barrier,
  Send,
  Recv,
  NewGroup,
  Split,
  Internal,
  Finalize
};
const char* kind_name(Kind k);

/// What every rank of a collective must agree on, compared across the ranks before it runs:
/// kind, dtype, reduce op, root, numel, ndim, up to kSigDims sizes, a hash of any further sizes.
constexpr int kSigDims = 9;
enum SigField { kSigKind, kSigDType, kSigReduce, kSigRoot, kSigNumel, kSigNdim, kSigDim0 };
using Signature = std::array<std::int64_t, kSigDim0 + kSigDims + 1>;
Signature make_signature(Kind kind, const Tensor* t, ReduceOp reduce = ReduceOp::Sum, int root = -1);
/// "all_reduce(sum) float32 (4, 3)".
std::string describe(const Signature& s);
/// "" when every rank's signature equals rank 0's; else the message of the kiln::Error each rank
/// raises: "[op] the ranks disagree: rank 0: ...; rank 2: ..." (ranks are group ranks).
std::string signature_mismatch(const char* op, const std::vector<Signature>& all);

/// The shared state of one operation in flight (behind Work).
struct WorkState {
  explicit WorkState(const char* op_name) : op(op_name) {}
  const char* op;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> done{false};
  std::string error;                   // "[op] ..." when it failed
  std::vector<Tensor> keep;            // buffers the operation reads or writes, alive until done
  std::function<void()> finish;        // run once by wait() after success (copy into a strided output)
  std::function<bool()> device_ready;  // CUDA: the device has finished (event query)
  std::int64_t p2p_header = 0;         // send/recv: the message's header (mpi.cpp), at a fixed address
  bool finished = false;
  /// Marks the operation done (error "" = success) and wakes waiters.
  void complete(std::string err = {});
};

/// One request for the communication thread. Buffers are contiguous, of `dtype`.
struct Job {
  Kind kind = Kind::Internal;
  const char* op = "";
  std::shared_ptr<GroupImpl> group;
  std::shared_ptr<WorkState> work;
  Signature sig{};
  bool check = true;         // compare signatures across the group first
  const void* in = nullptr;  // all_gather / reduce_scatter input, send buffer
  void* out = nullptr;       // all_reduce / broadcast in place, outputs, recv buffer
  std::int64_t count = 0;    // elements: of the buffer, or one rank's chunk (all_gather, reduce_scatter)
  DType dtype = kFloat32;
  ReduceOp reduce = ReduceOp::Sum;
  int peer = 0;  // root (broadcast), dst (send), src (recv): group ranks
  int tag = 0;
  std::function<void()> fn;  // Kind::Internal: run as is on the communication thread
};

struct WorldInfo {
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
  std::shared_ptr<GroupImpl> world;
};

// ---- the MPI half: mpi.cpp, or mpi_stub.cpp in a build without MPI ----
bool mpi_built();
/// Starts the communication thread, which initializes MPI and then runs every MPI call.
WorldInfo mpi_start();
/// Runs what is queued, then finalizes MPI and joins the thread.
void mpi_stop();
[[noreturn]] void mpi_abort(int code);
/// Queues a job; its WorkState completes on the communication thread.
void mpi_submit(Job job);
std::shared_ptr<GroupImpl> mpi_new_group(const std::vector<int>& ranks);
std::shared_ptr<GroupImpl> mpi_split(const std::shared_ptr<GroupImpl>& group, int color, int key);

// ---- the NCCL half: nccl.cpp, or nccl_stub.cpp ----
bool nccl_built();
/// Queues a CUDA collective on the device's stream (after the signature check over MPI) and
/// completes job.work through a device event.
void nccl_submit(Job job, int device);

/// The world after init() (kiln::Error naming `op` before it).
const WorldInfo& world_info(const char* op);
bool is_local_world();

}  // namespace kiln::distributed::detail
