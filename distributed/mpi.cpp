// The MPI half: one communication thread per process owns every MPI call (MPI initialized with
// MPI_THREAD_SERIALIZED by that thread), so any thread may queue collectives while others
// compute, and they reach MPI in the order they were queued. Each collective is posted
// non-blocking and waited for on the thread without holding a core (wait_for below); send/recv
// are posted non-blocking and progressed between jobs, so a pending recv never blocks the
// collectives queued behind it.
#include <fmt/format.h>
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <deque>
#include <future>
#include <thread>

#include "../core/error.hpp"
#include "runtime.hpp"

namespace kiln::distributed::detail {
namespace {

struct MpiFailure {
  std::string what;
};

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw MpiFailure{fmt::format("{} failed: {}", call, std::string_view(text, static_cast<std::size_t>(len)))};
}

MPI_Comm comm_of(const GroupImpl& g) { return *static_cast<MPI_Comm*>(g.comm); }
void set_comm(GroupImpl& g, MPI_Comm c) { g.comm = new MPI_Comm(c); }  // communicators live as long as MPI

// bfloat16 and float16: MPI has no such types. They travel as 16-bit words and reduce through
// user-defined operations that compute in float32 and round back, so the wire carries half of
// float32's bytes (the reason to reduce in 16 bits); every reduction step rounds, as NCCL's
// 16-bit all-reduce does.
template <typename T, ReduceOp kOp>
void reduce_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = a[i], y = b[i];
    b[i] = T(kOp == ReduceOp::Max ? (x > y ? x : y) : kOp == ReduceOp::Min ? (x < y ? x : y) : x + y);
  }
}

/// Sum, Max, Min for [0] bfloat16 and [1] float16, made once MPI is up.
MPI_Op g_ops16[2][3];

template <typename T>
void create_ops16(MPI_Op* ops) {
  check(MPI_Op_create(&reduce_16bit<T, ReduceOp::Sum>, 1, &ops[0]), "MPI_Op_create");
  check(MPI_Op_create(&reduce_16bit<T, ReduceOp::Max>, 1, &ops[1]), "MPI_Op_create");
  check(MPI_Op_create(&reduce_16bit<T, ReduceOp::Min>, 1, &ops[2]), "MPI_Op_create");
}

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::BFloat16:
    case DType::Float16: return MPI_UINT16_T;
    case DType::Bool: return MPI_UINT8_T;
    case DType::Int64: return MPI_INT64_T;
    case DType::Float32: return MPI_FLOAT;
    case DType::Float64: return MPI_DOUBLE;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op, DType d) {
  // bool is one byte of 0 or 1: OR is max, AND is min.
  if (d == DType::Bool) return op == ReduceOp::Min ? MPI_MIN : MPI_MAX;
  if (is_reduced_float(d)) {
    MPI_Op* ops = g_ops16[d == DType::BFloat16 ? 0 : 1];
    return op == ReduceOp::Max ? ops[1] : op == ReduceOp::Min ? ops[2] : ops[0];
  }
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

void divide(void* p, std::int64_t n, DType d, int by) {
  visit_dtype(d, [&](auto t) {
    using T = decltype(t);
    if constexpr (std::is_floating_point_v<T>) {
      T* x = static_cast<T*>(p);
      for (std::int64_t i = 0; i < n; ++i) x[i] /= static_cast<T>(by);
    } else if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
      T* x = static_cast<T*>(p);
      for (std::int64_t i = 0; i < n; ++i) x[i] = T(static_cast<float>(x[i]) / static_cast<float>(by));
    }
  });
}

// Point to point: the sender's dtype travels in an 8-byte header ahead of the data, so a
// receiver expecting another dtype of the same size (bfloat16 and float16, int64 and float64)
// fails instead of reinterpreting the bits (collectives compare signatures instead, which p2p
// cannot: a send has no partner to exchange with before its message arrives). One message, no
// copy: an MPI struct type spans the header and the tensor, both as bytes.
constexpr std::int64_t kP2PMagic = 0x6b696c6e00000000;  // "kiln" above the dtype

