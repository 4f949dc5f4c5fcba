#pragma once
/// kiln::amp::GradScaler — dynamic loss scaling for float16 training, after torch.amp.GradScaler.
/// float16 holds magnitudes from 6e-8 to 65504 only, so small gradients underflow to 0. The
/// scaler multiplies the loss by S before backward (every gradient comes out S times larger),
/// divides the gradients by S before the update (unscale_), skips the update when any gradient
/// is inf/NaN (S was too large) and adapts S: times backoff_factor after such a step (never below
/// float32's smallest normal, 2^-126: 1/S must stay a finite float32), times growth_factor after
/// growth_interval clean steps in a row.
///
///   kiln::amp::GradScaler scaler;                    // float16; S starts at 2^16
///   for (...) {
///     opt.zero_grad();
///     Tensor loss;
///     {
///       auto mixed = kiln::autocast(kiln::kFloat16);
///       loss = kiln::cross_entropy(model(x), y);
///     }
///     scaler.scale(loss).backward();
///     scaler.unscale_(opt);                          // only needed before clipping or reading grads
///     optim::clip_grad_norm_(model->parameters(), 1.0);
///     scaler.step(opt);                              // false: skipped (inf/NaN gradients)
///     scaler.update();
///   }
///
/// bfloat16 needs no scaler: it has float32's 8-bit exponent, so a gradient float32 can hold
/// does not underflow, and GradScaler(kBFloat16) throws to say so. With `enabled(false)` every
/// method passes through (scale returns the loss, step is opt.step()), so one loop serves every
/// precision. Checkpoints keep its state dict: io::TrainingState{.extras = {{"scaler", scaler}}}.
///
/// Several processes (kiln::distributed; optim does not depend on it, so it reaches the scaler
/// through ShardedOptimizer below):
/// - DDP with an ordinary optimizer: `scaler.step(opt)` as above, no communication. The scaler
///   checks the averaged gradients, which are the same on every rank, so every rank skips or
///   steps alike: an inf/NaN in one rank's own gradients reaches every rank's average (inf + x is
///   inf, inf - inf is NaN). Every rank must then build its scaler alike (enabled, options) and
///   restore the same state; this path cannot check that (the ZeRO path does).
/// - ZeRO-1 (distributed::ZeroRedundancyOptimizer, a ShardedOptimizer): `scaler.step(zero)`. Each
///   rank unscales and checks every gradient (not only its shard's), the ranks then combine their
///   inf/NaN findings, so all skip or all step, and the step all-gathers the parameters.
///   `scaler.step(zero.local())` is an error (that rank would check its own shard only, skip
///   alone and skip the all-gather).
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/arg.hpp"
#include "../core/state_dict.hpp"
#include "../core/tensor.hpp"
#include "optimizer.hpp"

namespace kiln::amp {

/// PyTorch's defaults.
struct GradScalerOptions {
  /// S before the first step (finite, >= 2^-126).
  KILN_ARG(double, init_scale) = 65536.0;
  /// S grows by this factor (> 1) after growth_interval steps without inf/NaN gradients.
  KILN_ARG(double, growth_factor) = 2.0;
  /// S shrinks by this factor (in (0, 1)) after a step with inf/NaN gradients.
  KILN_ARG(double, backoff_factor) = 0.5;
  /// Clean steps in a row before S grows (>= 1).
  KILN_ARG(std::int64_t, growth_interval) = 2000;
  /// false: scale, unscale_, step and update pass through.
  KILN_ARG(bool, enabled) = true;
};

/// An optimizer whose step spans several processes, each updating its share of the parameters
/// (distributed::ZeroRedundancyOptimizer implements it). GradScaler::unscale_ and step on it:
/// unscale and check the gradient of every scaled_parameters() entry, then exchange() (enabled,
/// found inf/NaN, scale, growth tracker, options, a local error) so that every process takes the
/// same decision, and raise the same kiln::Error on every process when their scalers differ;
/// step() runs when no process found an inf/NaN. Not copyable or movable: the local optimizer it
/// names (below) must keep pointing at it.
class ShardedOptimizer {
 public:
  ShardedOptimizer() = default;
  ShardedOptimizer(const ShardedOptimizer&) = delete;
  ShardedOptimizer& operator=(const ShardedOptimizer&) = delete;
  virtual ~ShardedOptimizer();
  /// "ZeroRedundancyOptimizer": for messages.
  virtual const char* sharded_name() const = 0;
  /// Every parameter whose gradient this process's step reads (all of them for ZeRO-1).
  virtual std::vector<Tensor> scaled_parameters() const = 0;
  /// Collective over the processes of the step: every process passes as many values, each gets
  /// them all back in process (group rank) order, process after process.
  virtual std::vector<double> exchange(const std::vector<double>& mine) = 0;
  /// The update (collective).
  virtual void step() = 0;

