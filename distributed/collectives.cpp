// The collectives' front half, in the calling thread: argument checks, contiguous staging of
// strided tensors, and the hand-off to MPI (CPU), NCCL (CUDA) or the one-process world.
#include <fmt/format.h>

#include <climits>

#include "../autograd/grad_mode.hpp"
#include "../core/error.hpp"
#include "runtime.hpp"

namespace kiln::distributed {
using namespace detail;
namespace {

std::shared_ptr<GroupImpl> member_group(const Group& g, const char* op) {
  const WorldInfo& w = world_info(op);
  std::shared_ptr<GroupImpl> impl = g.impl() ? g.impl() : w.world;
  KILN_CHECK(impl->rank >= 0, op, "this process (world rank {}) is not a member of group {}", w.rank, g.str());
  return impl;
}

int group_size(const GroupImpl& g) { return static_cast<int>(g.ranks.size()); }

void check_defined(const Tensor& t, const char* op, const char* what) {
  KILN_CHECK(t.defined(), op, "{} is an undefined tensor", what);
}

/// A tensor written in place must not have two elements at one address (an expanded view).
void check_writable(const Tensor& t, const char* op, const char* what) {
  check_defined(t, op, what);
  for (std::int64_t d = 0; d < t.dim(); ++d)
    KILN_CHECK(t.stride(d) != 0 || t.size(d) <= 1, op,
               "{} {} has stride 0 in dim {}: its elements overlap, the result has nowhere to go", what,
               shape_str(t.shape()), d);
}

void check_same(const Tensor& a, const Tensor& b, const char* op) {
  KILN_CHECK(a.dtype() == b.dtype(), op, "output is {} but input is {}", dtype_name(a.dtype()), dtype_name(b.dtype()));
  KILN_CHECK(a.device() == b.device(), op, "output is on {} but input is on {}", a.device().str(), b.device().str());
}

void check_reduce(ReduceOp op, DType d, const char* name) {
  KILN_CHECK(op != ReduceOp::Avg || is_floating(d), name, "avg needs a floating dtype, got {}", dtype_name(d));
}

void check_rank(int r, const GroupImpl& g, const char* op, const char* what) {
  KILN_CHECK(r >= 0 && r < group_size(g), op, "{} {} is out of range for a group of {} ranks", what, r, group_size(g));
}

void check_int_count(std::int64_t n, const char* op) {
  KILN_CHECK(n <= INT_MAX, op, "{} elements per rank exceed MPI's count limit ({})", n, INT_MAX);
}

/// The contiguous buffer an operation reads or writes: `t` itself, or a contiguous copy.
Tensor staged(const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

/// After success: the result into a strided output, and a version bump (saved-tensor checks).
std::function<void()> write_back(const Tensor& user, const Tensor& buf) {
  return [user, buf] {
    if (!buf.is_same(user)) {
      NoGradGuard ng;
      Tensor(user).copy_(buf);
    } else {
      user.bump_version();
    }
  };
}

Job make_job(Kind kind, const char* op, std::shared_ptr<GroupImpl> group, const Tensor* t,
             ReduceOp reduce = ReduceOp::Sum, int root = -1) {
  Job j;
  j.kind = kind;
  j.op = op;
  j.group = std::move(group);
  j.work = std::make_shared<WorkState>(op);
  j.sig = make_signature(kind, t, reduce, root);
  j.reduce = reduce;
  if (t) j.dtype = t->dtype();
  return j;
}

/// Hands the job to MPI (CPU) or NCCL (CUDA).
Work submit(Job j, Device device, std::vector<Tensor> keep, std::function<void()> finish = nullptr) {
  j.work->keep = std::move(keep);
  j.work->finish = std::move(finish);
  Work w(j.work);
  if (device.is_cuda()) nccl_submit(std::move(j), device.index);
  else mpi_submit(std::move(j));
  return w;
}

/// Runs `fn` now (the one-process world) and returns a completed Work.
template <typename F>
Work local(F&& fn) {
  NoGradGuard ng;
  fn();
  return Work{};
}

}  // namespace

Work all_reduce_async(const Tensor& tensor, ReduceOp op, const Group& group) {
  const char* name = "all_reduce";
  auto g = member_group(group, name);
  check_writable(tensor, name, "tensor");
  check_reduce(op, tensor.dtype(), name);
  if (is_local_world()) return Work{};  // one rank: every reduction is the identity
  Tensor buf = staged(tensor);
  Job j = make_job(Kind::AllReduce, name, g, &tensor, op);
  j.out = buf.raw_data();
  j.count = tensor.numel();
  return submit(std::move(j), tensor.device(), {buf}, write_back(tensor, buf));
}

Work broadcast_async(const Tensor& tensor, int root, const Group& group) {
  const char* name = "broadcast";
  auto g = member_group(group, name);
  check_writable(tensor, name, "tensor");
  check_rank(root, *g, name, "root");
  if (is_local_world()) return Work{};
  Tensor buf = staged(tensor);
  Job j = make_job(Kind::Broadcast, name, g, &tensor, ReduceOp::Sum, root);
  j.out = buf.raw_data();
  j.count = tensor.numel();
  j.peer = root;
  return submit(std::move(j), tensor.device(), {buf}, write_back(tensor, buf));
}

Work all_gather_async(const Tensor& output, const Tensor& input, const Group& group) {
  const char* name = "all_gather";
  auto g = member_group(group, name);
  check_writable(output, name, "output");
  check_defined(input, name, "input");
  check_same(output, input, name);
  const std::int64_t n = input.numel(), size = group_size(*g);
  KILN_CHECK(output.numel() == size * n, name, "output {} has {} elements, {} ranks x input {} need {}",
             shape_str(output.shape()), output.numel(), size, shape_str(input.shape()), size * n);
  if (is_local_world()) return local([&] { Tensor(output).copy_(input.reshape(output.shape())); });
  check_int_count(n, name);
  Tensor out = staged(output);
  // MPI reads the input while writing the output: they must not share memory.
  Tensor in = input.storage() == output.storage() ? input.clone() : staged(input);
  Job j = make_job(Kind::AllGather, name, g, &input);
  j.in = in.raw_data();
  j.out = out.raw_data();
  j.count = n;
  return submit(std::move(j), output.device(), {out, in}, write_back(output, out));
}

Tensor all_gather(const Tensor& input, const Group& group) {
  check_defined(input, "all_gather", "input");
  Shape shape = input.shape();
  shape.insert(shape.begin(), member_group(group, "all_gather")->ranks.size());
  Tensor out = Tensor::empty(shape, input.dtype(), input.device());
  all_gather(out, input, group);
  return out;
}

Work reduce_scatter_async(const Tensor& output, const Tensor& input, ReduceOp op, const Group& group) {
  const char* name = "reduce_scatter";
  auto g = member_group(group, name);
  check_writable(output, name, "output");
  check_defined(input, name, "input");
  check_same(output, input, name);
  check_reduce(op, input.dtype(), name);
  const std::int64_t n = output.numel(), size = group_size(*g);
  KILN_CHECK(input.numel() == size * n, name, "input {} has {} elements, {} ranks x output {} need {}",
             shape_str(input.shape()), input.numel(), size, shape_str(output.shape()), size * n);
  if (is_local_world()) return local([&] { Tensor(output).copy_(input.reshape(output.shape())); });
  check_int_count(n, name);
  Tensor out = staged(output);
  Tensor in = input.storage() == output.storage() ? input.clone() : staged(input);
  Job j = make_job(Kind::ReduceScatter, name, g, &input, op);
  j.in = in.raw_data();
  j.out = out.raw_data();
  j.count = n;
  return submit(std::move(j), output.device(), {out, in}, write_back(output, out));
}

Work barrier_async(const Group& group) {
  auto g = member_group(group, "barrier");
  if (is_local_world()) return Work{};
  return submit(make_job(Kind::Barrier, "barrier", g, nullptr), Device::cpu(), {});
}

Work send_async(const Tensor& tensor, int dst, const Group& group, int tag) {
  const char* name = "send";
  auto g = member_group(group, name);
  check_defined(tensor, name, "tensor");
  check_rank(dst, *g, name, "dst");
  KILN_CHECK(dst != g->rank, name, "dst {} is this process's own rank", dst);
  KILN_CHECK(tensor.device().is_cpu(), name, "point-to-point works on CPU tensors; this one is on {}",
             tensor.device().str());
  check_int_count(tensor.numel(), name);
  KILN_CHECK(tag >= 0, name, "tag {} is negative", tag);
  Tensor buf = staged(tensor);
  Job j = make_job(Kind::Send, name, g, &tensor);
  j.check = false;  // point to point: the receiver checks the element count
  j.in = buf.raw_data();
  j.count = tensor.numel();
  j.peer = dst;
  j.tag = tag;
  return submit(std::move(j), Device::cpu(), {buf});
}

Work recv_async(const Tensor& tensor, int src, const Group& group, int tag) {
  const char* name = "recv";
  auto g = member_group(group, name);
  check_writable(tensor, name, "tensor");
  check_rank(src, *g, name, "src");
  KILN_CHECK(src != g->rank, name, "src {} is this process's own rank", src);
  KILN_CHECK(tensor.device().is_cpu(), name, "point-to-point works on CPU tensors; this one is on {}",
             tensor.device().str());
  check_int_count(tensor.numel(), name);
  KILN_CHECK(tag >= 0, name, "tag {} is negative", tag);
  Tensor buf = staged(tensor);
  Job j = make_job(Kind::Recv, name, g, &tensor);
  j.check = false;
  j.out = buf.raw_data();
  j.count = tensor.numel();
  j.peer = src;
  j.tag = tag;
  return submit(std::move(j), Device::cpu(), {buf}, write_back(tensor, buf));
}

void all_reduce(const Tensor& tensor, ReduceOp op, const Group& group) { all_reduce_async(tensor, op, group).wait(); }
void broadcast(const Tensor& tensor, int root, const Group& group) { broadcast_async(tensor, root, group).wait(); }
void all_gather(const Tensor& output, const Tensor& input, const Group& group) {
  all_gather_async(output, input, group).wait();
}
void reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op, const Group& group) {
  reduce_scatter_async(output, input, op, group).wait();
}
void barrier(const Group& group) { barrier_async(group).wait(); }
void send(const Tensor& tensor, int dst, const Group& group, int tag) { send_async(tensor, dst, group, tag).wait(); }
void recv(const Tensor& tensor, int src, const Group& group, int tag) { recv_async(tensor, src, group, tag).wait(); }

}  // namespace kiln::distributed
