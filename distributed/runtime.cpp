// The process group's life cycle (init, finalize, abort), the world's facts, groups, Work, and
// the signatures the ranks compare before each collective.
#include "runtime.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "../core/error.hpp"
#include "../core/shape.hpp"

namespace kiln::distributed {
namespace detail {
namespace {

enum class Mode { None, Local, Mpi, Finalized };
Mode g_mode = Mode::None;
WorldInfo g_world;
std::mutex g_init_mu;

/// The world size an mpirun (or another PMI launcher) announced: 0 when not launched, -1 when
/// launched but the size is not in the environment.
int launched_size(std::string* var) {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (const char* v = std::getenv(name)) {
      *var = fmt::format("{}={}", name, v);
      return std::string_view(name) == "PMIX_RANK" ? -1 : std::atoi(v);
    }
  }
  return 0;
}

void on_terminate() {
  // A rank dying here may leave the others blocked in a collective: end the whole job.
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      std::fprintf(stderr, "kiln::distributed: rank %d terminating on an uncaught exception: %s\n", g_world.rank,
                   x.what());
    } catch (...) {
      std::fprintf(stderr, "kiln::distributed: rank %d terminating on an uncaught exception\n", g_world.rank);
    }
  } else {
    std::fprintf(stderr, "kiln::distributed: rank %d terminating (std::terminate)\n", g_world.rank);
  }
  std::fflush(stderr);
  mpi_abort(1);
}

}  // namespace

const WorldInfo& world_info(const char* op) {
  KILN_CHECK(g_mode == Mode::Local || g_mode == Mode::Mpi, op, "{}",
             g_mode == Mode::Finalized ? "kiln::distributed::finalize() has already been called"
                                       : "kiln::distributed::init() has not been called");
  return g_world;
}

bool is_local_world() { return g_mode == Mode::Local; }

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::AllReduce: return "all_reduce";
    case Kind::Broadcast: return "broadcast";
    case Kind::AllGather: return "all_gather";
    case Kind::ReduceScatter: return "reduce_scatter";
    case Kind::Barrier: return "barrier";
    case Kind::Send: return "send";
    case Kind::Recv: return "recv";
    case Kind::NewGroup: return "new_group";
    case Kind::Split: return "split";
    case Kind::Finalize: return "finalize";
    case Kind::Internal: break;
  }
  return "internal";
}

Signature make_signature(Kind kind, const Tensor* t, ReduceOp reduce, int root) {
  Signature s{};
  s[kSigKind] = static_cast<std::int64_t>(kind);
  s[kSigDType] = t ? static_cast<std::int64_t>(t->dtype()) : -1;
  s[kSigReduce] = kind == Kind::AllReduce || kind == Kind::ReduceScatter ? static_cast<std::int64_t>(reduce) : -1;
  s[kSigRoot] = root;
  if (t) {
    s[kSigNumel] = t->numel();
    s[kSigNdim] = t->dim();
    std::uint64_t rest = 1469598103934665603ull;  // FNV-1a over the sizes that do not fit
    for (std::int64_t d = 0; d < t->dim(); ++d) {
      if (d < kSigDims) s[kSigDim0 + d] = t->size(d);
      else rest = (rest ^ static_cast<std::uint64_t>(t->size(d))) * 1099511628211ull;
    }
    s[kSigDim0 + kSigDims] = static_cast<std::int64_t>(rest);
  }
  return s;
}

std::string describe(const Signature& s) {
  auto kind = static_cast<Kind>(s[kSigKind]);
  std::string out = kind_name(kind);
  if (s[kSigReduce] >= 0) out += fmt::format("({})", reduce_op_name(static_cast<ReduceOp>(s[kSigReduce])));
  if (kind == Kind::Broadcast) out += fmt::format("(root {})", s[kSigRoot]);
  if (kind == Kind::NewGroup) {
    out += fmt::format(" of {} ranks (", s[kSigNumel]);
    for (std::int64_t i = 0; i < std::min<std::int64_t>(s[kSigNumel], kSigDims); ++i)
      out += fmt::format("{}{}", i ? ", " : "", s[kSigDim0 + i]);
    return out + (s[kSigNumel] > kSigDims ? ", ...)" : ")");
  }
  if (s[kSigDType] < 0) return out;
  Shape shape;
  for (std::int64_t d = 0; d < std::min<std::int64_t>(s[kSigNdim], kSigDims); ++d) shape.push_back(s[kSigDim0 + d]);
  std::string dims = shape_str(shape);
  if (s[kSigNdim] > kSigDims) dims.insert(dims.size() - 1, ", ...");
  return out + fmt::format(" {} {}", dtype_name(static_cast<DType>(s[kSigDType])), dims);
}

std::string signature_mismatch(const char* op, const std::vector<Signature>& all) {
  std::string differ;
  int shown = 0;
  for (std::size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    if (shown++ == 3) {
      differ += "; ...";
      break;
    }
    differ += fmt::format("; rank {}: {}", r, describe(all[r]));
  }
  if (differ.empty()) return {};
  return fmt::format("[{}] the ranks disagree: rank 0: {}{}", op, describe(all[0]), differ);
}

