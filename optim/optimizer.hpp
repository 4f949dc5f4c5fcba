#pragma once
/// kiln::optim::Optimizer — the base of every optimizer, following the PyTorch C++ frontend:
/// an Options struct with chained setters gives the defaults, parameters come in groups whose
/// own options override them, state lives per parameter and is created on the first step.
///
///   optim::Adam opt(net->parameters(), optim::AdamOptions(1e-3).weight_decay(0.01));
///   for (...) {
///     opt.zero_grad();
///     loss.backward();
///     opt.step();                           // under NoGradGuard; one fused pass per parameter
///   }
///   // per-group options: no weight decay on biases
///   optim::AdamW opt2({optim::ParamGroup(weights), optim::ParamGroup(biases,
///   optim::AdamWOptions(1e-3).weight_decay(0))},
///                     optim::AdamWOptions(1e-3));
///   auto sd = opt.state_dict();             // exact: options, per-parameter buffers, step counters
///
/// A new optimizer derives from OptimizerBase<It, ItOptions> (options from OptionsBase) and
/// writes its update rule once in the shape fused.hpp describes; see sgd.hpp for the smallest.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/arg.hpp"
#include "../core/state_dict.hpp"
#include "../core/tensor.hpp"
#include "fused.hpp"

namespace kiln::optim {

/// Called once per hyper-parameter with its name and value (bools travel as 0/1); used to save,
/// load and print options generically.
using OptionFieldFn = std::function<void(const char* name, double& value)>;

/// The options of one optimizer (SGDOptions, AdamOptions, ...). Every option kind knows its lr,
/// how to copy itself and how to list its fields.
class OptimizerOptions {
 public:
  virtual ~OptimizerOptions() = default;
  virtual std::unique_ptr<OptimizerOptions> clone() const = 0;
  virtual double get_lr() const = 0;
  virtual void set_lr(double lr) = 0;
  /// Visits every field (reads and may write them).
  virtual void fields(const OptionFieldFn& f) = 0;
  /// "SGDOptions", "AdamOptions", ...
  virtual const char* kind() const = 0;
};

/// A set of parameters that share options. Without options the optimizer's defaults apply
/// (copied when the group joins the optimizer); with options they replace the defaults
/// for this group.
class ParamGroup {
 public:
  ParamGroup(std::vector<Tensor> params);  // NOLINT: implicit, so `{w, b}` works as a group
  ParamGroup(std::vector<Tensor> params, const OptimizerOptions& options);
  ParamGroup(std::vector<Tensor> params, std::unique_ptr<OptimizerOptions> options);
  ParamGroup(const ParamGroup& o);
  ParamGroup& operator=(const ParamGroup& o);
  ParamGroup(ParamGroup&&) noexcept = default;
  ParamGroup& operator=(ParamGroup&&) noexcept = default;
  ~ParamGroup();

  std::vector<Tensor>& params() { return params_; }
  const std::vector<Tensor>& params() const { return params_; }
  bool has_options() const { return options_ != nullptr; }
  /// Throws if the group has no options yet (a group inside an optimizer always has).
  OptimizerOptions& options();
  const OptimizerOptions& options() const;
  void set_options(std::unique_ptr<OptimizerOptions> options) { options_ = std::move(options); }
  /// The options as their concrete type: `group.options_as<AdamOptions>().betas()`.
  template <typename O>
  O& options_as();
  template <typename O>
  const O& options_as() const;

