#pragma once
/// ZeRO stage 1: the optimizer state sharded across the ranks. Each parameter has one owner rank
/// (a greedy balance of element counts); a rank's optimizer holds state for, and updates, only
/// the parameters it owns, then every parameter is copied from its owner to all ranks (one
/// all_gather per dtype). Gradients stay whole on every rank (DDP averages them as usual), so the
/// update equals the unsharded optimizer's, bit for bit.
///
///   namespace dist = kiln::distributed;
///   dist::DistributedDataParallel ddp(*model);
///   dist::ZeroRedundancyOptimizer opt(model->parameters(), [](std::vector<optim::ParamGroup> shard) {
///     return std::make_unique<optim::AdamW>(std::move(shard), optim::AdamWOptions(3e-4));
///   });
///   optim::WarmupCosineLR sched(opt.local(), 100, 5000);   // schedules act on the local optimizer
///   ... loss.backward(); opt.step(); opt.zero_grad(); sched.step();
///   // checkpoints: the ordinary optimizer state (resumes on any world size, or without ZeRO)
///   opt.consolidate_state_dict();                             // every rank (collective)
///   io::TrainingState state{.model = model, .optimizer = opt};
///   if (dist::rank() == 0) io::save_checkpoint("ckpt.safetensors", state, step);
///   io::load_checkpoint("ckpt.safetensors", state);           // any rank, any world size
///
/// State memory per rank is the owned share: about 1/world of the whole when no single parameter
/// dominates (the partition is per tensor; the largest tensor bounds the balance).
///
/// float16 loss scaling: pass the ZeRO optimizer itself to the scaler (an amp::ShardedOptimizer).
/// Every rank unscales and checks all gradients, the ranks combine what they found (one
/// all_gather of 8 doubles per step), so either every rank steps or every rank skips and backs
/// off, and the scalers stay equal; scalers that differ across ranks (enabled on some only, other
/// scales or options) and a rank failing in unscale_ are a kiln::Error on every rank.
///   amp::GradScaler scaler;                        // same settings on every rank
///   scaler.scale(loss).backward();                 // DDP averages the scaled gradients
///   scaler.unscale_(opt);                          // optional: before clipping
///   scaler.step(opt);                              // not opt.local(): an error
///   scaler.update();
///   // checkpoints: io::TrainingState{.model = model, .optimizer = opt, .extras = {{"scaler", scaler}}}
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "../core/state_dict.hpp"
#include "../optim/grad_scaler.hpp"
#include "../optim/optimizer.hpp"
#include "process_group.hpp"

namespace kiln::distributed {

class ZeroRedundancyOptimizer : public amp::ShardedOptimizer {
 public:
  /// Builds the optimizer of this rank's shard: the same groups (and group options), each with
  /// only the parameters this rank owns (possibly none).
  using Factory = std::function<std::unique_ptr<optim::Optimizer>(std::vector<optim::ParamGroup> shard)>;

  /// `groups` must be the same on every rank (checked: a difference is a kiln::Error on every
  /// rank). Collective over `group`.
  ZeroRedundancyOptimizer(std::vector<optim::ParamGroup> groups, const Factory& make, Group group = {});
  ZeroRedundancyOptimizer(std::vector<Tensor> params, const Factory& make, Group group = {})
      : ZeroRedundancyOptimizer(std::vector<optim::ParamGroup>{optim::ParamGroup(std::move(params))}, make,
                                std::move(group)) {}

  /// The local update, then every parameter from its owner. Collective.
  void step() override;
  /// Clears the gradients of every parameter (not only the owned ones).
  void zero_grad(bool set_to_none = true);

  /// Gathers the whole optimizer state on rank `to` (group rank), as one unsharded optimizer over
  /// the same groups would hold it. Collective; state_dict() on `to` then returns it. Every rank
  /// must pass the same `to` (a difference is a kiln::Error on every rank).
  void consolidate_state_dict(int to = 0);
  /// The consolidated state (kiln::Error unless consolidate_state_dict() ran on this rank with
  /// `to` = this rank since the last step() or load).
  StateDict state_dict() const;
  /// Loads an unsharded optimizer state dict (from any world size, or from a plain optimizer over
  /// the same groups): this rank keeps its owned parameters' part. Not collective.
  void load_state_dict(const StateDict& sd);

  /// This rank's optimizer (its shard).
  optim::Optimizer& local() { return *local_; }
  const optim::Optimizer& local() const { return *local_; }
  /// Every parameter, in group order, and the group rank owning each.
  const std::vector<Tensor>& parameters() const { return params_; }
  const std::vector<int>& owners() const { return owner_; }

  // amp::ShardedOptimizer (GradScaler's side; see above).
  const char* sharded_name() const override { return "ZeroRedundancyOptimizer"; }
  /// Every parameter: the gradients are whole on every rank.
  std::vector<Tensor> scaled_parameters() const override { return params_; }
  /// An all_gather over the group.
  std::vector<double> exchange(const std::vector<double>& mine) override;

 private:
  struct DTypeShard;  // the all_gather layout of one (dtype, device)

  Group group_;
  std::vector<Tensor> params_;
  std::vector<std::size_t> group_sizes_;
  std::vector<int> owner_;
  std::vector<std::size_t> local_index_;  // per parameter: its index in local_ (if owned)
  std::vector<std::size_t> owned_;        // global indices of the owned parameters, in order
  std::unique_ptr<optim::Optimizer> local_;
  std::vector<std::shared_ptr<DTypeShard>> shards_;
  StateDict consolidated_;
  bool has_consolidated_ = false;
};

}  // namespace kiln::distributed
