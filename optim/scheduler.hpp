#pragma once
/// Learning-rate schedules (torch.optim.lr_scheduler). A scheduler takes the optimizer's
/// current learning rates as its base rates, sets the rate for epoch 0 at construction, and
/// moves one epoch (or iteration) forward per step():
///   optim::SGD opt(params, optim::SGDOptions(0.1).momentum(0.9));
///   optim::StepLR sched(opt, /*step_size=*/30, /*gamma=*/0.1);
///   for (int epoch = 0; epoch < 90; ++epoch) { train_one_epoch(opt); sched.step(); }
/// Warm-up composes with any other schedule: it runs first, then hands over (epoch 0 of the
/// inner schedule is the first epoch after warm-up):
///   optim::LinearWarmup sched(opt, /*warmup_steps=*/100, /*start_factor=*/0.01,
///                             std::make_unique<optim::CosineAnnealingLR>(opt, /*T_max=*/900, /*eta_min=*/1e-5));
/// Rates are computed in closed form from the base rates and the epoch, per param group, so a
/// schedule never drifts and resumes exactly from its state_dict(). A run resumed with another
/// length keeps the plan it was built with (ResumePlan below) and says so on stderr:
///   optim::WarmupCosineLR sched(opt, 200, /*total_steps=*/10000);   // the checkpoint had 5000
///   io::load_checkpoint(path, state);   // epoch from the checkpoint, decay over 10000 steps
/// ReduceLROnPlateau (scheduler_plateau.hpp) reacts to a metric instead.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optimizer.hpp"

namespace kiln::optim {

/// Which plan LRScheduler::load_state_dict keeps when the state's differs from the scheduler's.
/// A plan is the schedule's hyper-parameters (T_max, warmup_steps, total_steps, milestones,
/// gamma, ...) and base rates; the epoch always comes from the state.
enum class ResumePlan {
  /// The scheduler's own (the default): the rates follow it from the saved epoch and are set on
  /// the optimizer at once, so a run resumed with more steps decays over its new length instead
  /// of restarting a cosine that the old T_max has run out of.
  Current,
  /// The state's (PyTorch's load_state_dict): the checkpoint's schedule continues as planned.
  Saved,
};

class LRScheduler {
 public:
  virtual ~LRScheduler();
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// Advances one epoch and sets every group's learning rate.
  void step();
  /// The rates set by the last step (or by construction), one per param group.
  const std::vector<double>& get_last_lr() const { return last_lrs_; }
  /// Epochs stepped so far (0 right after construction).
  std::int64_t last_epoch() const { return last_epoch_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  /// The rate of every group at `epoch` (>= 0), without changing anything.
  virtual std::vector<double> lr_at(std::int64_t epoch) const = 0;
  const char* name() const { return name_; }
  Optimizer& optimizer() { return opt_; }

  /// "last_epoch", "base_lr.<g>", "last_lr.<g>" and the schedule's own hyper-parameters.
  virtual StateDict state_dict() const;
  /// Restores a state_dict() of the same kind of schedule over as many param groups; every
  /// entry is checked, the state's plan too. Where the state's plan differs from this one,
  /// resume_plan() decides which is kept and the plan warning gets one line saying what differs;
  /// with this one kept, the optimizer's rates are set from it (load the optimizer first, as
  /// io::load_checkpoint does). Otherwise the optimizer is not touched (its state_dict carries
  /// the current rates).
  void load_state_dict(const StateDict& sd);
  void set_resume_plan(ResumePlan keep) { resume_plan_ = keep; }
  ResumePlan resume_plan() const { return resume_plan_; }
  /// Receives load_state_dict's line about a changed plan, e.g. "[CosineAnnealingLR] resuming with
  /// another schedule (T_max 1000 in the state, 2000 here): following this one from epoch 900
  /// (lr 1e-05 -> 0.000505)". Unset (the default), the line goes to stderr.
  void set_plan_warning(std::function<void(const std::string&)> fn) { plan_warning_ = std::move(fn); }

 protected:
  LRScheduler(const char* name, Optimizer& opt);
  /// Derived constructors call this after checking their arguments: sets epoch 0's rates.
  void initial_step();
  /// load_state_dict's work: checks and restores `sd`, keeping the plan `keep` says, and appends
  /// "<name> <state's value> in the state, <this one's> here" for each plan entry that differs.
  virtual void load_state(const StateDict& sd, ResumePlan keep, std::vector<std::string>& changes);
  /// Visits the schedule's hyper-parameters (for state dicts); integers travel as doubles.
  virtual void fields(const OptionFieldFn& f) { (void)f; }
  /// Re-checks hyper-parameters after a load (throws "[<name>] ...").
  virtual void validate() const {}
  /// Throws "[<name>] <what> ..." unless ok.
  void check(bool ok, const std::string& what) const;
  void apply(const std::vector<double>& lrs);
  std::size_t num_groups() const { return base_lrs_.size(); }

  const char* name_;
  Optimizer& opt_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lrs_;
  std::int64_t last_epoch_ = -1;

 private:
  friend class LinearWarmup;  // loads its inner schedule's state
  ResumePlan resume_plan_ = ResumePlan::Current;
  std::function<void(const std::string&)> plan_warning_;
};

/// Passes an integer hyper-parameter through an OptionFieldFn.
void int_field(const OptionFieldFn& f, const char* name, std::int64_t& v);

/// lr = base * gamma^floor(epoch / step_size).
class StepLR final : public LRScheduler {
 public:
  StepLR(Optimizer& opt, std::int64_t step_size, double gamma = 0.1);
  std::vector<double> lr_at(std::int64_t epoch) const override;

