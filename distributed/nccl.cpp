// The NCCL half: collectives on CUDA tensors. Each group gets an NCCL communicator on its first
// CUDA collective (rank 0's ncclUniqueId broadcast over the group's MPI communicator), and every
// operation is queued on the device's one kiln stream: later kernels are ordered after it, and
// the caching allocator's reuse of freed blocks stays stream-ordered (core/cuda/runtime.hpp).
// The cross-rank signature check runs over MPI first, so a mismatch is a kiln::Error, not a hang.
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include "../core/cuda/runtime.hpp"
#include "../core/error.hpp"
#include "runtime.hpp"

namespace kiln::distributed::detail {
namespace {

void check(ncclResult_t r, const char* op, const char* call) {
  if (r != ncclSuccess) throw_error(op, fmt::format("{} failed: {}", call, ncclGetErrorString(r)));
}

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::Bool: return ncclUint8;
    case DType::Int64: return ncclInt64;
    case DType::Float32: return ncclFloat32;
    case DType::BFloat16: return ncclBfloat16;
    case DType::Float16: return ncclFloat16;
    case DType::Float64: break;
  }
  return ncclFloat64;
}

ncclRedOp_t nccl_op(ReduceOp op, DType d) {
  if (d == DType::Bool) return op == ReduceOp::Min ? ncclMin : ncclMax;  // one byte of 0/1: OR, AND
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: break;
  }
  return ncclMin;
}

/// Queues `job` (no buffers: a signature check, or the id broadcast) on the communication thread
/// and waits for it; its error is thrown here.
void run_on_mpi(Job job) {
  auto work = job.work;
  mpi_submit(std::move(job));
  Work(work).wait();
}

ncclComm_t communicator(const std::shared_ptr<GroupImpl>& g, int device, const char* op) {
  if (g->nccl) {
    KILN_CHECK(g->nccl_device == device, op, "this group's NCCL communicator is on cuda:{}, the tensor on cuda:{}",
               g->nccl_device, device);
    return static_cast<ncclComm_t>(g->nccl);
  }
  ncclUniqueId id{};
  if (g->rank == 0) check(ncclGetUniqueId(&id), op, "ncclGetUniqueId");
  Job b;
  b.kind = Kind::Broadcast;
  b.op = op;
  b.group = g;
  b.work = std::make_shared<WorkState>(op);
  b.check = false;  // the collective's own signature was compared already
  b.out = &id;
  b.count = sizeof(id);
  b.dtype = kBool;  // bytes
  b.peer = 0;
  run_on_mpi(std::move(b));
  cuda::DeviceGuard dg(device);
  ncclComm_t comm = nullptr;
  check(ncclCommInitRank(&comm, static_cast<int>(g->ranks.size()), id, g->rank), op, "ncclCommInitRank");
  g->nccl = comm;
  g->nccl_device = device;
  return comm;
}

void launch(const Job& j, ncclComm_t comm, cudaStream_t s) {
  ncclDataType_t type = nccl_type(j.dtype);
  auto n = static_cast<std::size_t>(j.count);
  switch (j.kind) {
    case Kind::AllReduce:
      check(ncclAllReduce(j.out, j.out, n, type, nccl_op(j.reduce, j.dtype), comm, s), j.op, "ncclAllReduce");
      break;
    case Kind::Broadcast: check(ncclBroadcast(j.out, j.out, n, type, j.peer, comm, s), j.op, "ncclBroadcast"); break;
    case Kind::AllGather: check(ncclAllGather(j.in, j.out, n, type, comm, s), j.op, "ncclAllGather"); break;
    case Kind::ReduceScatter:
      check(ncclReduceScatter(j.in, j.out, n, type, nccl_op(j.reduce, j.dtype), comm, s), j.op, "ncclReduceScatter");
      break;
    default: throw_error(j.op, "is not an NCCL collective");
  }
}

}  // namespace

bool nccl_built() { return true; }

void nccl_submit(Job job, int device) {
  try {
    // One CUDA collective at a time per group, check and launch together, so every rank
    // launches them in the order the checks matched them.
    std::lock_guard<std::mutex> lock(job.group->nccl_mu);
    Job sig;
    sig.kind = Kind::Internal;
    sig.op = job.op;
    sig.group = job.group;
    sig.work = std::make_shared<WorkState>(job.op);
    sig.sig = job.sig;
    sig.fn = [] {};
    run_on_mpi(std::move(sig));
    if (job.count == 0) {
      job.work->complete();
      return;
    }
    ncclComm_t comm = communicator(job.group, device, job.op);
    cuda::DeviceContext& ctx = cuda::context(device, job.op);
    cuda::DeviceGuard dg(device);
    launch(job, comm, ctx.stream);
    cudaEvent_t ev = nullptr;
    cuda::check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), job.op);
    std::shared_ptr<void> event(ev, [](void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); });
    cuda::check(cudaEventRecord(ev, ctx.stream), job.op);
    job.work->device_ready = [event] { return cudaEventQuery(static_cast<cudaEvent_t>(event.get())) == cudaSuccess; };
    job.work->complete();
  } catch (const Error& e) {
    job.work->complete(e.what());
  }
}

}  // namespace kiln::distributed::detail
