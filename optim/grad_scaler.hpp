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
#include <cstdint>
#include <unordered_map>

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
  std::unordered_map<const optim::Optimizer*, Stage> stages_;
  GradScalerOptions options_;
  double scale_;
  std::int64_t growth_tracker_ = 0;
  mutable bool scaled_ = false;  // scale() ran since the last update()
};

}  // namespace kiln::amp
