#include "grad_scaler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "../autograd/autocast.hpp"
#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"

namespace kiln::amp {
namespace {

constexpr const char* kName = "GradScaler";

// unscale_ multiplies float32 gradients by 1/S: below float32's smallest normal that overflows to
// inf, every gradient becomes NaN and no step could run again.
constexpr double kMinScale = std::numeric_limits<float>::min();

void check_scale(double s, const char* what) {
  KILN_CHECK(std::isfinite(s) && s > 0, kName, "{} must be positive and finite, got {}", what, s);
  KILN_CHECK(s >= kMinScale, kName, "{} is {}, below float32's smallest normal {} (1/scale would overflow float32)",
             what, s, kMinScale);
}

void check_options(const GradScalerOptions& o) {
  check_scale(o.init_scale(), "init_scale");
  KILN_CHECK(std::isfinite(o.growth_factor()) && o.growth_factor() > 1, kName,
             "growth_factor must be finite and > 1, got {}", o.growth_factor());
  KILN_CHECK(o.backoff_factor() > 0 && o.backoff_factor() < 1, kName, "backoff_factor must be in (0, 1), got {}",
             o.backoff_factor());
  KILN_CHECK(o.growth_interval() >= 1, kName, "growth_interval must be >= 1, got {}", o.growth_interval());
}

// The local optimizers of live ShardedOptimizers: unscale_/step refuse them.
std::mutex g_shards_mu;
std::unordered_map<const optim::Optimizer*, const ShardedOptimizer*> g_shards;

void refuse_shard(const optim::Optimizer& opt, const char* what) {
  std::lock_guard<std::mutex> lock(g_shards_mu);
  auto it = g_shards.find(&opt);
  if (it == g_shards.end()) return;
  const char* owner = it->second->sharded_name();
  throw_error(kName, fmt::format("{}: this {} optimizer is the local shard of a {}; pass the {} itself "
                                 "(scaler.step(zero)): with its shard only, each rank would check only its own "
                                 "gradients (the ranks could disagree on skipping) and no parameter would be gathered",
                                 what, opt.name(), owner, owner));
}

// What the processes of a sharded step compare: [enabled, local error, found_inf, scale,
// growth_tracker, growth_factor, backoff_factor, growth_interval].
enum Agreed { kEnabled, kFailed, kFoundInf, kScale, kTracker, kGrowth, kBackoff, kInterval, kAgreed };

std::string describe(const double* v) {
  if (v[kEnabled] == 0) return "disabled";
  return fmt::format("scale {}, growth tracker {}, growth_factor {}, backoff_factor {}, growth_interval {}", v[kScale],
                     v[kTracker], v[kGrowth], v[kBackoff], v[kInterval]);
}

bool same_settings(const double* a, const double* b) {
  if (a[kEnabled] != b[kEnabled]) return false;
  if (a[kEnabled] == 0) return true;  // disabled scalers hold nothing that acts
  for (int f : {kScale, kTracker, kGrowth, kBackoff, kInterval})
    if (a[f] != b[f]) return false;
  return true;
}

}  // namespace

ShardedOptimizer::~ShardedOptimizer() {
  if (!local_) return;
  std::lock_guard<std::mutex> lock(g_shards_mu);
  g_shards.erase(local_);
}

void ShardedOptimizer::set_local(const optim::Optimizer& local) {
  std::lock_guard<std::mutex> lock(g_shards_mu);
  if (local_) g_shards.erase(local_);
  local_ = &local;
  g_shards[local_] = this;
}

GradScaler::GradScaler(DType dtype, const GradScalerOptions& options)
    : options_(options), scale_(options.init_scale()) {
  if (!options.enabled()) return;
  KILN_CHECK(dtype != kBFloat16, kName,
             "bfloat16 needs no loss scaling: it has float32's 8-bit exponent, so gradients do not underflow; train "
             "bfloat16 without a GradScaler (it is for float16)");
  KILN_CHECK(dtype == kFloat16, kName, "loss scaling is for float16 training, got dtype {}", dtype_name(dtype));
  check_options(options);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  KILN_CHECK(loss.defined(), kName, "scale: the loss is undefined");
  if (!is_enabled()) return loss;
  KILN_CHECK(loss.is_floating_point(), kName, "scale: the loss must be floating point, got {}",
             dtype_name(loss.dtype()));
  Tensor l = is_reduced_float(loss.dtype()) ? to(loss, kFloat32) : loss;
  scaled_ = true;
  return mul(l, full({}, scale_, TensorOptions(l.dtype()).device(l.device())));
}

GradScaler::Stage& GradScaler::unscale_stage(const void* key, const std::vector<Tensor>& params, const char* opt_name) {
  // Dividing by S in float16 underflows exactly the small values the scaling saved (PyTorch
  // refuses too): the gradients must be of float32 parameters.
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor g = params[i].grad();
    KILN_CHECK(!g.defined() || g.dtype() != kFloat16, kName,
               "unscale_: parameter {} of this {} optimizer (shape {}) has a float16 gradient, which unscaling in "
               "float16 would underflow; keep the parameters float32 and run the forward pass under "
               "kiln::autocast(kFloat16)",
               i, opt_name, shape_str(params[i].shape()));
  }
  // Without scale() the gradients are the loss's own: dividing them by S would shrink the
  // update S times, silently.
  KILN_CHECK(scaled_, kName,
             "unscale_()/step(): no scale() since the last update(), so the gradients were not multiplied by the "
             "scale ({}) and dividing them by it would shrink the step as much; run backward on scaler.scale(loss)",
             scale_);
  // find, not []: a refused unscale_ must leave no stage behind for update() to act on.
  if (auto it = stages_.find(key); it != stages_.end()) {
    KILN_CHECK(!it->second.stepped, kName,
               "unscale_() is called after step() on this {} optimizer; call update() first", opt_name);
    KILN_CHECK(!it->second.unscaled, kName,
               "unscale_() has already been called on this {} optimizer since the last update()", opt_name);
  }
  return stages_[key];
}

