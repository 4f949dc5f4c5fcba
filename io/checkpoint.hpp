#pragma once
/// Training checkpoints: the model, the optimizer, the learning-rate schedule, any other object
/// with a state dict, the step, random generators and your own metadata, in one safetensors
/// file written atomically (a crash mid-write leaves the previous checkpoint intact).
///
///   kiln::Generator dropout_gen(1);
///   optim::AdamW opt(model->parameters(), optim::AdamWOptions(3e-4));
///   optim::WarmupCosineLR sched(opt, 100, 5000);
///   io::TrainingState state{.model = model, .optimizer = opt, .scheduler = sched,
///                           .generators = {{"dropout", &dropout_gen}, {"default", &kiln::default_generator()}}};
///   io::save_checkpoint("ckpt.safetensors", state, step, {{"run", "baseline"}});
///   ...
///   io::CheckpointInfo info = io::load_checkpoint("ckpt.safetensors", state);   // in a new process
///   for (std::int64_t step = info.step; step < total; ++step) ...   // continues bit for bit
///
/// The file is plain safetensors (Python can read it): tensors "model.<name>", "optimizer.<key>",
/// "scheduler.<key>", "extra.<name>.<key>"; metadata "kiln.checkpoint" (format version),
/// "kiln.step", "kiln.section.<section>", "kiln.generator.<name>" ("<seed> <offset>"), state-dict
/// scalars under the section's prefix as shortest round-trip decimals (exact), and yours under
/// "user.<key>".
#include <concepts>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "../core/arg.hpp"
#include "../core/state_dict.hpp"
#include "../nn/module.hpp"

namespace kiln {
class Generator;
}  // namespace kiln

namespace kiln::io {

/// A non-owning handle to a module, made from whatever a program holds: a module holder
/// (`model`), a shared_ptr, a pointer (`model.get()`) or a reference (`*model`). Empty when
/// default-constructed or made from null or an empty holder.
class ModuleRef {
 public:
  ModuleRef() = default;
  ModuleRef(std::nullptr_t) {}                         // NOLINT: implicit
  ModuleRef(nn::Module* module) : module_(module) {}   // NOLINT: implicit
  ModuleRef(nn::Module& module) : module_(&module) {}  // NOLINT: implicit
  template <std::derived_from<nn::Module> M>
  ModuleRef(const std::shared_ptr<M>& module) : module_(module.get()) {}  // NOLINT: implicit
  template <typename H>
  requires nn::is_module_holder_v<H> ModuleRef(const H& holder)
      : module_(holder.is_empty() ? nullptr : holder.ptr().get()) {}  // NOLINT: implicit

  explicit operator bool() const { return module_ != nullptr; }
  nn::Module* get() const { return module_; }
  nn::Module* operator->() const { return module_; }

 private:
  nn::Module* module_ = nullptr;
};

class StatefulRef;

/// Anything with `StateDict state_dict() const` and `void load_state_dict(const StateDict&)`.
template <typename T>
concept HasStateDict =
    !std::is_same_v<std::remove_cv_t<T>, StatefulRef> && requires(T & t, const T& ct, const StateDict& sd) {
  { ct.state_dict() } -> std::same_as<StateDict>;
  t.load_state_dict(sd);
};

/// A non-owning handle to an object with a state dict: an Optimizer, an LRScheduler, a
/// ReduceLROnPlateau, or a class of your own. Empty when default-constructed or made from null.
class StatefulRef {
 public:
  StatefulRef() = default;
  StatefulRef(std::nullptr_t) {}  // NOLINT: implicit
  template <HasStateDict T>
  StatefulRef(T& obj)  // NOLINT: implicit, so `.optimizer = opt` works
      : obj_(&obj),
        save_([](const void* o) { return static_cast<const T*>(o)->state_dict(); }),
        load_([](void* o, const StateDict& sd) { static_cast<T*>(o)->load_state_dict(sd); }) {}
  template <HasStateDict T>
  StatefulRef(T* obj) : StatefulRef() {  // NOLINT: implicit
    if (obj) *this = StatefulRef(*obj);
  }

  explicit operator bool() const { return obj_ != nullptr; }
  StateDict state_dict() const {
    check();
    return save_(obj_);
  }
  void load_state_dict(const StateDict& sd) const {
    check();
    load_(obj_, sd);
  }

 private:
  void check() const {
    if (!obj_) throw_error("StatefulRef", "empty: it refers to no object");
  }
  void* obj_ = nullptr;
  StateDict (*save_)(const void*) = nullptr;
  void (*load_)(void*, const StateDict&) = nullptr;
};

/// What a checkpoint saves and restores; every part is optional. Names of extras and
/// generators must not contain '.'.
/// Every member has a default, so designated initializers may name any subset without
/// -Wmissing-field-initializers warnings.
struct TrainingState {
  ModuleRef model = {};
  StatefulRef optimizer = {};
  StatefulRef scheduler = {};
  /// Other objects with state dicts: a ReduceLROnPlateau next to a scheduler, an EMA, a data sampler...
  std::map<std::string, StatefulRef> extras = {};
  /// Generators by name; their (seed, offset) is saved and restored.
  std::map<std::string, Generator*> generators = {};
};

struct CheckpointInfo {
  std::int64_t step = 0;
  /// The user metadata given to save_checkpoint.
  std::map<std::string, std::string> metadata;
};

/// Writes `state`, `step` (>= 0) and `metadata` to `path` atomically (see save_safetensors).
void save_checkpoint(const std::string& path, const TrainingState& state, std::int64_t step,
                     const std::map<std::string, std::string>& metadata = {});

/// Options of load_checkpoint:
///   io::load_checkpoint(path, state, io::LoadCheckpointOptions().check_finite(true));
struct LoadCheckpointOptions {
  /// Check the model's keys strictly (as Module::load_state_dict's `strict`).
  KILN_ARG(bool, strict_model) = true;
  /// Refuse a checkpoint whose floating tensors among the parts `state` names hold NaN or Inf
  /// (a diverged run's weights), naming the first such tensor and element.
  KILN_ARG(bool, check_finite) = false;
};

/// Restores every part `state` names from `path` and returns the step and user metadata. Parts
/// the file has but `state` does not name are ignored (load a model alone from a training
/// checkpoint); a part `state` names that the file lacks is an error. The model's keys are
/// checked strictly unless `strict_model` is false. Missing parts and malformed entries are found
/// before anything changes; then each part loads all-or-nothing in the order model, optimizer,
/// scheduler, extras, generators, so a part rejected later (say an optimizer over different
/// parameters) leaves the parts before it loaded. Errors: "[load_checkpoint] <path>: ...".
/// The file's checksums are verified (see save_safetensors) and its fields validated: a negative
/// step, an optimizer state that lacks a buffer its group's other parameters have, and malformed
/// scalars or generator states are errors.
CheckpointInfo load_checkpoint(const std::string& path, const TrainingState& state,
                               const LoadCheckpointOptions& options);
CheckpointInfo load_checkpoint(const std::string& path, const TrainingState& state, bool strict_model = true);

/// Reads only the step and user metadata.
CheckpointInfo read_checkpoint_info(const std::string& path);

}  // namespace kiln::io
