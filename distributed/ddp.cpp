// DistributedDataParallel: replica checks and rank 0's broadcast at construction, gradient
// buckets filled by post-accumulate-grad hooks, all-reduces started in bucket order while
// backward runs, the averages put into .grad by the pass's end callback.
#include "ddp.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "../autograd/grad_mode.hpp"
#include "../core/error.hpp"
#include "ddp_replicas.hpp"

namespace kiln::distributed {
namespace {

constexpr const char* kOp = "DistributedDataParallel";

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

// A parameter's place: elements [offset, offset + numel) of its bucket, and its used flag at
// flat[flag]. The flags travel with the gradients, so after the mean a flag > 0 says that some
// rank had a gradient for the parameter.
struct DistributedDataParallel::Slot {
  std::size_t bucket = 0;
  std::int64_t offset = 0, flag = 0;
  bool ready = false;
};

struct DistributedDataParallel::Bucket {
  std::vector<std::size_t> params;
  Tensor flat;  // gradients then one used flag per parameter, in the reduce dtype
  std::int64_t grad_elems = 0;
  std::size_t pending = 0;  // parameters whose gradient has not arrived in this pass
  bool launched = false, complete = false;
  Work work;
  BucketTiming timing;
};

// Ties a pass's end callback to the pass: if the pass throws, the engine drops the callback
// without running it, and this token's destructor tells DDP that its pass never finished.
struct PassToken {
  explicit PassToken(bool* a) : aborted(a) {}
  ~PassToken() {
    if (!ran) *aborted = true;
  }
  PassToken(const PassToken&) = delete;
  PassToken& operator=(const PassToken&) = delete;
  bool* aborted;
  bool ran = false;
};

DistributedDataParallel::DistributedDataParallel(const nn::Module& module, DDPOptions options)
    : options_(std::move(options)) {
  const Group& g = options_.group();
  KILN_CHECK(g.is_member(), kOp, "this process (world rank {}) is not a member of the group {}", rank(), g.str());
  KILN_CHECK(options_.bucket_cap_mb() > 0 && options_.first_bucket_cap_mb() > 0, kOp,
             "bucket sizes must be positive, got bucket_cap_mb {} and first_bucket_cap_mb {}", options_.bucket_cap_mb(),
             options_.first_bucket_cap_mb());
  if (options_.reduce_dtype())
    KILN_CHECK(is_floating(*options_.reduce_dtype()), kOp, "reduce_dtype must be a floating dtype, got {}",
               dtype_name(*options_.reduce_dtype()));
  std::vector<detail::ReplicaEntry> entries;
  for (const auto& [name, p] : module.named_parameters()) {
    // Frozen on one rank only would give the ranks different buckets: their all-reduces would
    // no longer pair up (a hang at the first mismatch past the signature check).
    entries.push_back({p.requires_grad() ? "parameter" : "frozen parameter", name, p});
    if (!p.requires_grad()) continue;
    KILN_CHECK(p.is_floating_point(), kOp, "parameter '{}' requires grad but is {}", name, dtype_name(p.dtype()));
    params_.push_back(p);
    names_.push_back(name);
  }
  for (const auto& [name, b] : module.named_buffers()) {
    entries.push_back({"buffer", name, b});
    buffers_.push_back(b);
  }
  detail::check_replicas(kOp, entries, g);
  {
    NoGradGuard ng;
    std::vector<Work> works;
    for (const auto& e : entries) works.push_back(broadcast_async(e.tensor, 0, g));
    for (auto& w : works) w.wait();
  }
  std::vector<std::size_t> reverse(params_.size());
  for (std::size_t i = 0; i < reverse.size(); ++i) reverse[i] = reverse.size() - 1 - i;
  build_buckets(reverse);
  for (std::size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(
        autograd::register_post_accumulate_grad_hook(params_[i], [this, i](const Tensor&) { on_grad_ready(i); }));
}

DistributedDataParallel::~DistributedDataParallel() {
  for (auto& h : hooks_) h.remove();
}

void DistributedDataParallel::build_buckets(const std::vector<std::size_t>& order) {
  buckets_.clear();
  slots_.clear();
  slots_.resize(params_.size());
  auto close = [&](std::unique_ptr<Bucket>& b) {
    if (!b) return;
    const Tensor& p0 = params_[b->params.front()];
    const DType dt = options_.reduce_dtype().value_or(p0.dtype());
    b->grad_elems = 0;
    for (std::size_t k = 0; k < b->params.size(); ++k) {
      Slot& s = *slots_[b->params[k]];
      s.offset = b->grad_elems;
      b->grad_elems += params_[b->params[k]].numel();
    }
    for (std::size_t k = 0; k < b->params.size(); ++k) slots_[b->params[k]]->flag = b->grad_elems + std::int64_t(k);
    b->flat =
        zeros({b->grad_elems + static_cast<std::int64_t>(b->params.size())}, TensorOptions(dt).device(p0.device()));
    b->pending = b->params.size();
    b->timing.bytes = static_cast<std::int64_t>(b->flat.nbytes());
    b->timing.num_params = static_cast<int>(b->params.size());
    buckets_.push_back(std::move(b));
  };
  std::unique_ptr<Bucket> cur;
  double bytes = 0;
  for (std::size_t r : order) {
    const Tensor& p = params_[r];
    const double size = static_cast<double>(p.numel()) * itemsize(options_.reduce_dtype().value_or(p.dtype()));
    const double cap = (buckets_.empty() ? options_.first_bucket_cap_mb() : options_.bucket_cap_mb()) * 1048576.0;
    if (cur) {
      const Tensor& q = params_[cur->params.front()];
      if (q.dtype() != p.dtype() || q.device() != p.device() || bytes + size > cap) close(cur), bytes = 0;
    }
    if (!cur) cur = std::make_unique<Bucket>();
    slots_[r] = std::make_unique<Slot>();
    slots_[r]->bucket = buckets_.size();
    cur->params.push_back(r);
    bytes += size;
  }
  close(cur);
}

double DistributedDataParallel::since_start() const { return now_s() - pass_start_; }

void DistributedDataParallel::on_grad_ready(std::size_t i) {
  if (!sync_) return;
  KILN_CHECK(!aborted_, kOp,
             "an earlier backward pass failed after DistributedDataParallel had started reducing its gradients; "
             "the ranks are out of step (restart the job)");
  if (!in_pass_) {
    in_pass_ = true;
    pass_start_ = now_s();
    stats_ = {};
    auto token = std::make_shared<PassToken>(&aborted_);
    autograd::queue_callback([this, token] {
      finish_pass();
      token->ran = true;  // not when finish_pass throws: that pass did not finish either
    });
  }
  Slot& s = *slots_[i];
  KILN_CHECK(!s.ready, kOp, "parameter '{}' received two gradients in one backward pass", names_[i]);
  Bucket& b = *buckets_[s.bucket];
  {
    NoGradGuard ng;
    const Tensor& p = params_[i];
    Tensor g = p.grad();
    Tensor dst = Tensor::make_view(b.flat, p.shape(), contiguous_strides(p.shape()), b.flat.offset() + s.offset);
    const bool in_place = g.storage() == dst.storage() && g.offset() == dst.offset() && g.is_contiguous();
    if (!in_place) dst.copy_(g);
    b.flat.select(0, s.flag).fill_(1);
  }
  s.ready = true;
  if (!rebuilt_) arrival_.push_back(i);
  if (--b.pending == 0) b.timing.ready_s = since_start();
  poll_completions();
  launch_in_order();
}

void DistributedDataParallel::poll_completions() {
  // Notes completions as they happen, for the timings (is_completed does not block).
  for (std::size_t k = 0; k < next_launch_; ++k) {
    Bucket& b = *buckets_[k];
    if (!b.complete && b.work.is_completed()) {
      b.complete = true;
      b.timing.complete_s = since_start();
    }
  }
}

void DistributedDataParallel::launch_in_order() {
  // In bucket order on every rank: the ranks' collectives must be issued in the same order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_]->pending == 0) {
    Bucket& b = *buckets_[next_launch_++];
    b.timing.launch_s = since_start();
    b.work = all_reduce_async(b.flat, ReduceOp::Avg, options_.group());
    b.launched = true;
  }
}

void DistributedDataParallel::finish_pass() {
  stats_.backward_end_s = since_start();
  poll_completions();
  NoGradGuard ng;
  // Parameters that got no gradient in this pass: their accumulated .grad (from no_sync passes)
  // if they have one, else zeros with the used flag off.
  for (std::size_t k = next_launch_; k < buckets_.size(); ++k) {
    Bucket& b = *buckets_[k];
    for (std::size_t i : b.params) {
      Slot& s = *slots_[i];
      if (s.ready) continue;
      const Tensor& p = params_[i];
      Tensor dst = Tensor::make_view(b.flat, p.shape(), contiguous_strides(p.shape()), b.flat.offset() + s.offset);
      Tensor g = p.grad();
      if (g.defined()) dst.copy_(g);
      else dst.zero_();
      b.flat.select(0, s.flag).fill_(g.defined() ? 1 : 0);
    }
    if (b.pending != 0) b.timing.ready_s = stats_.backward_end_s;
    b.pending = 0;
  }
  launch_in_order();
  for (auto& b : buckets_) {
    b->work.wait();
    if (!b->complete) b->timing.complete_s = since_start();
    std::vector<double> used = b->flat.narrow(0, b->grad_elems, std::int64_t(b->params.size())).to_vector<double>();
    for (std::size_t k = 0; k < b->params.size(); ++k) {
      const std::size_t i = b->params[k];
      const Tensor& p = params_[i];
      if (used[k] <= 0) continue;  // no rank had a gradient: .grad stays as it was
      Tensor avg =
          Tensor::make_view(b->flat, p.shape(), contiguous_strides(p.shape()), b->flat.offset() + slots_[i]->offset);
      p.set_grad(avg.dtype() == p.dtype() ? avg : avg.to(p.dtype()));
    }
    stats_.buckets.push_back(b->timing);
  }
  stats_.finish_s = since_start();
  for (auto& s : slots_) s->ready = false;
  for (auto& b : buckets_) {
    b->pending = b->params.size();
    b->launched = b->complete = false;
    b->work = Work();
  }
  next_launch_ = 0;
  in_pass_ = false;
  if (!rebuilt_) rebuild_in_arrival_order();
}

void DistributedDataParallel::rebuild_in_arrival_order() {
  // After the first synced pass the buckets follow the order in which rank 0's gradients arrived
  // (parameters without a gradient last), so a bucket's gradients come together and no unused
  // parameter holds back the buckets behind it. Every rank takes rank 0's order.
  rebuilt_ = true;
  std::vector<std::int64_t> order(arrival_.begin(), arrival_.end());
  std::vector<bool> seen(params_.size(), false);
  for (std::size_t i : arrival_) seen[i] = true;
  for (std::size_t i = params_.size(); i-- > 0;)
    if (!seen[i]) order.push_back(static_cast<std::int64_t>(i));
  Tensor t = tensor(order, {static_cast<std::int64_t>(order.size())});
  broadcast(t, 0, options_.group());
  std::vector<std::size_t> agreed;
  for (std::int64_t i : t.to_vector<std::int64_t>()) agreed.push_back(static_cast<std::size_t>(i));
  arrival_.clear();
  build_buckets(agreed);
}

void DistributedDataParallel::sync_buffers() {
  NoGradGuard ng;
  for (const auto& b : buffers_) broadcast(b, 0, options_.group());
}

std::vector<std::vector<std::size_t>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<std::size_t>> out;
  for (const auto& b : buckets_) out.push_back(b->params);
  return out;
}

// ---- stats ----

double DDPStats::comm_s() const {
  double total = 0, reach = -1e300;
  for (const auto& b : buckets) {  // launch order: launch times ascend
    const double lo = std::max(b.launch_s, reach);
    if (b.complete_s > lo) total += b.complete_s - lo;
    reach = std::max(reach, b.complete_s);
  }
  return total;
}

double DDPStats::exposed_s() const {
  double total = 0, reach = backward_end_s;
  for (const auto& b : buckets) {
    const double lo = std::max(b.launch_s, reach);
    if (b.complete_s > lo) total += b.complete_s - lo;
    reach = std::max(reach, b.complete_s);
  }
  return total;
}

double DDPStats::hidden_fraction(std::size_t bucket) const {
  const BucketTiming& b = buckets.at(bucket);
  const double span = b.complete_s - b.launch_s;
  if (span <= 0) return 1.0;
  return std::clamp((backward_end_s - b.launch_s) / span, 0.0, 1.0);
}

}  // namespace kiln::distributed
