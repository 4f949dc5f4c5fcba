#include "optimizer.hpp"

#include <fmt/format.h>

#include <cmath>
#include <set>

#include "../autograd/autocast.hpp"
#include "../autograd/grad_mode.hpp"

namespace kiln::optim {

// ---- ParamGroup ----

ParamGroup::ParamGroup(std::vector<Tensor> params) : params_(std::move(params)) {}
ParamGroup::ParamGroup(std::vector<Tensor> params, const OptimizerOptions& options)
    : params_(std::move(params)), options_(options.clone()) {}
ParamGroup::ParamGroup(std::vector<Tensor> params, std::unique_ptr<OptimizerOptions> options)
    : params_(std::move(params)), options_(std::move(options)) {}
ParamGroup::ParamGroup(const ParamGroup& o)
    : params_(o.params_), options_(o.options_ ? o.options_->clone() : nullptr) {}
ParamGroup& ParamGroup::operator=(const ParamGroup& o) {
  if (this != &o) {
    params_ = o.params_;
    options_ = o.options_ ? o.options_->clone() : nullptr;
  }
  return *this;
}
ParamGroup::~ParamGroup() = default;

OptimizerOptions& ParamGroup::options() {
  if (!options_)
    throw_error("ParamGroup", "this group has no options (it gets the defaults when added to an optimizer)");
  return *options_;
}
const OptimizerOptions& ParamGroup::options() const { return const_cast<ParamGroup*>(this)->options(); }

// ---- Optimizer ----

Optimizer::Optimizer(const char* name, std::unique_ptr<OptimizerOptions> defaults)
    : name_(name), defaults_(std::move(defaults)) {}

Optimizer::~Optimizer() = default;

void Optimizer::init_groups(std::vector<ParamGroup> groups) {
  validate(*defaults_);
  std::size_t total = 0;
  for (const auto& g : groups) total += g.params().size();
  KILN_CHECK(total > 0, name_, "got an empty parameter list");
  for (auto& g : groups) add_param_group(std::move(g));
}

void Optimizer::check_params(const std::vector<Tensor>& params, std::size_t gi) const {
  // Where each parameter already sits, to report both places of a duplicate.
  std::unordered_map<const TensorImpl*, std::pair<std::size_t, std::size_t>> seen;
  for (std::size_t g = 0; g < groups_.size(); ++g)
    for (std::size_t i = 0; i < groups_[g].params().size(); ++i)
      seen.emplace(groups_[g].params()[i].impl_ptr(), std::pair{g, i});
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    KILN_CHECK(p.defined(), name_, "parameter {} of group {} is an undefined tensor", i, gi);
    KILN_CHECK(p.is_floating_point(), name_,
               "parameter {} of group {} has dtype {}; only floating point tensors can be optimized", i, gi,
               dtype_name(p.dtype()));
    KILN_CHECK(p.is_leaf(), name_,
               "parameter {} of group {} (shape {}) is not a leaf tensor: it was computed by an op; optimize the leaf "
               "it came from",
               i, gi, shape_str(p.shape()));
    auto [it, fresh] = seen.emplace(p.impl_ptr(), std::pair{gi, i});
    KILN_CHECK(fresh, name_,
               "parameter {} of group {} (shape {}) appears more than once: it is also parameter {} of group {}", i, gi,
               shape_str(p.shape()), it->second.second, it->second.first);
  }
}

[[noreturn]] void Optimizer::wrong_options(const OptimizerOptions& o, const char* expected) const {
  throw_error(name_, fmt::format("param group options are {}, expected {}", o.kind(), expected));
}

void OptionCheck::operator()(bool ok, const char* what, double value, const char* requirement) const {
  if (!ok) throw_error(optimizer_, fmt::format("invalid {}: {} ({})", what, value, requirement));
}

void Optimizer::add_param_group(ParamGroup group) {
  check_params(group.params(), groups_.size());
  if (!group.has_options()) group.set_options(defaults_->clone());
  validate(group.options());
  groups_.push_back(std::move(group));
}

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (const auto& g : groups_) out.insert(out.end(), g.params().begin(), g.params().end());
  return out;
}

double Optimizer::lr(std::size_t group) const {
  KILN_CHECK(group < groups_.size(), name_, "lr: group {} out of range ({} groups)", group, groups_.size());
  return groups_[group].options().get_lr();
}

void Optimizer::set_lr(double lr, std::size_t group) {
  KILN_CHECK(group < groups_.size(), name_, "set_lr: group {} out of range ({} groups)", group, groups_.size());
  OptionCheck{name_}(lr >= 0, "learning rate", lr, "must be >= 0");
  groups_[group].options().set_lr(lr);
}