bool GradScaler::unscale_grads(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  // One count per gradient, summed on its device, read once: a single wait for the whole set.
  const double inv = 1.0 / scale_;
  Tensor nonfinite;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    g.mul_(inv);
    Tensor bad = sum(logical_not(isfinite(g)));
    if (bad.device() != Device::cpu()) bad = bad.to(Device::cpu());
    nonfinite = nonfinite.defined() ? add(nonfinite, bad) : bad;
  }
  return nonfinite.defined() && nonfinite.item<std::int64_t>() > 0;
}

void GradScaler::unscale_(optim::Optimizer& opt) {
  if (!is_enabled()) return;
  refuse_shard(opt, "unscale_()");
  const std::vector<Tensor> params = opt.parameters();
  Stage& st = unscale_stage(&opt, params, opt.name());
  st.found_inf = unscale_grads(params);
  st.unscaled = true;
}

bool GradScaler::step(optim::Optimizer& opt) {
  refuse_shard(opt, "step()");
  if (!is_enabled()) {
    opt.step();
    return true;
  }
  if (auto it = stages_.find(&opt); it == stages_.end() || !it->second.unscaled) unscale_(opt);
  Stage& st = stages_[&opt];
  KILN_CHECK(!st.stepped, kName, "step() has already been called on this {} optimizer since the last update()",
             opt.name());
  st.stepped = true;
  if (st.found_inf) return false;
  opt.step();
  return true;
}

bool GradScaler::agree(ShardedOptimizer& opt, bool found_inf, const std::string& local_error) {
  std::vector<double> mine(kAgreed);
  mine[kEnabled] = is_enabled() ? 1 : 0;
  mine[kFailed] = local_error.empty() ? 0 : 1;
  mine[kFoundInf] = found_inf ? 1 : 0;
  mine[kScale] = scale_;
  mine[kTracker] = static_cast<double>(growth_tracker_);
  mine[kGrowth] = options_.growth_factor();
  mine[kBackoff] = options_.backoff_factor();
  mine[kInterval] = static_cast<double>(options_.growth_interval());
  const std::vector<double> all = opt.exchange(mine);
  KILN_CHECK(!all.empty() && all.size() % kAgreed == 0, kName, "{}::exchange returned {} values for {} per rank",
             opt.sharded_name(), all.size(), static_cast<int>(kAgreed));
  const std::size_t ranks = all.size() / kAgreed;
  // A rank that failed before the exchange (say it skipped scale()): every rank stops here, the
  // failed one with its own message.
  if (!local_error.empty()) throw Error(local_error);
  for (std::size_t r = 0; r < ranks; ++r)
    KILN_CHECK(all[r * kAgreed + kFailed] == 0, kName,
               "unscale_()/step() on a {}: rank {} failed before the ranks could agree (its error is in its own "
               "output); no rank steps",
               opt.sharded_name(), r);
  for (std::size_t r = 1; r < ranks; ++r)
    KILN_CHECK(same_settings(&all[0], &all[r * kAgreed]), kName,
               "unscale_()/step() on a {}: the ranks' scalers differ: rank 0: {}; rank {}: {}. Every rank must build "
               "its GradScaler alike and restore the same state (a checkpoint's scaler state on every rank)",
               opt.sharded_name(), describe(&all[0]), r, describe(&all[r * kAgreed]));
  bool any = false;
  for (std::size_t r = 0; r < ranks; ++r) any = any || all[r * kAgreed + kFoundInf] != 0;
  return any;
}

