// The MPI half of a kiln built without MPI: only the one-process world exists, and init()
// refuses an mpirun launch of several processes before any of these is reached.
#include <cstdlib>

#include "../core/error.hpp"
#include "runtime.hpp"

namespace kiln::distributed::detail {
namespace {
[[noreturn]] void unavailable(const char* op) {
  throw_error(op, "kiln was built without MPI (install libopenmpi-dev and configure with -DKILN_MPI=ON)");
}
}  // namespace

bool mpi_built() { return false; }
WorldInfo mpi_start() { unavailable("distributed::init"); }
void mpi_stop() {}
void mpi_abort(int code) { std::_Exit(code); }
void mpi_submit(Job job) { unavailable(job.op); }
std::shared_ptr<GroupImpl> mpi_new_group(const std::vector<int>&) { unavailable("new_group"); }
std::shared_ptr<GroupImpl> mpi_split(const std::shared_ptr<GroupImpl>&, int, int) { unavailable("Group::split"); }

}  // namespace kiln::distributed::detail
