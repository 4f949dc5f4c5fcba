#include "scheduler_plateau.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <set>

#include "scheduler.hpp"

namespace kiln::optim {

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& opt, PlateauMode mode, double factor, std::int64_t patience,
                                     double threshold, ThresholdMode threshold_mode, std::int64_t cooldown,
                                     double min_lr, double eps)
    : ReduceLROnPlateau(opt, mode, factor, patience, threshold, threshold_mode, cooldown,
                        std::vector<double>(opt.param_groups().size(), min_lr), eps) {}

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& opt, PlateauMode mode, double factor, std::int64_t patience,
                                     double threshold, ThresholdMode threshold_mode, std::int64_t cooldown,
                                     std::vector<double> min_lrs, double eps)
    : opt_(opt),
      max_mode_(mode == PlateauMode::Max),
      factor_(factor),
      patience_(patience),
      threshold_(threshold),
      abs_threshold_(threshold_mode == ThresholdMode::Abs),
      cooldown_(cooldown),
      min_lrs_(std::move(min_lrs)),
      eps_(eps) {
  const std::size_t groups = opt.param_groups().size();
  if (min_lrs_.size() != groups)
    throw_error("ReduceLROnPlateau", fmt::format("got {} min_lr values for {} param groups", min_lrs_.size(), groups));
  validate();
  best_ = max_mode_ ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  for (std::size_t g = 0; g < groups; ++g) last_lrs_.push_back(opt.lr(g));
}

void ReduceLROnPlateau::validate() const {
  auto check = [](bool ok, const std::string& what) {
    if (!ok) throw_error("ReduceLROnPlateau", what);
  };
  check(factor_ >= 0 && factor_ < 1, fmt::format("factor must be in [0, 1), got {}", factor_));
  check(patience_ >= 0, fmt::format("patience must be >= 0, got {}", patience_));
  check(threshold_ >= 0 && std::isfinite(threshold_),
        fmt::format("threshold must be finite and >= 0, got {}", threshold_));
  check(cooldown_ >= 0, fmt::format("cooldown must be >= 0, got {}", cooldown_));
  check(eps_ >= 0, fmt::format("eps must be >= 0, got {}", eps_));
  for (double m : min_lrs_) check(m >= 0 && std::isfinite(m), fmt::format("min_lr must be finite and >= 0, got {}", m));
}

bool ReduceLROnPlateau::is_better(double a) const {
  if (max_mode_) return abs_threshold_ ? a > best_ + threshold_ : a > best_ * (threshold_ + 1);
  return abs_threshold_ ? a < best_ - threshold_ : a < best_ * (1 - threshold_);
}

void ReduceLROnPlateau::step(double metric) {
  const std::size_t groups = opt_.param_groups().size();
  if (groups != min_lrs_.size())
    throw_error("ReduceLROnPlateau",
                fmt::format("the optimizer has {} param groups but this scheduler was built for {}", groups,
                            min_lrs_.size()));
  ++last_epoch_;
  if (is_better(metric)) {
    best_ = metric;
    num_bad_epochs_ = 0;
  } else {
    ++num_bad_epochs_;
  }
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    num_bad_epochs_ = 0;  // bad epochs during cooldown do not count
  }
  if (num_bad_epochs_ > patience_) {
    for (std::size_t g = 0; g < groups; ++g) {
      const double old_lr = opt_.lr(g), new_lr = std::max(old_lr * factor_, min_lrs_[g]);
      // Changes smaller than eps are ignored, so a rate sitting at min_lr stays put.
      if (old_lr - new_lr > eps_) opt_.set_lr(new_lr, g);
    }
    cooldown_counter_ = cooldown_;
    num_bad_epochs_ = 0;
  }
  for (std::size_t g = 0; g < groups; ++g) last_lrs_[g] = opt_.lr(g);
}

void ReduceLROnPlateau::fields(const OptionFieldFn& f) {
  field(f, "mode_max", max_mode_);
  f("factor", factor_);
  int_field(f, "patience", patience_);
  f("threshold", threshold_);
  field(f, "threshold_abs", abs_threshold_);
  int_field(f, "cooldown", cooldown_);
  for (std::size_t g = 0; g < min_lrs_.size(); ++g) f(fmt::format("min_lr.{}", g).c_str(), min_lrs_[g]);
  f("eps", eps_);
  f("best", best_);
  int_field(f, "num_bad_epochs", num_bad_epochs_);
  int_field(f, "cooldown_counter", cooldown_counter_);
  int_field(f, "last_epoch", last_epoch_);
  for (std::size_t g = 0; g < last_lrs_.size(); ++g) f(fmt::format("last_lr.{}", g).c_str(), last_lrs_[g]);
}

StateDict ReduceLROnPlateau::state_dict() const {
  StateDict sd;
  sd.scalars["num_groups"] = static_cast<double>(min_lrs_.size());
  const_cast<ReduceLROnPlateau*>(this)->fields([&](const char* n, double& v) { sd.scalars[n] = v; });
  return sd;
}

void ReduceLROnPlateau::load_state_dict(const StateDict& sd) {
  auto fail = [](const std::string& what) { throw_error("ReduceLROnPlateau", "load_state_dict: " + what); };
  auto it = sd.scalars.find("num_groups");
  if (it == sd.scalars.end()) fail("missing scalar 'num_groups'");
  if (it->second != static_cast<double>(min_lrs_.size()))
    fail(fmt::format("the state has {} param groups, this scheduler {}", it->second, min_lrs_.size()));
  if (!sd.empty()) fail(fmt::format("unexpected tensor '{}'", sd.begin()->key));
  std::set<std::string> used{"num_groups"};
  std::vector<double> values;
  fields([&](const char* n, double&) {
    auto f = sd.scalars.find(n);
    if (f == sd.scalars.end()) fail(fmt::format("missing scalar '{}'", n));
    used.insert(n);
    values.push_back(f->second);
  });
  for (const auto& [k, v] : sd.scalars)
    if (!used.count(k)) fail(fmt::format("unexpected scalar '{}'", k));
  std::vector<double> saved;
  fields([&](const char*, double& v) { saved.push_back(v); });
  std::size_t i = 0;
  fields([&](const char*, double& v) { v = values[i++]; });
  try {
    validate();
  } catch (...) {
    i = 0;
    fields([&](const char*, double& v) { v = saved[i++]; });
    throw;
  }
}

}  // namespace kiln::optim