MPI_Datatype p2p_type(std::int64_t* header, const void* data, std::int64_t count, DType d) {
  MPI_Datatype element, message;
  check(MPI_Type_contiguous(static_cast<int>(itemsize(d)), MPI_BYTE, &element), "MPI_Type_contiguous");
  int lengths[2] = {static_cast<int>(sizeof *header), static_cast<int>(count)};
  MPI_Aint at[2];
  MPI_Get_address(header, &at[0]);
  MPI_Get_address(data, &at[1]);
  MPI_Datatype types[2] = {MPI_BYTE, element};
  check(MPI_Type_create_struct(2, lengths, at, types, &message), "MPI_Type_create_struct");
  check(MPI_Type_commit(&message), "MPI_Type_commit");
  MPI_Type_free(&element);
  return message;
}

/// The receiver's verdict on a message that arrived whole: "" or the error.
std::string p2p_mismatch(const Job& j, const MPI_Status& st) {
  MPI_Count bytes = 0;
  MPI_Get_elements_x(&st, MPI_BYTE, &bytes);
  const std::int64_t h = j.work->p2p_header, code = h & 0xff;
  if (bytes < 8 || (h & ~std::int64_t{0xff}) != kP2PMagic || code > static_cast<std::int64_t>(DType::Float16))
    return fmt::format("[recv] rank {} sent a message without kiln's header ({} bytes)", j.peer, bytes);
  const auto sent = static_cast<DType>(code);
  const std::int64_t n = (bytes - 8) / static_cast<std::int64_t>(itemsize(sent));
  if (sent == j.dtype && n == j.count) return {};
  return fmt::format("[recv] rank {} sent {} {} elements, {} {} expected", j.peer, n, dtype_name(sent), j.count,
                     dtype_name(j.dtype));
}

// How the communication thread waits for a non-blocking operation. Open MPI moves messages only
// while someone polls, and its blocking collectives poll in a tight loop: where the ranks' compute
// threads fill the cores (2 ranks x 1 thread on 2 cores), that loop takes a core from them, from
// this rank or from the very peer it waits for (measured on bench/gpt: the blocking calls cost a
// rank ~20 ms of CPU per small-preset step, these waits ~3).
// - Arrival (the signature exchange: peers may still be computing): poll for kArrivalSpin, then
//   sleep between polls, the pause doubling up to kMaxPause. A rank that arrives first costs no
//   CPU; the last arrival is seen at most kMaxPause late.
// - Transfer (the collective itself, every rank known to be there): poll without pause, but yield
//   the core between polls so that a runnable compute thread goes first.
enum class WaitMode { Arrival, Transfer };
constexpr auto kArrivalSpin = std::chrono::microseconds(50);
constexpr auto kMaxPause = std::chrono::microseconds(200);

void wait_for(MPI_Request& req, WaitMode mode, const char* call) {
  const auto t0 = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(10);
  for (;;) {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), call);
    if (done) return;
    if (mode == WaitMode::Transfer) {
      std::this_thread::yield();
    } else if (std::chrono::steady_clock::now() - t0 >= kArrivalSpin) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kMaxPause);
    }
  }
}