 protected:
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  std::int64_t step_size_;
  double gamma_;
};

/// lr = base * gamma^(number of milestones <= epoch); a repeated milestone counts twice.
class MultiStepLR final : public LRScheduler {
 public:
  MultiStepLR(Optimizer& opt, std::vector<std::int64_t> milestones, double gamma = 0.1);
  std::vector<double> lr_at(std::int64_t epoch) const override;

 protected:
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  std::vector<std::int64_t> milestones_;  // sorted
  double gamma_;
};

/// lr = base * gamma^epoch.
class ExponentialLR final : public LRScheduler {
 public:
  ExponentialLR(Optimizer& opt, double gamma);
  std::vector<double> lr_at(std::int64_t epoch) const override;

 protected:
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  double gamma_;
};

/// lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (periodic past T_max,
/// like PyTorch's CosineAnnealingLR).
class CosineAnnealingLR final : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& opt, std::int64_t T_max, double eta_min = 0);
  std::vector<double> lr_at(std::int64_t epoch) const override;

 protected:
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  std::int64_t T_max_;
  double eta_min_;
};

/// Linear warm-up from base * start_factor (epoch 0) to base (epoch warmup_steps), then
/// `after` (if given) with its epoch counted from the end of warm-up; without it the rate
/// stays at base. Equals PyTorch's SequentialLR([LinearLR(start_factor, total_iters =
/// warmup_steps), after], milestones = [warmup_steps]). start_factor may be 0.
class LinearWarmup : public LRScheduler {
 public:
  LinearWarmup(Optimizer& opt, std::int64_t warmup_steps, double start_factor = 0.0,
               std::unique_ptr<LRScheduler> after = nullptr);
  std::vector<double> lr_at(std::int64_t epoch) const override;
  /// Adds the inner schedule's entries under "after.".
  StateDict state_dict() const override;
  LRScheduler* after() const { return after_.get(); }

 protected:
  void load_state(const StateDict& sd, ResumePlan keep, std::vector<std::string>& changes) override;
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  std::int64_t warmup_steps_;
  double start_factor_;
  std::unique_ptr<LRScheduler> after_;
};

/// The common transformer schedule: linear warm-up over warmup_steps, then cosine decay to
/// eta_min at total_steps.
///   optim::WarmupCosineLR sched(opt, /*warmup_steps=*/200, /*total_steps=*/5000);
class WarmupCosineLR final : public LinearWarmup {
 public:
  WarmupCosineLR(Optimizer& opt, std::int64_t warmup_steps, std::int64_t total_steps, double start_factor = 0.0,
                 double eta_min = 0.0);
};

enum class AnnealStrategy { Cos, Linear };

/// The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR, learning rate only): from
/// max_lr / div_factor up to max_lr over the first pct_start of total_steps, then down to
/// max_lr / div_factor / final_div_factor; three_phase comes back to the start rate before the
/// final descent. Step once per batch; stepping past total_steps throws. Momentum is not cycled.
class OneCycleLR final : public LRScheduler {
 public:
  OneCycleLR(Optimizer& opt, double max_lr, std::int64_t total_steps, double pct_start = 0.3,
             AnnealStrategy anneal = AnnealStrategy::Cos, double div_factor = 25.0, double final_div_factor = 1e4,
             bool three_phase = false);
  /// One max_lr per param group.
  OneCycleLR(Optimizer& opt, std::vector<double> max_lrs, std::int64_t total_steps, double pct_start = 0.3,
             AnnealStrategy anneal = AnnealStrategy::Cos, double div_factor = 25.0, double final_div_factor = 1e4,
             bool three_phase = false);
  std::vector<double> lr_at(std::int64_t epoch) const override;

 protected:
  void fields(const OptionFieldFn& f) override;
  void validate() const override;

 private:
  std::vector<double> max_lrs_;
  std::int64_t total_steps_;
  double pct_start_, div_factor_, final_div_factor_;
  bool cos_, three_phase_;
};

}  // namespace kiln::optim