const ParamState* Optimizer::state(const Tensor& p) const {
  auto it = state_.find(p.impl_ptr());
  return it == state_.end() ? nullptr : &it->second;
}

Tensor Optimizer::state_buffer(const Tensor& p, double value) {
  return full(p.shape(), value, TensorOptions(is_reduced_float(p.dtype()) ? kFloat32 : p.dtype()).device(p.device()));
}

Optimizer& Optimizer::master_weights(bool on) {
  master_weights_ = on;
  if (!on)
    for (auto& [impl, st] : state_) st.master = Tensor();
  return *this;
}

// The update runs on a float32 copy: the master, or the parameter converted when there is no
// master or something else wrote the parameter since (its version moved).
void Optimizer::update_low_precision(const OptimizerOptions& o, const Tensor& p, const Tensor& g, ParamState& st) {
  Tensor master = st.master.defined() && st.master_version == p.version() ? st.master : p.to(kFloat32);
  update(o, master, g, st);
  Tensor target = p;
  target.copy_(master);  // rounds to nearest even
  if (master_weights_) {
    st.master = master;
    st.master_version = p.version();
  } else {
    st.master = Tensor();
  }
}

void Optimizer::zero_grad(bool set_to_none) {
  NoGradGuard ng;
  for (auto& g : groups_)
    for (auto& p : g.params()) {
      if (set_to_none) {
        p.set_grad(Tensor());
      } else if (Tensor gr = p.grad(); gr.defined()) {
        gr.zero_();
      }
    }
}

void Optimizer::step() {
  NoGradGuard ng;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const OptimizerOptions& o = groups_[gi].options();
    validate(o);  // options may have been edited through param_groups()
    const auto& params = groups_[gi].params();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Tensor& p = params[i];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      KILN_CHECK(g.shape() == p.shape() && g.device() == p.device(), name_,
                 "parameter {} of group {} has shape {} on {} but its gradient has shape {} on {}", i, gi,
                 shape_str(p.shape()), p.device().str(), shape_str(g.shape()), g.device().str());
      if (is_reduced_float(p.dtype())) update_low_precision(o, p, g, state_[p.impl_ptr()]);
      else update(o, p, g, state_[p.impl_ptr()]);
    }
  }
}

void Optimizer::prepare_update(UpdateTensors& t) const {
  // Rare layouts take a detour through contiguous copies; the usual case touches memory once.
  if (!t[0].is_contiguous()) t[0] = t[0].contiguous();
  if (t[1].dtype() != t[0].dtype()) t[1] = t[1].to(t[0].dtype());
  if (!t[1].is_contiguous()) t[1] = t[1].contiguous();
}

void Optimizer::finish_update(Tensor param, const Tensor& updated) {
  if (!updated.is_same(param)) param.copy_(updated);
  else param.bump_version();
}

[[noreturn]] void Optimizer::no_kernel(const Tensor& param) const {
  throw_error(name_, fmt::format("no fused update kernel for parameters on {}", param.device().str()));
}

// ---- state dicts ----

namespace {

std::string key(const char* kind, std::size_t i, const std::string& field) {
  return fmt::format("{}.{}.{}", kind, i, field);
}

// Buffers are created per group (its options decide which), so every parameter of a group
// that has a state has the same buffers: one missing is a damaged state dict, not a fresh start.
void check_same_buffers(const char* opt, const std::vector<std::pair<std::size_t, unsigned>>& have, std::size_t group,
                        const std::vector<std::string>& names) {
  unsigned all = 0;
  for (const auto& h : have) all |= h.second;
  for (const auto& [index, mask] : have)
    for (std::size_t k = 0; k < names.size() && k < 3; ++k)
      KILN_CHECK(!(all & ~mask & (1u << k)), opt,
                 "load_state_dict: '{}' is missing (parameter {} has a step, and other parameters of group {} have "
                 "this buffer)",
                 key("state", index, names[k]), index, group);
}

}  // namespace