class CommThread {
 public:
  WorldInfo start() {
    std::promise<WorldInfo> ready;
    auto fut = ready.get_future();
    thread_ = std::thread([this, &ready] { main(ready); });
    try {
      return fut.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }

  void submit(Job job) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void main(std::promise<WorldInfo>& ready) {
    WorldInfo w;
    try {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
      create_ops16<BFloat16>(g_ops16[0]);
      create_ops16<Half>(g_ops16[1]);
      check(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank), "MPI_Comm_rank");
      check(MPI_Comm_size(MPI_COMM_WORLD, &w.size), "MPI_Comm_size");
      MPI_Comm local;
      check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &local),
            "MPI_Comm_split_type");
      check(MPI_Comm_rank(local, &w.local_rank), "MPI_Comm_rank");
      check(MPI_Comm_size(local, &w.local_size), "MPI_Comm_size");
      check(MPI_Comm_free(&local), "MPI_Comm_free");
      w.world = std::make_shared<GroupImpl>();
      w.world->rank = w.rank;
      for (int r = 0; r < w.size; ++r) w.world->ranks.push_back(r);
      set_comm(*w.world, MPI_COMM_WORLD);
    } catch (const MpiFailure& f) {
      ready.set_exception(std::make_exception_ptr(Error("[distributed::init] " + f.what)));
      return;
    }
    ready.set_value(w);
    loop();
    MPI_Finalize();
  }

  void loop() {
    for (;;) {
      Job job;
      bool have = false;
      {
        std::unique_lock<std::mutex> l(mu_);
        if (queue_.empty() && reqs_.empty()) cv_.wait(l, [&] { return !queue_.empty() || stop_; });
        if (!queue_.empty()) {
          job = std::move(queue_.front());
          queue_.pop_front();
          have = true;
        } else if (stop_ && reqs_.empty()) {
          return;
        }
      }
      if (have) run(job);
      if (!reqs_.empty()) {
        progress();
        if (!have) std::this_thread::yield();  // polling is what moves Open MPI's messages along
      }
    }
  }

  void run(Job& job) {
    try {
      if (job.check && !signatures_agree(job)) return;
      execute(job);
    } catch (const MpiFailure& f) {
      job.work->complete(fmt::format("[{}] {}", job.op, f.what));
    } catch (const std::exception& e) {
      job.work->complete(e.what());
    }
  }

  bool signatures_agree(Job& job) {
    const GroupImpl& g = *job.group;
    std::vector<Signature> all(g.ranks.size());
    const int n = static_cast<int>(job.sig.size());
    MPI_Request req;
    check(MPI_Iallgather(job.sig.data(), n, MPI_INT64_T, all.data(), n, MPI_INT64_T, comm_of(g), &req),
          "MPI_Iallgather");
    wait_for(req, WaitMode::Arrival, "MPI_Iallgather");
    std::string msg = signature_mismatch(job.op, all);
    if (msg.empty()) return true;
    job.work->complete(std::move(msg));
    return false;
  }

  void execute(Job& j) {
    if (j.count == 0 && j.kind != Kind::Barrier && j.kind != Kind::Internal) {
      j.work->complete();  // empty: the signatures agreed, nothing moves (MPI rejects two null buffers)
      return;
    }
    MPI_Comm c = comm_of(*j.group);
    const int size = static_cast<int>(j.group->ranks.size());
    MPI_Datatype type = mpi_type(j.dtype);
    const std::int64_t step = INT_MAX;  // MPI counts are int: long buffers go in pieces
    char* out = static_cast<char*>(j.out);
    MPI_Request req;
    switch (j.kind) {
      case Kind::AllReduce:
        for (std::int64_t at = 0; at < j.count; at += step) {
          int n = static_cast<int>(std::min(step, j.count - at));
          void* buf = out + at * itemsize(j.dtype);
          check(MPI_Iallreduce(MPI_IN_PLACE, buf, n, type, mpi_op(j.reduce, j.dtype), c, &req), "MPI_Iallreduce");
          wait_for(req, WaitMode::Transfer, "MPI_Iallreduce");
        }
        if (j.reduce == ReduceOp::Avg) divide(j.out, j.count, j.dtype, size);
        break;
      case Kind::Broadcast:
        for (std::int64_t at = 0; at < j.count; at += step) {
          int n = static_cast<int>(std::min(step, j.count - at));
          check(MPI_Ibcast(out + at * itemsize(j.dtype), n, type, j.peer, c, &req), "MPI_Ibcast");
          wait_for(req, WaitMode::Transfer, "MPI_Ibcast");
        }
        break;
      case Kind::AllGather:
        check(MPI_Iallgather(j.in, static_cast<int>(j.count), type, j.out, static_cast<int>(j.count), type, c, &req),
              "MPI_Iallgather");
        wait_for(req, WaitMode::Transfer, "MPI_Iallgather");
        break;
      case Kind::ReduceScatter:
        check(MPI_Ireduce_scatter_block(j.in, j.out, static_cast<int>(j.count), type, mpi_op(j.reduce, j.dtype), c,
                                        &req),
              "MPI_Ireduce_scatter_block");
        wait_for(req, WaitMode::Transfer, "MPI_Ireduce_scatter_block");
        if (j.reduce == ReduceOp::Avg) divide(j.out, j.count, j.dtype, size);
        break;
      case Kind::Barrier:
        check(MPI_Ibarrier(c, &req), "MPI_Ibarrier");
        wait_for(req, WaitMode::Transfer, "MPI_Ibarrier");
        break;
      case Kind::Send:
      case Kind::Recv: {
        std::int64_t* header = &j.work->p2p_header;
        if (j.kind == Kind::Send) *header = kP2PMagic | static_cast<std::int64_t>(j.dtype);
        MPI_Datatype message = p2p_type(header, j.kind == Kind::Send ? j.in : j.out, j.count, j.dtype);
        const int rc = j.kind == Kind::Send ? MPI_Isend(MPI_BOTTOM, 1, message, j.peer, j.tag, c, &req)
                                            : MPI_Irecv(MPI_BOTTOM, 1, message, j.peer, j.tag, c, &req);
        MPI_Type_free(&message);  // the posted operation keeps what it needs
        check(rc, j.kind == Kind::Send ? "MPI_Isend" : "MPI_Irecv");
        reqs_.push_back(req);
        req_jobs_.push_back(std::move(j));
        return;  // completes in progress()
      }
      default: j.fn(); break;
    }
    j.work->complete();
  }

  // Tests the posted sends and receives; completes those that finished.
  void progress() {
    int count = 0;
    std::vector<int> idx(reqs_.size());
    std::vector<MPI_Status> st(reqs_.size());
    int rc = MPI_Testsome(static_cast<int>(reqs_.size()), reqs_.data(), &count, idx.data(), st.data());
    if (count == MPI_UNDEFINED || count == 0) return;
    std::vector<bool> gone(reqs_.size(), false);
    for (int k = 0; k < count; ++k) {
      Job& j = req_jobs_[static_cast<std::size_t>(idx[k])];
      gone[static_cast<std::size_t>(idx[k])] = true;
      int err = rc == MPI_ERR_IN_STATUS ? st[k].MPI_ERROR : rc;
      if (err == MPI_ERR_TRUNCATE)
        j.work->complete(fmt::format("[recv] rank {} sent more than the {} {} elements expected", j.peer, j.count,
                                     dtype_name(j.dtype)));
      else if (err != MPI_SUCCESS) j.work->complete(fmt::format("[{}] MPI error {} (peer rank {})", j.op, err, j.peer));
      else if (j.kind == Kind::Recv) j.work->complete(p2p_mismatch(j, st[k]));
      else j.work->complete();
    }
    std::size_t keep = 0;
    for (std::size_t i = 0; i < reqs_.size(); ++i) {
      if (gone[i]) continue;
      reqs_[keep] = reqs_[i];
      req_jobs_[keep] = std::move(req_jobs_[i]);
      ++keep;
    }
    reqs_.resize(keep);
    req_jobs_.resize(keep);
  }

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::vector<MPI_Request> reqs_;  // posted sends and receives (communication thread only)
  std::vector<Job> req_jobs_;
};