void WorkState::complete(std::string err) {
  {
    std::lock_guard<std::mutex> l(mu);
    error = std::move(err);
    done = true;
  }
  cv.notify_all();
}

}  // namespace detail

using namespace detail;

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

bool is_built_with_mpi() { return mpi_built(); }
bool is_built_with_nccl() { return nccl_built(); }

void init() {
  std::lock_guard<std::mutex> l(g_init_mu);
  if (g_mode == Mode::Local || g_mode == Mode::Mpi) return;
  KILN_CHECK(g_mode != Mode::Finalized, "distributed::init", "finalize() has been called; MPI cannot start again");
  std::string var;
  int size = launched_size(&var);
  if (size == 0 || (size == 1 && !mpi_built())) {
    g_world = WorldInfo{};
    g_world.world = std::make_shared<GroupImpl>();
    g_world.world->ranks = {0};
    g_world.world->rank = 0;
    g_mode = Mode::Local;
    return;
  }
  KILN_CHECK(mpi_built(), "distributed::init",
             "launched by an MPI launcher ({}) but kiln was built without MPI: install libopenmpi-dev and "
             "configure with -DKILN_MPI=ON (or run one process without mpirun)",
             var);
  g_world = mpi_start();
  g_mode = Mode::Mpi;
  std::set_terminate(on_terminate);
}

bool is_initialized() { return g_mode == Mode::Local || g_mode == Mode::Mpi; }

void finalize() {
  std::lock_guard<std::mutex> l(g_init_mu);
  if (g_mode == Mode::Mpi) mpi_stop();
  if (g_mode != Mode::None) g_mode = Mode::Finalized;
}

void abort(int code) {
  if (g_mode == Mode::Mpi) mpi_abort(code);
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

InitGuard::~InitGuard() {
  if (std::uncaught_exceptions() > 0 && g_mode == Mode::Mpi && g_world.size > 1) {
    std::fprintf(stderr, "kiln::distributed: rank %d leaves on an exception; aborting the job\n", g_world.rank);
    abort(1);
  }
  finalize();
}

int rank() { return world_info("distributed::rank").rank; }
int world_size() { return world_info("distributed::world_size").size; }
int local_rank() { return world_info("distributed::local_rank").local_rank; }
int local_world_size() { return world_info("distributed::local_world_size").local_size; }
std::string backend_name() { return is_local_world() ? "local" : (world_info("distributed::backend_name"), "mpi"); }

namespace {
const GroupImpl& resolved(const std::shared_ptr<GroupImpl>& impl, const char* op) {
  return impl ? *impl : *world_info(op).world;
}
}  // namespace

int Group::rank() const { return resolved(impl_, "Group::rank").rank; }
int Group::size() const { return static_cast<int>(resolved(impl_, "Group::size").ranks.size()); }
const std::vector<int>& Group::ranks() const { return resolved(impl_, "Group::ranks").ranks; }
std::string Group::str() const {
  const auto& r = ranks();
  return r.size() == 1 ? fmt::format("({},)", r[0]) : fmt::format("({})", fmt::join(r, ", "));
}

Group world() {
  world_info("distributed::world");
  return Group{};
}

Group new_group(const std::vector<int>& ranks) {
  const WorldInfo& w = world_info("new_group");
  KILN_CHECK(!ranks.empty(), "new_group", "needs at least one rank");
  std::vector<bool> seen(static_cast<std::size_t>(w.size), false);
  for (int r : ranks) {
    KILN_CHECK(r >= 0 && r < w.size, "new_group", "rank {} is out of range for a world of {} processes", r, w.size);
    KILN_CHECK(!seen[static_cast<std::size_t>(r)], "new_group", "rank {} is listed twice", r);
    seen[static_cast<std::size_t>(r)] = true;
  }
  if (is_local_world()) {
    auto g = std::make_shared<GroupImpl>();
    g->ranks = ranks;
    g->rank = 0;
    return Group(std::move(g));
  }
  return Group(mpi_new_group(ranks));
}

Group Group::split(int color, int key) const {
  const GroupImpl& self = resolved(impl_, "Group::split");
  KILN_CHECK(self.rank >= 0, "Group::split", "this process (world rank {}) is not a member of group {}",
             distributed::rank(), str());
  if (is_local_world()) {
    auto g = std::make_shared<GroupImpl>();
    if (color >= 0) g->ranks = self.ranks, g->rank = 0;
    return Group(std::move(g));
  }
  return Group(mpi_split(impl_ ? impl_ : world_info("Group::split").world, color, key));
}

void Work::wait() {
  if (!state_) return;
  WorkState& s = *state_;
  std::unique_lock<std::mutex> l(s.mu);
  s.cv.wait(l, [&] { return s.done.load(); });
  if (!s.error.empty()) throw Error(s.error);
  if (!s.finished) {
    s.finished = true;
    if (s.finish) s.finish();
    s.finish = nullptr;
    s.keep.clear();  // CUDA: freed blocks are reused in stream order, after the collective
  }
}

bool Work::is_completed() const {
  if (!state_) return true;
  return state_->done.load() && (!state_->device_ready || state_->device_ready());
}

}  // namespace kiln::distributed