StateDict Optimizer::state_dict() const {
  NoGradGuard ng;
  StateDict sd;
  const auto names = buffer_names();
  std::size_t index = 0;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    auto opts = groups_[gi].options().clone();
    opts->fields([&](const char* n, double& v) { sd.scalars[key("group", gi, n)] = v; });
    sd.scalars[key("group", gi, "num_params")] = static_cast<double>(groups_[gi].params().size());
    for (const Tensor& p : groups_[gi].params()) {
      auto it = state_.find(p.impl_ptr());
      if (it != state_.end()) {
        sd.scalars[key("state", index, "step")] = static_cast<double>(it->second.step);
        for (std::size_t k = 0; k < names.size() && k < 3; ++k)
          if (!names[k].empty() && it->second.buffers[k].defined())
            sd.insert(key("state", index, names[k]), it->second.buffers[k].clone());
        if (it->second.master.defined() && it->second.master_version == p.version())
          sd.insert(key("state", index, "master"), it->second.master.clone());
      }
      ++index;
    }
  }
  return sd;
}

void Optimizer::load_state_dict(const StateDict& sd) {
  NoGradGuard ng;
  const auto names = buffer_names();
  std::set<std::string> used;
  auto scalar = [&](const std::string& k) -> double {
    auto it = sd.scalars.find(k);
    KILN_CHECK(it != sd.scalars.end(), name_, "load_state_dict: missing scalar '{}'", k);
    used.insert(k);
    return it->second;
  };
  // Build everything first so a bad dict leaves this optimizer untouched.
  std::vector<std::unique_ptr<OptimizerOptions>> opts;
  std::unordered_map<const TensorImpl*, ParamState> state;
  std::size_t index = 0;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const auto& params = groups_[gi].params();
    const double n = scalar(key("group", gi, "num_params"));
    KILN_CHECK(n == static_cast<double>(params.size()), name_,
               "load_state_dict: group {} has {} parameters here but {} in the state dict", gi, params.size(), n);
    auto o = groups_[gi].options().clone();
    o->fields([&](const char* f, double& v) { v = scalar(key("group", gi, f)); });
    validate(*o);
    opts.push_back(std::move(o));
    std::vector<std::pair<std::size_t, unsigned>> have;  // (parameter index, bit k: buffer k present)
    for (const Tensor& p : params) {
      const std::string sk = key("state", index, "step");
      if (sd.scalars.count(sk)) {
        have.emplace_back(index, 0u);
        const double step = scalar(sk);
        KILN_CHECK(step >= 0 && step == std::floor(step) && step < 9007199254740992.0, name_,
                   "load_state_dict: '{}' is {}, not a step count", sk, step);
        ParamState st;
        st.step = static_cast<std::int64_t>(step);
        for (std::size_t k = 0; k < names.size() && k < 3; ++k) {
          if (names[k].empty()) continue;
          const std::string tk = key("state", index, names[k]);
          const Tensor* found = sd.find(tk);
          if (!found) continue;
          used.insert(tk);
          have.back().second |= 1u << k;
          const Tensor& t = *found;
          KILN_CHECK(t.defined() && t.is_floating_point(), name_, "load_state_dict: '{}' is not a float tensor", tk);
          KILN_CHECK(t.shape() == p.shape(), name_, "load_state_dict: '{}' has shape {} but parameter {} has shape {}",
                     tk, shape_str(t.shape()), index, shape_str(p.shape()));
          st.buffers[k] = state_buffer(p);
          st.buffers[k].copy_(t);
        }
        if (const Tensor* m = sd.find(key("state", index, "master"))) {
          const std::string mk = key("state", index, "master");
          used.insert(mk);
          KILN_CHECK(is_reduced_float(p.dtype()), name_,
                     "load_state_dict: '{}' is a float32 master copy but parameter {} is {} (masters are kept for "
                     "bfloat16/float16 parameters only: the state was saved for a low-precision model; convert "
                     "this one with to() first, or start the optimizer afresh)",
                     mk, index, dtype_name(p.dtype()));
          KILN_CHECK(m->defined() && m->is_floating_point() && m->shape() == p.shape(), name_,
                     "load_state_dict: '{}' must be a float tensor of shape {}", mk, shape_str(p.shape()));
          st.master = state_buffer(p);
          st.master.copy_(*m);
          st.master_version = p.version();
        }
        state.emplace(p.impl_ptr(), std::move(st));
      }
      ++index;
    }
    check_same_buffers(name_, have, gi, names);
  }
  for (const auto& [k, v] : sd.scalars)
    KILN_CHECK(used.count(k), name_,
               "load_state_dict: unexpected scalar '{}' (this optimizer has {} groups and {} parameters)", k,
               groups_.size(), index);
  for (const auto& [k, v] : sd)
    KILN_CHECK(used.count(k), name_,
               "load_state_dict: unexpected tensor '{}' (this optimizer has {} groups and {} parameters)", k,
               groups_.size(), index);
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) groups_[gi].set_options(std::move(opts[gi]));
  state_ = std::move(state);
}

}  // namespace kiln::optim