CommThread* g_thread = nullptr;

/// Runs `fn` on the communication thread after checking `sig` across `group`; waits for it.
void run_internal(const std::shared_ptr<GroupImpl>& group, const char* op, const Signature& sig,
                  std::function<void()> fn) {
  Job j;
  j.kind = Kind::Internal;
  j.op = op;
  j.group = group;
  j.work = std::make_shared<WorkState>(op);
  j.sig = sig;
  j.fn = std::move(fn);
  auto work = j.work;
  g_thread->submit(std::move(j));
  Work(work).wait();
}

}  // namespace

bool mpi_built() { return true; }

WorldInfo mpi_start() {
  g_thread = new CommThread;  // lives until exit: a static destructor must not join it
  return g_thread->start();
}

void mpi_stop() {
  // MPI_Finalize does not tell a peer still waiting in a collective that this rank is gone: it
  // would wait forever. So the ranks first compare signatures once more; where one of them is in
  // a collective instead (it gets the mismatch as its error), the job ends here.
  const WorldInfo& w = world_info("distributed::finalize");
  try {
    run_internal(w.world, "distributed::finalize", make_signature(Kind::Finalize, nullptr), [] {});
  } catch (const Error& e) {
    std::fprintf(stderr, "kiln::distributed: rank %d cannot finalize: %s; aborting the job\n", w.rank, e.what());
    std::fflush(stderr);
    mpi_abort(1);
  }
  g_thread->stop();
}