void GradScaler::unscale_(ShardedOptimizer& opt) {
  if (!is_enabled()) return;
  const std::vector<Tensor> params = opt.scaled_parameters();
  // A local error must reach the exchange: a rank throwing here would leave the others waiting.
  std::string error;
  bool found_inf = false, created = false;
  try {
    Stage& st = unscale_stage(&opt, params, opt.sharded_name());
    created = st.unscaled = true;  // from here on the gradients are divided by S
    found_inf = unscale_grads(params);
  } catch (const Error& e) {
    error = e.what();
  }
  try {
    found_inf = agree(opt, found_inf, error);
  } catch (const Error&) {
    // The iteration is void on every rank (some gradients may be unscaled): the stage this call
    // made goes, so that every rank starts the next one alike (an earlier stage stays).
    if (created) stages_.erase(&opt);
    throw;
  }
  stages_[&opt].found_inf = found_inf;
}

bool GradScaler::step(ShardedOptimizer& opt) {
  if (!is_enabled()) {
    agree(opt, false, "");
    opt.step();
    return true;
  }
  if (auto it = stages_.find(&opt); it == stages_.end() || !it->second.unscaled) unscale_(opt);
  Stage& st = stages_[&opt];
  KILN_CHECK(!st.stepped, kName, "step() has already been called on this {} since the last update()",
             opt.sharded_name());
  st.stepped = true;
  if (st.found_inf) return false;
  opt.step();
  return true;
}

void GradScaler::update() {
  if (!is_enabled()) return;
  KILN_CHECK(!stages_.empty(), kName,
             "update(): no unscale_() or step() since the last update(), so there is no inf/NaN check to act on");
  bool found_inf = false;
  for (const auto& [opt, st] : stages_) found_inf = found_inf || st.found_inf;
  stages_.clear();
  scaled_ = false;
  if (found_inf) {
    // A run that keeps producing inf/NaN would halve S toward 0, past the point where any step can
    // run again (and to a state dict that loads nowhere): S stops at kMinScale.
    scale_ = std::max(scale_ * options_.backoff_factor(), kMinScale);
    growth_tracker_ = 0;
    return;
  }
  if (++growth_tracker_ < options_.growth_interval()) return;
  growth_tracker_ = 0;
  // At the top of the double range S stays put rather than becoming inf.
  if (std::isfinite(scale_ * options_.growth_factor())) scale_ *= options_.growth_factor();
}

void GradScaler::update(double new_scale) {
  if (!is_enabled()) return;
  check_scale(new_scale, "update(new_scale)");
  scale_ = new_scale;
  stages_.clear();
  scaled_ = false;
}

StateDict GradScaler::state_dict() const {
  StateDict sd;
  sd.scalars = {{"scale", scale_},
                {"growth_tracker", static_cast<double>(growth_tracker_)},
                {"growth_factor", options_.growth_factor()},
                {"backoff_factor", options_.backoff_factor()},
                {"growth_interval", static_cast<double>(options_.growth_interval())}};
  return sd;
}

void GradScaler::load_state_dict(const StateDict& sd) {
  const std::set<std::string> keys{"scale", "growth_tracker", "growth_factor", "backoff_factor", "growth_interval"};
  KILN_CHECK(sd.empty(), kName, "load_state_dict: expected scalars only, got {} tensors (first '{}')", sd.size(),
             sd.empty() ? "" : sd.keys().front());
  for (const auto& [k, v] : sd.scalars) KILN_CHECK(keys.count(k), kName, "load_state_dict: unexpected key '{}'", k);
  auto get = [&](const char* k) {
    auto it = sd.scalars.find(k);
    KILN_CHECK(it != sd.scalars.end(), kName, "load_state_dict: missing key '{}'", k);
    return it->second;
  };
  GradScalerOptions o = options_;
  o.growth_factor(get("growth_factor")).backoff_factor(get("backoff_factor"));
  const double interval = get("growth_interval"), tracker = get("growth_tracker"), s = get("scale");
  check_scale(s, "load_state_dict: scale");
  KILN_CHECK(interval == std::floor(interval) && interval >= 1 && interval < 9.0e15, kName,
             "load_state_dict: growth_interval must be an integer >= 1, got {}", interval);
  o.growth_interval(static_cast<std::int64_t>(interval));
  o.init_scale(s);
  check_options(o);  // also checks the scale (as init_scale)
  KILN_CHECK(tracker == std::floor(tracker) && tracker >= 0 && tracker < interval, kName,
             "load_state_dict: growth_tracker must be an integer in [0, growth_interval), got {}", tracker);
  o.init_scale(options_.init_scale());
  options_ = o;
  scale_ = s;
  growth_tracker_ = static_cast<std::int64_t>(tracker);
  stages_.clear();
  scaled_ = false;
}

}  // namespace kiln::amp
