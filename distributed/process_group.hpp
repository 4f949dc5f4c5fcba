#pragma once
/// The process group: which process this is among the processes of one job, and sub-groups.
///
/// The same program runs unchanged as one process (`./train`) and under Open MPI
/// (`mpirun -np 4 ./train`): init() finds out which, and without an mpirun launch (or in a kiln
/// built without MPI) it makes a world of one process in which every collective is local.
///   namespace dist = kiln::distributed;
///   int main() {
///     dist::InitGuard guard;                       // init() now, finalize() at scope exit
///     if (dist::rank() == 0) std::printf("%d processes\n", dist::world_size());
///     dist::Group pair = dist::new_group({0, 1});  // every rank of the world calls it
///     if (pair.is_member()) { /* collectives on pair */ }
///   }
#include <memory>
#include <string>
#include <vector>

namespace kiln::distributed {

namespace detail {
struct GroupImpl;
}

/// True when kiln was compiled with MPI (KILN_MPI=AUTO found it, or ON); without it only the
/// one-process world exists.
bool is_built_with_mpi();
/// True when kiln was compiled with NCCL (CUDA tensors' collectives).
bool is_built_with_nccl();

/// Starts the process group. Under `mpirun` (OMPI_COMM_WORLD_SIZE / PMIX_RANK / PMI_SIZE in the
/// environment) it initializes MPI on kiln's communication thread; otherwise it makes a world of
/// one process without touching MPI. Launched with more than one process but built without MPI:
/// kiln::Error (N independent copies would silently repeat one another's work). Calling it again
/// does nothing. Installs a std::terminate handler that aborts the whole MPI job (a rank dying
/// with an uncaught exception must not leave the others blocked in a collective).
void init();
bool is_initialized();
/// Runs every queued operation to completion, then shuts MPI down; every rank must call it (it
/// synchronizes the ranks). No collective may be issued afterwards; init() cannot be called again.
/// A rank that finalizes while another waits in a collective (say it skipped one after catching
/// an error) ends the job (MPI_Abort, the ranks' disagreement on stderr) rather than leave that
/// rank waiting forever.
void finalize();
/// Ends the job at once: MPI_Abort (every rank of the job exits with `code`), or std::exit(code)
/// in the one-process world.
[[noreturn]] void abort(int code = 1);

/// This process's rank in the world, 0..world_size()-1. kiln::Error before init().
int rank();
int world_size();
/// Rank among the processes of this machine (for picking a GPU), and their count.
int local_rank();
int local_world_size();
/// "mpi" (launched by mpirun) or "local" (one process, no MPI).
std::string backend_name();

/// A set of processes that run collectives together. Cheap to copy (a shared handle). A
/// default-constructed Group is the world. Collectives on different groups must be issued in the
/// same order on every process that belongs to both (they share one communication thread).
class Group {
 public:
  Group() = default;
  /// This process's rank in the group, or -1 when it is not a member.
  int rank() const;
  int size() const;
  bool is_member() const { return rank() >= 0; }
  /// World ranks of the members; entry i is group rank i.
  const std::vector<int>& ranks() const;
  /// Splits this group: members passing the same `color` (>= 0) form one new group, ordered by
  /// `key` then by rank; a negative color joins none (the result has is_member() false).
  /// Collective over this group.
  Group split(int color, int key = 0) const;
  /// "(0, 2, 3)": the world ranks.
  std::string str() const;

  /// The shared state; null for the world (resolved at use). For kiln's own collectives.
  const std::shared_ptr<detail::GroupImpl>& impl() const { return impl_; }
  explicit Group(std::shared_ptr<detail::GroupImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<detail::GroupImpl> impl_;
};

/// The world group (same as Group{}).
Group world();
/// A group of the given world ranks (distinct, in range; group rank i is ranks[i]). Collective
/// over the world: every rank calls it with the same list, members and non-members alike;
/// different lists are a kiln::Error on every rank.
Group new_group(const std::vector<int>& ranks);

/// init() now, finalize() when the guard goes out of scope. Destroyed while an exception
/// unwinds the stack, it aborts the job instead: the other ranks may be waiting in a collective
/// this one will never join, and finalize() would wait for them forever.
class InitGuard {
 public:
  InitGuard() { init(); }
  ~InitGuard();
  InitGuard(const InitGuard&) = delete;
  InitGuard& operator=(const InitGuard&) = delete;
};

}  // namespace kiln::distributed