void mpi_abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void mpi_submit(Job job) { g_thread->submit(std::move(job)); }

std::shared_ptr<GroupImpl> mpi_new_group(const std::vector<int>& ranks) {
  Signature sig = make_signature(Kind::NewGroup, nullptr);
  sig[kSigNumel] = static_cast<std::int64_t>(ranks.size());
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i < kSigDims) sig[kSigDim0 + i] = ranks[i];
    h = (h ^ static_cast<std::uint64_t>(ranks[i])) * 1099511628211ull;
  }
  sig[kSigDim0 + kSigDims] = static_cast<std::int64_t>(h);
  auto g = std::make_shared<GroupImpl>();
  g->ranks = ranks;
  const WorldInfo& w = world_info("new_group");
  run_internal(w.world, "new_group", sig, [&] {
    MPI_Group all, part;
    MPI_Comm c;
    check(MPI_Comm_group(MPI_COMM_WORLD, &all), "MPI_Comm_group");
    check(MPI_Group_incl(all, static_cast<int>(ranks.size()), ranks.data(), &part), "MPI_Group_incl");
    check(MPI_Comm_create(MPI_COMM_WORLD, part, &c), "MPI_Comm_create");
    MPI_Group_free(&part);
    MPI_Group_free(&all);
    if (c != MPI_COMM_NULL) {
      check(MPI_Comm_rank(c, &g->rank), "MPI_Comm_rank");
      set_comm(*g, c);
    }
  });
  return g;
}

std::shared_ptr<GroupImpl> mpi_split(const std::shared_ptr<GroupImpl>& group, int color, int key) {
  Signature sig = make_signature(Kind::Split, nullptr);
  auto g = std::make_shared<GroupImpl>();
  run_internal(group, "Group::split", sig, [&] {
    MPI_Comm c;
    check(MPI_Comm_split(comm_of(*group), color < 0 ? MPI_UNDEFINED : color, key, &c), "MPI_Comm_split");
    if (c == MPI_COMM_NULL) return;
    int n = 0;
    check(MPI_Comm_rank(c, &g->rank), "MPI_Comm_rank");
    check(MPI_Comm_size(c, &n), "MPI_Comm_size");
    MPI_Group mine, all;
    check(MPI_Comm_group(c, &mine), "MPI_Comm_group");
    check(MPI_Comm_group(MPI_COMM_WORLD, &all), "MPI_Comm_group");
    std::vector<int> local(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) local[static_cast<std::size_t>(i)] = i;
    g->ranks.resize(static_cast<std::size_t>(n));
    check(MPI_Group_translate_ranks(mine, n, local.data(), all, g->ranks.data()), "MPI_Group_translate_ranks");
    MPI_Group_free(&mine);
    MPI_Group_free(&all);
    set_comm(*g, c);
  });
  return g;
}

}  // namespace kiln::distributed::detail
