#include "scheduler.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>

namespace kiln::optim {

namespace {
constexpr double kExactInt = 9007199254740992.0;  // 2^53: doubles hold every integer up to here
}  // namespace

void int_field(const OptionFieldFn& f, const char* name, std::int64_t& v) {
  double d = static_cast<double>(v);
  f(name, d);
  // load_state_dict sets d from a file: converting NaN or a value past int64 would be UB.
  if (!(d == std::floor(d) && std::abs(d) <= kExactInt))
    throw_error("LRScheduler", fmt::format("load_state_dict: '{}' is {}, not an integer within +-2^53", name, d));
  v = static_cast<std::int64_t>(d);
}

// ---- LRScheduler ----

LRScheduler::LRScheduler(const char* name, Optimizer& opt) : name_(name), opt_(opt) {
  const std::size_t n = opt.param_groups().size();
  for (std::size_t g = 0; g < n; ++g) base_lrs_.push_back(opt.lr(g));
}

LRScheduler::~LRScheduler() = default;

void LRScheduler::check(bool ok, const std::string& what) const {
  if (!ok) throw_error(name_, what);
}

void LRScheduler::apply(const std::vector<double>& lrs) {
  check(opt_.param_groups().size() == lrs.size(),
        fmt::format("the optimizer has {} param groups but this scheduler was built for {}", opt_.param_groups().size(),
                    lrs.size()));
  // Straight to the options: a schedule may pass through values set_lr would refuse (a linear
  // one-cycle stepped to its very end dips below 0, as in PyTorch); step() validates later.
  for (std::size_t g = 0; g < lrs.size(); ++g) opt_.param_groups()[g].options().set_lr(lrs[g]);
  last_lrs_ = lrs;
}

void LRScheduler::initial_step() {
  validate();
  last_epoch_ = -1;
  step();
}

void LRScheduler::step() {
  std::vector<double> lrs = lr_at(last_epoch_ + 1);
  apply(lrs);
  ++last_epoch_;
}

StateDict LRScheduler::state_dict() const {
  StateDict sd;
  sd.scalars["last_epoch"] = static_cast<double>(last_epoch_);
  sd.scalars["num_groups"] = static_cast<double>(num_groups());
  for (std::size_t g = 0; g < num_groups(); ++g) {
    sd.scalars[fmt::format("base_lr.{}", g)] = base_lrs_[g];
    sd.scalars[fmt::format("last_lr.{}", g)] = g < last_lrs_.size() ? last_lrs_[g] : base_lrs_[g];
  }
  const_cast<LRScheduler*>(this)->fields([&](const char* n, double& v) { sd.scalars[n] = v; });
  return sd;
}

void LRScheduler::load_state_dict(const StateDict& sd) {
  std::vector<std::string> changes;
  load_state(sd, resume_plan_, changes);
  if (changes.empty()) return;
  std::string line = fmt::format("[{}] resuming with another schedule ({}): ", name_, fmt::join(changes, ", "));
  if (resume_plan_ == ResumePlan::Current) {
    const double old_lr = last_lrs_.empty() ? 0.0 : last_lrs_[0];
    apply(lr_at(last_epoch_));
    line += fmt::format("following this one from epoch {} (lr {} -> {})", last_epoch_, old_lr,
                        last_lrs_.empty() ? 0.0 : last_lrs_[0]);
  } else {
    line += fmt::format("continuing the state's (ResumePlan::Saved) from epoch {}", last_epoch_);
  }
  if (plan_warning_) plan_warning_(line);
  else fmt::print(stderr, "{}\n", line);
}

void LRScheduler::load_state(const StateDict& sd, ResumePlan keep, std::vector<std::string>& changes) {
  std::set<std::string> used;
  auto get = [&](const std::string& k) {
    auto it = sd.scalars.find(k);
    check(it != sd.scalars.end(), fmt::format("load_state_dict: missing scalar '{}'", k));
    used.insert(k);
    return it->second;
  };
  const double groups = get("num_groups");
  check(groups == static_cast<double>(num_groups()),
        fmt::format("load_state_dict: the state has {} param groups, this scheduler {}", groups, num_groups()));
  const double epoch = get("last_epoch");
  check(epoch >= 0 && epoch == std::floor(epoch) && epoch <= kExactInt,
        fmt::format("load_state_dict: last_epoch {} is not an epoch (an integer in [0, 2^53])", epoch));
  std::vector<double> base(num_groups()), last(num_groups());
  for (std::size_t g = 0; g < num_groups(); ++g) {
    base[g] = get(fmt::format("base_lr.{}", g));
    last[g] = get(fmt::format("last_lr.{}", g));
  }
  for (const auto& [k, v] : sd) check(false, fmt::format("load_state_dict: unexpected tensor '{}'", k));
  // The state's hyper-parameters are validated in place, then this scheduler's come back unless
  // the state's plan is kept; a bad dict changes nothing.
  std::vector<std::pair<std::string, double>> values;
  fields([&](const char* n, double& v) {
    values.emplace_back(n, get(n));
    (void)v;
  });
  for (const auto& [k, v] : sd.scalars)
    check(used.count(k) != 0, fmt::format("load_state_dict: unexpected scalar '{}'", k));
  std::vector<std::pair<std::string, double>> own;
  fields([&](const char* n, double& v) { own.emplace_back(n, v); });
  auto set_fields = [&](const std::vector<std::pair<std::string, double>>& from) {
    std::size_t i = 0;
    fields([&](const char*, double& v) { v = from[i++].second; });
  };
  try {
    set_fields(values);  // int_field throws for a value that is not an integer
    validate();
  } catch (...) {
    set_fields(own);
    throw;
  }
  for (std::size_t i = 0; i < values.size(); ++i)
    if (values[i].second != own[i].second)
      changes.push_back(fmt::format("{} {} in the state, {} here", values[i].first, values[i].second, own[i].second));
  for (std::size_t g = 0; g < num_groups(); ++g)
    if (base[g] != base_lrs_[g])
      changes.push_back(fmt::format("base_lr.{} {} in the state, {} here", g, base[g], base_lrs_[g]));
  if (keep == ResumePlan::Current) set_fields(own);
  else base_lrs_ = std::move(base);
  last_lrs_ = std::move(last);
  last_epoch_ = static_cast<std::int64_t>(epoch);
}

// ---- StepLR ----

StepLR::StepLR(Optimizer& opt, std::int64_t step_size, double gamma)
    : LRScheduler("StepLR", opt), step_size_(step_size), gamma_(gamma) {
  initial_step();
}
void StepLR::validate() const {
  check(step_size_ >= 1, fmt::format("step_size must be >= 1, got {}", step_size_));
  check(gamma_ >= 0 && std::isfinite(gamma_), fmt::format("gamma must be finite and >= 0, got {}", gamma_));
}
void StepLR::fields(const OptionFieldFn& f) {
  int_field(f, "step_size", step_size_);
  f("gamma", gamma_);
}
std::vector<double> StepLR::lr_at(std::int64_t epoch) const {
  std::vector<double> out;
  const double k = std::pow(gamma_, static_cast<double>(epoch / step_size_));
  for (double b : base_lrs_) out.push_back(b * k);
  return out;
}

// ---- MultiStepLR ----

MultiStepLR::MultiStepLR(Optimizer& opt, std::vector<std::int64_t> milestones, double gamma)
    : LRScheduler("MultiStepLR", opt), milestones_(std::move(milestones)), gamma_(gamma) {
  std::sort(milestones_.begin(), milestones_.end());
  initial_step();
}
void MultiStepLR::validate() const {
  for (auto m : milestones_) check(m >= 0, fmt::format("milestones must be >= 0, got {}", m));
  check(std::is_sorted(milestones_.begin(), milestones_.end()), "milestones must be sorted");
  check(gamma_ >= 0 && std::isfinite(gamma_), fmt::format("gamma must be finite and >= 0, got {}", gamma_));
}
void MultiStepLR::fields(const OptionFieldFn& f) {
  for (std::size_t i = 0; i < milestones_.size(); ++i)
    int_field(f, fmt::format("milestone.{}", i).c_str(), milestones_[i]);
  f("gamma", gamma_);
}
std::vector<double> MultiStepLR::lr_at(std::int64_t epoch) const {
  const auto passed = std::upper_bound(milestones_.begin(), milestones_.end(), epoch) - milestones_.begin();
  const double k = std::pow(gamma_, static_cast<double>(passed));
  std::vector<double> out;
  for (double b : base_lrs_) out.push_back(b * k);
  return out;
}

// ---- ExponentialLR ----

ExponentialLR::ExponentialLR(Optimizer& opt, double gamma) : LRScheduler("ExponentialLR", opt), gamma_(gamma) {
  initial_step();
}
void ExponentialLR::validate() const {
  check(gamma_ >= 0 && std::isfinite(gamma_), fmt::format("gamma must be finite and >= 0, got {}", gamma_));
}
void ExponentialLR::fields(const OptionFieldFn& f) { f("gamma", gamma_); }
std::vector<double> ExponentialLR::lr_at(std::int64_t epoch) const {
  const double k = std::pow(gamma_, static_cast<double>(epoch));
  std::vector<double> out;
  for (double b : base_lrs_) out.push_back(b * k);
  return out;
}

// ---- CosineAnnealingLR ----

CosineAnnealingLR::CosineAnnealingLR(Optimizer& opt, std::int64_t T_max, double eta_min)
    : LRScheduler("CosineAnnealingLR", opt), T_max_(T_max), eta_min_(eta_min) {
  initial_step();
}
void CosineAnnealingLR::validate() const {
  check(T_max_ >= 1, fmt::format("T_max must be >= 1, got {}", T_max_));
  check(eta_min_ >= 0 && std::isfinite(eta_min_), fmt::format("eta_min must be finite and >= 0, got {}", eta_min_));
}
void CosineAnnealingLR::fields(const OptionFieldFn& f) {
  int_field(f, "T_max", T_max_);
  f("eta_min", eta_min_);
}
std::vector<double> CosineAnnealingLR::lr_at(std::int64_t epoch) const {
  const double c = (1 + std::cos(std::numbers::pi * static_cast<double>(epoch) / static_cast<double>(T_max_))) / 2;
  std::vector<double> out;
  for (double b : base_lrs_) out.push_back(eta_min_ + (b - eta_min_) * c);
  return out;
}

// ---- LinearWarmup ----

LinearWarmup::LinearWarmup(Optimizer& opt, std::int64_t warmup_steps, double start_factor,
                           std::unique_ptr<LRScheduler> after)
    : LRScheduler("LinearWarmup", opt),
      warmup_steps_(warmup_steps),
      start_factor_(start_factor),
      after_(std::move(after)) {
  if (after_) {
    check(&after_->optimizer() == &opt, "the scheduler to run after warm-up drives a different optimizer");
    check(after_->base_lrs().size() == base_lrs_.size(),
          fmt::format("the scheduler to run after warm-up has {} param groups, the optimizer {}",
                      after_->base_lrs().size(), base_lrs_.size()));
  }
  initial_step();
}
void LinearWarmup::validate() const {
  check(warmup_steps_ >= 0, fmt::format("warmup_steps must be >= 0, got {}", warmup_steps_));
  check(start_factor_ >= 0 && start_factor_ <= 1, fmt::format("start_factor must be in [0, 1], got {}", start_factor_));
}
void LinearWarmup::fields(const OptionFieldFn& f) {
  int_field(f, "warmup_steps", warmup_steps_);
  f("start_factor", start_factor_);
}
std::vector<double> LinearWarmup::lr_at(std::int64_t epoch) const {
  if (epoch >= warmup_steps_) {
    if (after_) return after_->lr_at(epoch - warmup_steps_);
    return base_lrs_;
  }
  const double k =
      start_factor_ + (1 - start_factor_) * static_cast<double>(epoch) / static_cast<double>(warmup_steps_);
  std::vector<double> out;
  for (double b : base_lrs_) out.push_back(b * k);
  return out;
}
StateDict LinearWarmup::state_dict() const {
  StateDict sd = LRScheduler::state_dict();
  if (after_) {
    StateDict inner = after_->state_dict();
    for (auto& [k, v] : inner.scalars) sd.scalars["after." + k] = v;
    for (auto& [k, v] : inner) sd.insert("after." + k, v);
  }
  return sd;
}
void LinearWarmup::load_state(const StateDict& sd, ResumePlan keep, std::vector<std::string>& changes) {
  StateDict own, inner;
  for (const auto& [k, v] : sd.scalars) (k.rfind("after.", 0) == 0 ? inner.scalars[k.substr(6)] : own.scalars[k]) = v;
  for (const auto& [k, v] : sd) {
    if (k.rfind("after.", 0) == 0) inner.insert(k.substr(6), v);
    else own.insert(k, v);
  }
  check(after_ || (inner.scalars.empty() && inner.empty()),
        "load_state_dict: the state has a schedule after warm-up but this LinearWarmup has none");
  if (after_) {
    check(!inner.scalars.empty(),
          "load_state_dict: this LinearWarmup has a schedule after warm-up but the state has none");
    // The inner load is checked first; a failure in the outer one after it is still
    // reported, with the inner schedule restored to what it was.
    StateDict before = after_->state_dict();
    std::vector<std::string> inner_changes, none;
    after_->load_state(inner, keep, inner_changes);
    try {
      LRScheduler::load_state(own, keep, changes);
    } catch (...) {
      after_->load_state(before, ResumePlan::Saved, none);
      throw;
    }
    for (const auto& c : inner_changes) changes.push_back("after." + c);
  } else {
    LRScheduler::load_state(own, keep, changes);
  }
}

namespace {
std::int64_t cosine_span(std::int64_t warmup_steps, std::int64_t total_steps) {
  if (total_steps <= warmup_steps || warmup_steps < 0)
    throw_error("WarmupCosineLR",
                fmt::format("total_steps ({}) must exceed warmup_steps ({}) and warmup_steps must be >= 0", total_steps,
                            warmup_steps));
  return total_steps - warmup_steps;
}
}  // namespace

WarmupCosineLR::WarmupCosineLR(Optimizer& opt, std::int64_t warmup_steps, std::int64_t total_steps, double start_factor,
                               double eta_min)
    : LinearWarmup(opt, warmup_steps, start_factor,
                   std::make_unique<CosineAnnealingLR>(opt, cosine_span(warmup_steps, total_steps), eta_min)) {}

// ---- OneCycleLR ----

OneCycleLR::OneCycleLR(Optimizer& opt, double max_lr, std::int64_t total_steps, double pct_start, AnnealStrategy anneal,
                       double div_factor, double final_div_factor, bool three_phase)
    : OneCycleLR(opt, std::vector<double>(opt.param_groups().size(), max_lr), total_steps, pct_start, anneal,
                 div_factor, final_div_factor, three_phase) {}

OneCycleLR::OneCycleLR(Optimizer& opt, std::vector<double> max_lrs, std::int64_t total_steps, double pct_start,
                       AnnealStrategy anneal, double div_factor, double final_div_factor, bool three_phase)
    : LRScheduler("OneCycleLR", opt),
      max_lrs_(std::move(max_lrs)),
      total_steps_(total_steps),
      pct_start_(pct_start),
      div_factor_(div_factor),
      final_div_factor_(final_div_factor),
      cos_(anneal == AnnealStrategy::Cos),
      three_phase_(three_phase) {
  check(max_lrs_.size() == num_groups(),
        fmt::format("got {} max_lr values for {} param groups", max_lrs_.size(), num_groups()));
  validate();
  for (std::size_t g = 0; g < num_groups(); ++g) base_lrs_[g] = max_lrs_[g] / div_factor_;
  initial_step();
}

void OneCycleLR::validate() const {
  check(total_steps_ >= 1, fmt::format("total_steps must be >= 1, got {}", total_steps_));
  check(pct_start_ >= 0 && pct_start_ <= 1, fmt::format("pct_start must be in [0, 1], got {}", pct_start_));
  check(div_factor_ > 0 && std::isfinite(div_factor_),
        fmt::format("div_factor must be finite and > 0, got {}", div_factor_));
  check(final_div_factor_ > 0 && std::isfinite(final_div_factor_),
        fmt::format("final_div_factor must be finite and > 0, got {}", final_div_factor_));
  for (double m : max_lrs_) check(m >= 0 && std::isfinite(m), fmt::format("max_lr must be finite and >= 0, got {}", m));
  // Every phase must span at least part of a step, or its interpolation divides by zero.
  const double t = static_cast<double>(total_steps_), up = pct_start_ * t - 1;
  const double down = three_phase_ ? 2 * pct_start_ * t - 2 : t - 1;
  check(up > 0 && down > up && (!three_phase_ || t - 1 > down),
        fmt::format("pct_start {} with total_steps {} leaves a phase of the cycle empty", pct_start_, total_steps_));
}

void OneCycleLR::fields(const OptionFieldFn& f) {
  for (std::size_t g = 0; g < max_lrs_.size(); ++g) f(fmt::format("max_lr.{}", g).c_str(), max_lrs_[g]);
  int_field(f, "total_steps", total_steps_);
  f("pct_start", pct_start_);
  f("div_factor", div_factor_);
  f("final_div_factor", final_div_factor_);
  field(f, "anneal_cos", cos_);
  field(f, "three_phase", three_phase_);
}

std::vector<double> OneCycleLR::lr_at(std::int64_t epoch) const {
  check(epoch <= total_steps_, fmt::format("stepped {} times but total_steps is {}", epoch, total_steps_));
  const double t = static_cast<double>(total_steps_), s = static_cast<double>(epoch);
  std::vector<double> out;
  for (double max_lr : max_lrs_) {
    const double initial = max_lr / div_factor_, min_lr = initial / final_div_factor_;
    // (end step, start lr, end lr) of each phase, as PyTorch lays them out.
    struct Phase {
      double end, from, to;
    };
    Phase phases[3];
    int n = 0;
    phases[n++] = {pct_start_ * t - 1, initial, max_lr};
    if (three_phase_) {
      phases[n++] = {2 * pct_start_ * t - 2, max_lr, initial};
      phases[n++] = {t - 1, initial, min_lr};
    } else {
      phases[n++] = {t - 1, max_lr, min_lr};
    }
    double start = 0, lr = 0;
    for (int i = 0; i < n; ++i) {
      if (s <= phases[i].end || i == n - 1) {
        const double pct = (s - start) / (phases[i].end - start);
        lr = cos_ ? phases[i].to + (phases[i].from - phases[i].to) / 2.0 * (std::cos(std::numbers::pi * pct) + 1)
                  : (phases[i].to - phases[i].from) * pct + phases[i].from;
        break;
      }
      start = phases[i].end;
    }
    out.push_back(lr);
  }
  return out;
}

}  // namespace kiln::optim