 private:
  std::vector<Tensor> params_;
  std::unique_ptr<OptimizerOptions> options_;
};

/// Per-parameter state: a step counter and up to three buffers (named by the optimizer). For a
/// bfloat16/float16 parameter the buffers are float32, and `master` is its float32 master copy
/// (with master weights on), valid while the parameter's version is `master_version`.
struct ParamState {
  std::int64_t step = 0;
  Tensor buffers[3];
  Tensor master;
  std::uint64_t master_version = 0;
};

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// One update of every parameter that has a gradient (others are skipped), under NoGradGuard.
  /// A bfloat16/float16 parameter is updated in float32 (gradient upcast, float32 state) and
  /// rounded back to its dtype.
  void step();
  /// With master weights (the default) a bfloat16/float16 parameter has a float32 master copy
  /// that the updates accumulate into, so steps smaller than the parameter's rounding step are
  /// not lost; the parameter holds the master rounded. Off: each step starts from the rounded
  /// parameter (2 bytes per element less). A parameter written by something else (a model
  /// load_state_dict) is re-read into the master. state_dict() keeps the masters ("state.<i>.master").
  ///   model->to(kBFloat16);
  ///   optim::AdamW opt(model->parameters(), optim::AdamWOptions(3e-4));   // float32 masters
  Optimizer& master_weights(bool on);
  bool master_weights() const { return master_weights_; }
  /// Clears gradients: drops them (set_to_none) or zeroes them in place.
  void zero_grad(bool set_to_none = true);

  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  /// Adds a group (options checked; defaults copied in when it has none).
  void add_param_group(ParamGroup group);
  /// Every parameter, in group order.
  std::vector<Tensor> parameters() const;

  double lr(std::size_t group = 0) const;
  void set_lr(double lr, std::size_t group = 0);
  const OptimizerOptions& defaults() const { return *defaults_; }
  /// "SGD", "Adam", ...: the prefix of this optimizer's error messages.
  const char* name() const { return name_; }

  /// A snapshot (tensors are copies): "group.<g>.<option>" and "group.<g>.num_params" scalars,
  /// "state.<i>.step" scalars and "state.<i>.<buffer>" tensors, where i counts parameters
  /// across groups in order. Parameters not stepped yet have no state entries.
  StateDict state_dict() const;
  /// Restores options and state saved by state_dict() of an optimizer over parameters of the
  /// same shapes in the same group layout. Every entry is checked; the state is copied.
  void load_state_dict(const StateDict& sd);

  /// The state of parameter p (null if it has none yet).
  const ParamState* state(const Tensor& p) const;

 protected:
  Optimizer(const char* name, std::unique_ptr<OptimizerOptions> defaults);
  /// Throws kiln::Error("[<name>] ...") if options are the wrong kind or out of range.
  virtual void validate(const OptimizerOptions& o) const = 0;
  /// Names of the buffer slots (empty name: unused slot), for state dicts.
  virtual std::vector<std::string> buffer_names() const = 0;
  /// Updates one parameter (contiguous or not) from its gradient (same shape and dtype).
  virtual void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) = 0;
  /// Runs the fused kernel of the parameter's device over t = {param, grad, state...} (state
  /// contiguous, from state_buffer), taking non-contiguous parameters and gradients and
  /// gradients of another dtype through contiguous copies.
  template <typename S>
  void run_update(const UpdateKernels<S>& kernels, const S& step, UpdateTensors t) const {
    const Tensor param = t[0];
    prepare_update(t);
    if (param.numel() > 0) {
      auto kernel = param.device().is_cuda() ? kernels.cuda : kernels.cpu;
      if (!kernel) no_kernel(param);
      kernel(step, t);
    }
    finish_update(param, t[0]);
  }
  /// A zero-filled state buffer like p (contiguous, same device and dtype).
  static Tensor state_buffer(const Tensor& p, double value = 0);
  /// The options as O, or "[<name>] param group options are XOptions, expected O".
  template <typename O>
  const O& options_cast(const OptimizerOptions& o) const {
    auto* p = dynamic_cast<const O*>(&o);
    if (!p) wrong_options(o, O::kKind);
    return *p;
  }
  /// Derived constructors call this once their vtable is live (options are validated).
  void init_groups(std::vector<ParamGroup> groups);

 private:
  void check_params(const std::vector<Tensor>& params, std::size_t group_index) const;
  [[noreturn]] void wrong_options(const OptimizerOptions& o, const char* expected) const;
  void prepare_update(UpdateTensors& t) const;
  static void finish_update(Tensor param, const Tensor& updated);
  [[noreturn]] void no_kernel(const Tensor& param) const;

  const char* name_;
  std::unique_ptr<OptimizerOptions> defaults_;
  std::vector<ParamGroup> groups_;
  void update_low_precision(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st);

  std::unordered_map<const TensorImpl*, ParamState> state_;
  bool master_weights_ = true;
};

