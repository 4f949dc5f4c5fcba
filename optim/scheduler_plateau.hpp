#pragma once
/// ReduceLROnPlateau (torch.optim.lr_scheduler.ReduceLROnPlateau): multiplies the learning
/// rates by `factor` once a metric has stopped improving for more than `patience` epochs,
/// then waits `cooldown` epochs before counting again; never below min_lr.
///   optim::ReduceLROnPlateau sched(opt, optim::PlateauMode::Min, /*factor=*/0.5, /*patience=*/3);
///   for (...) { train(); sched.step(validation_loss); }
/// Improvement means metric < best * (1 - threshold) (Min, Rel), < best - threshold (Min, Abs),
/// and the mirror images for Max. A NaN metric never improves.
#include <cstdint>
#include <vector>

#include "optimizer.hpp"

namespace kiln::optim {

enum class PlateauMode { Min, Max };
enum class ThresholdMode { Rel, Abs };

class ReduceLROnPlateau {
 public:
  ReduceLROnPlateau(Optimizer& opt, PlateauMode mode = PlateauMode::Min, double factor = 0.1,
                    std::int64_t patience = 10, double threshold = 1e-4,
                    ThresholdMode threshold_mode = ThresholdMode::Rel, std::int64_t cooldown = 0, double min_lr = 0.0,
                    double eps = 1e-8);
  /// One min_lr per param group.
  ReduceLROnPlateau(Optimizer& opt, PlateauMode mode, double factor, std::int64_t patience, double threshold,
                    ThresholdMode threshold_mode, std::int64_t cooldown, std::vector<double> min_lrs,
                    double eps = 1e-8);

  /// Records one epoch's metric and reduces the rates if it is time.
  void step(double metric);
  /// The current rates (after the last step), one per param group.
  const std::vector<double>& get_last_lr() const { return last_lrs_; }
  std::int64_t last_epoch() const { return last_epoch_; }
  double best() const { return best_; }
  std::int64_t num_bad_epochs() const { return num_bad_epochs_; }
  bool in_cooldown() const { return cooldown_counter_ > 0; }

  /// Hyper-parameters and counters ("best", "num_bad_epochs", "cooldown_counter", ...).
  StateDict state_dict() const;
  void load_state_dict(const StateDict& sd);

 private:
  void fields(const OptionFieldFn& f);
  void validate() const;
  bool is_better(double a) const;

  Optimizer& opt_;
  bool max_mode_;
  double factor_;
  std::int64_t patience_;
  double threshold_;
  bool abs_threshold_;
  std::int64_t cooldown_;
  std::vector<double> min_lrs_;
  double eps_;
  double best_;
  std::int64_t num_bad_epochs_ = 0, cooldown_counter_ = 0, last_epoch_ = 0;
  std::vector<double> last_lrs_;
};

}  // namespace kiln::optim