 protected:
  /// The optimizer of this process's shard: GradScaler refuses it in unscale_/step (pass the
  /// ShardedOptimizer instead). Call once from the constructor.
  void set_local(const optim::Optimizer& local);

 private:
  const optim::Optimizer* local_ = nullptr;
};

class GradScaler {
 public:
  /// `dtype` is the precision the model computes in: float16 (bfloat16 throws: it needs no
  /// scaling). A disabled scaler accepts any dtype.
  explicit GradScaler(DType dtype = kFloat16, const GradScalerOptions& options = {});
  explicit GradScaler(const GradScalerOptions& options) : GradScaler(kFloat16, options) {}

  /// loss * S (a float16/bfloat16 loss is converted to float32 first, so S cannot overflow it).
  /// unscale_ and step need a scale() since the last update(): gradients of an unscaled loss
  /// divided by S would be S times too small.
  Tensor scale(const Tensor& loss) const;
  /// Divides the gradients of opt's parameters by S in place and records whether any is
  /// inf/NaN. At most once per optimizer between update()s, and before step(). float16
  /// gradients (a model->to(kFloat16)) are refused, as PyTorch does: unscaled in float16 they
  /// would underflow; keep float32 parameters under kiln::autocast(kFloat16).
  void unscale_(optim::Optimizer& opt);
  /// Unscales if unscale_ was not called, then runs opt.step() unless a gradient was inf/NaN.
  /// Returns whether the step ran. Once per optimizer between update()s.
  bool step(optim::Optimizer& opt);
  /// The same for an optimizer sharded over processes (collective over them): every gradient of
  /// scaled_parameters() is unscaled and checked, then the processes agree (ShardedOptimizer).
  /// A disabled scaler still takes part in the exchange (so that a scaler enabled on some ranks
  /// only is an error, not a silent divergence), then steps. After such an error the iteration is
  /// void on every rank: its gradients may be divided by S already, so zero them and run the next
  /// backward (a step() on them would divide them again).
  void unscale_(ShardedOptimizer& opt);
  bool step(ShardedOptimizer& opt);
  /// Adapts S after the step(s) of this iteration (needs at least one unscale_ or step since
  /// the last update) and starts the next iteration.
  void update();
  /// Sets S to `new_scale` (> 0, finite) instead of adapting it; starts the next iteration.
  void update(double new_scale);

  double get_scale() const { return scale_; }
  /// Clean steps since S last changed.
  std::int64_t growth_tracker() const { return growth_tracker_; }
  bool is_enabled() const { return options_.enabled(); }
  const GradScalerOptions& options() const { return options_; }

  /// Scalars "scale", "growth_tracker", "growth_factor", "backoff_factor", "growth_interval".
  StateDict state_dict() const;
  /// Restores what state_dict() saved (every key checked); the current iteration is discarded.
  void load_state_dict(const StateDict& sd);

 private:
  struct Stage {
    bool unscaled = false, stepped = false, found_inf = false;
  };
  /// The stage of `key` after the checks for unscale_ (kiln::Error if it may not unscale now).
  Stage& unscale_stage(const void* key, const std::vector<Tensor>& params, const char* opt_name);
  /// Divides the gradients of `params` by S; true when one of them is inf/NaN.
  bool unscale_grads(const std::vector<Tensor>& params);
  /// The processes' combined found_inf; the same kiln::Error on every process when one failed
  /// locally (`local_error`) or their scalers differ.
  bool agree(ShardedOptimizer& opt, bool found_inf, const std::string& local_error);

  std::unordered_map<const void*, Stage> stages_;  // by optimizer
  GradScalerOptions options_;
  double scale_;
  std::int64_t growth_tracker_ = 0;
  mutable bool scaled_ = false;  // scale() ran since the last update()
};

}  // namespace kiln::amp
