#pragma once
/// Data-parallel training: every rank holds the whole model, trains on its share of each global
/// batch, and the gradients are averaged across the ranks during backward.
///
///   namespace dist = kiln::distributed;
///   dist::InitGuard guard;
///   GPT model(cfg);
///   dist::DistributedDataParallel ddp(model);         // rank 0's weights everywhere, hooks set
///   optim::AdamW opt(model->parameters(), ...);
///   for (...) {
///     opt.zero_grad();
///     { auto ns = ddp.no_sync();                       // accumulate locally, no communication
///       loss_fn(model(micro0)).backward(); }
///     loss_fn(model(micro1)).backward();               // all-reduce overlaps this backward
///     opt.step();                                      // .grad = the average over the ranks
///   }
///
/// At construction every rank must have the same parameters and buffers (names, shapes, dtypes,
/// which parameters are frozen (requires_grad false: not reduced), in registration order): a
/// difference is a kiln::Error on every rank naming the first differing entry and the ranks;
/// then rank 0's values are broadcast to all. A model without parameters (or with all of them
/// frozen) is accepted: its backward passes communicate nothing. The model is used as it is
/// (call it directly); the wrapper only hooks its parameters (autograd/hooks.hpp).
///
/// During each backward pass (outside no_sync) the gradients go into buckets of about
/// `bucket_cap_mb` MiB, filled in reverse registration order (roughly the order backward produces
/// them) in the first synced pass, then in the order rank 0's gradients arrived in that pass. When a bucket's last
/// gradient is in, its asynchronous all-reduce (mean) starts while the rest of backward runs; buckets start in the same
/// order on every rank. Before backward() returns every all-reduce has finished and each parameter's .grad holds the
/// average of the ranks' .grad. A parameter without a gradient on some rank counts as zeros there; one without a
/// gradient on every rank keeps its .grad as it was (undefined after zero_grad), as one process would. With equal
/// shares per rank this is exactly one process training on the concatenated global batch; with uneven shares weight
/// each rank's mean loss by its share (see the README). After a synced backward, .grad of a parameter (when the reduce
/// dtype is its own) is a view of DDP's bucket memory, rewritten by the next synced backward: clone it to keep it. Not
/// supported: create_graph through DDP's gradients, and backward passes of one DDP running concurrently on several
/// threads. Every rank must run the same number of synced backward passes.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../autograd/hooks.hpp"
#include "../core/arg.hpp"
#include "../nn/module.hpp"
#include "collectives.hpp"

namespace kiln::distributed {

struct DDPOptions {
  /// Bucket size in MiB (a parameter larger than this gets a bucket of its own).
  KILN_ARG(double, bucket_cap_mb) = 25.0;
  /// The first bucket (the last layers, ready first) is capped at this many MiB, so the first
  /// all-reduce starts early in backward.
  KILN_ARG(double, first_bucket_cap_mb) = 1.0;
  /// Reduce in this floating dtype (e.g. a narrower one to halve the bytes); the parameters'
  /// own dtype when unset. The average is converted back into each .grad.
  KILN_ARG(std::optional<DType>, reduce_dtype);
  /// The ranks that train together (the world by default).
  KILN_ARG(Group, group);
};

/// Timings of one bucket's all-reduce in the last synced backward, in seconds since that pass's
/// first gradient arrived. `complete_s` is when DDP first saw it done: at a later gradient of
/// the pass, or when waiting for it at the end.
struct BucketTiming {
  std::int64_t bytes = 0;
  int num_params = 0;
  double ready_s = 0;     // its last gradient arrived (or the pass ended, for a partly unused one)
  double launch_s = 0;    // its all-reduce started (buckets start in order)
  double complete_s = 0;  // its all-reduce was seen done
};

/// The last synced backward's communication, in launch order.
struct DDPStats {
  std::vector<BucketTiming> buckets;
  double backward_end_s = 0;  // the pass's graph was done (DDP's end-of-pass callback began)
  double finish_s = 0;        // every average was in .grad
  /// Time with at least one all-reduce in flight.
  double comm_s() const;
  /// The part of comm_s() after backward_end_s: what backward did not hide.
  double exposed_s() const;
  /// Per bucket: the fraction of [launch_s, complete_s] before backward_end_s (1 when empty).
  double hidden_fraction(std::size_t bucket) const;
};

class DistributedDataParallel {
 public:
  /// Checks the replicas agree, broadcasts rank 0's parameters and buffers, sets up the buckets
  /// and the gradient hooks. Collective over options.group().
  explicit DistributedDataParallel(const nn::Module& module, DDPOptions options = {});
  /// The same from a module holder: `DistributedDataParallel ddp(model);`.
  template <typename H>
  requires nn::is_module_holder_v<H>
  explicit DistributedDataParallel(const H& module, DDPOptions options = {})
      : DistributedDataParallel(static_cast<const nn::Module&>(*module), std::move(options)) {}
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  /// While the returned guard lives, backward passes accumulate .grad locally without any
  /// communication (gradient accumulation); the next synced pass averages the accumulated sum.
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel& ddp) : ddp_(ddp), prev_(ddp.sync_) { ddp.sync_ = false; }
    ~NoSyncGuard() { ddp_.sync_ = prev_; }
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel& ddp_;
    bool prev_;
  };
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*this); }

  /// Broadcasts rank 0's buffers (e.g. running statistics) to every rank. Collective.
  void sync_buffers();

  /// The parameters DDP reduces (those requiring grad), in registration order, and their names.
  const std::vector<Tensor>& parameters() const { return params_; }
  const std::vector<std::string>& parameter_names() const { return names_; }
  /// Parameter indices of each bucket, in launch order.
  std::vector<std::vector<std::size_t>> bucket_layout() const;
  const DDPStats& last_stats() const { return stats_; }
  const DDPOptions& options() const { return options_; }

 private:
  struct Bucket;
  struct Slot;  // one parameter's place in a bucket

  void build_buckets(const std::vector<std::size_t>& order);
  void rebuild_in_arrival_order();
  void on_grad_ready(std::size_t param);
  void launch_in_order();
  void poll_completions();
  void finish_pass();
  double since_start() const;

  DDPOptions options_;
  std::vector<Tensor> params_;
  std::vector<std::string> names_;
  std::vector<Tensor> buffers_;
  std::vector<std::unique_ptr<Slot>> slots_;  // per parameter
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<autograd::HookHandle> hooks_;
  bool sync_ = true;
  bool in_pass_ = false;
  bool aborted_ = false;
  bool rebuilt_ = false;              // the buckets follow the first pass's arrival order
  std::vector<std::size_t> arrival_;  // the first synced pass's gradients, in arrival order  // a pass threw after its
                                      // first gradient: the ranks may be out of step
  std::size_t next_launch_ = 0;
  double pass_start_ = 0;
  DDPStats stats_;
};

}  // namespace kiln::distributed