using Betas = std::pair<double, double>;

/// Passes an option through an OptionFieldFn: doubles as they are, bools as 0/1, betas as
/// "beta1" and "beta2" (the names state dicts use).
inline void field(const OptionFieldFn& f, const char* name, double& v) { f(name, v); }
inline void field(const OptionFieldFn& f, const char* name, bool& b) {
  double v = b ? 1.0 : 0.0;
  f(name, v);
  b = v != 0;
}
inline void field(const OptionFieldFn& f, const char* /*betas*/, Betas& betas) {
  f("beta1", betas.first);
  f("beta2", betas.second);
}

/// The boilerplate of an options class: clone, kind (Derived::kKind) and the lr accessors
/// (Derived has KILN_ARG(double, lr)). Derived lists its fields once, in fields().
template <typename Derived>
class OptionsBase : public OptimizerOptions {
 public:
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<Derived>(derived()); }
  double get_lr() const override { return derived().lr(); }
  void set_lr(double lr) override { static_cast<Derived&>(*this).lr(lr); }
  const char* kind() const override { return Derived::kKind; }

 private:
  const Derived& derived() const { return static_cast<const Derived&>(*this); }
};

/// Reports an invalid option: "[<optimizer>] invalid <what>: <value> (<requirement>)".
class OptionCheck {
 public:
  explicit OptionCheck(const char* optimizer) : optimizer_(optimizer) {}
  void operator()(bool ok, const char* what, double value, const char* requirement) const;

 private:
  const char* optimizer_;
};

/// The boilerplate of an optimizer: its two constructors (a parameter list or groups, with
/// defaults), option checks and buffer names. Derived provides
///   static constexpr const char* kName;                 // "SGD": error prefix
///   static std::vector<std::string> buffers();          // state slot names ("" = unused)
///   static void check(const Options&, const OptionCheck&);
///   void update_param(const Options&, const Tensor& param, const Tensor& grad, ParamState&);
template <typename Derived, typename Options>
class OptimizerBase : public Optimizer {
 public:
  OptimizerBase(std::vector<Tensor> params, Options defaults = {})
      : OptimizerBase(std::vector<ParamGroup>{ParamGroup(std::move(params))}, std::move(defaults)) {}
  OptimizerBase(std::vector<ParamGroup> groups, Options defaults = {}) : Optimizer(Derived::kName, defaults.clone()) {
    init_groups(std::move(groups));  // validate() below needs nothing of Derived but statics
  }

 protected:
  void validate(const OptimizerOptions& o) const override {
    Derived::check(options_cast<Options>(o), OptionCheck(name()));
  }
  std::vector<std::string> buffer_names() const override { return Derived::buffers(); }
  void update(const OptimizerOptions& o, const Tensor& param, const Tensor& grad, ParamState& st) override {
    static_cast<Derived*>(this)->update_param(static_cast<const Options&>(o), param, grad, st);
  }
};

template <typename O>
O& ParamGroup::options_as() {
  auto* o = dynamic_cast<O*>(&options());
  if (!o) throw_error("ParamGroup", std::string("options are ") + options().kind() + ", not the type asked for");
  return *o;
}

template <typename O>
const O& ParamGroup::options_as() const {
  return const_cast<ParamGroup*>(this)->options_as<O>();
}

}  // namespace kiln::optim
