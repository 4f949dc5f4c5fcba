// The NCCL half of a kiln built without NCCL (no CUDA backend, or no nccl.h / libnccl): CUDA
// tensors have collectives only in the one-process world.
#include "../core/error.hpp"
#include "runtime.hpp"

namespace kiln::distributed::detail {

bool nccl_built() { return false; }
void nccl_submit(Job job, int) {
  throw_error(job.op, "a CUDA tensor needs NCCL across processes, and kiln was built without NCCL");
}

}  // namespace kiln::distributed::detail
