#include "checkpoint.hpp"

// GCC 12 reports false -Wrestrict overlaps inside std::string's inlined copies here (its known
// bug 105329); the code only builds short keys.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <vector>

#include "../autograd/ops.hpp"
#include "../core/generator.hpp"
#include "../nn/module.hpp"
#include "safetensors.hpp"

namespace kiln::io {

namespace {

constexpr const char* kFormatKey = "kiln.checkpoint";
constexpr const char* kFormatVersion = "1";
constexpr const char* kStepKey = "kiln.step";
constexpr const char* kSectionKey = "kiln.section.";
constexpr const char* kGeneratorKey = "kiln.generator.";
constexpr const char* kUserKey = "user.";

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
std::string cat(std::string_view a, std::string_view b) {
  std::string s(a);
  s += b;
  return s;
}

// Shortest decimal that reads back to the same double (fmt's default), so state dicts
// survive the text round trip bit for bit; "inf", "-inf", "nan" for the rest.
std::string double_str(double v) { return fmt::format("{}", v); }

bool parse_double(const std::string& s, double& out) {
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && p == end && !s.empty();
}

template <typename I>
bool parse_int(std::string_view s, I& out) {
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && p == end && !s.empty();
}

void check_name(const std::string& name, const char* what) {
  if (name.empty() || name.find('.') != std::string::npos)
    throw_error("save_checkpoint", fmt::format("{} name '{}' must be non-empty and contain no '.'", what, name));
}

// One state dict stored under a prefix: tensors in the file, scalars in the metadata.
void put_section(const std::string& section, const StateDict& sd, NamedTensors& tensors,
                 std::map<std::string, std::string>& meta) {
  meta[cat(kSectionKey, section)] = "1";
  for (const auto& [k, t] : sd) tensors.emplace_back(section + "." + k, t);
  for (const auto& [k, v] : sd.scalars) meta[section + "." + k] = double_str(v);
}

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), file_(load_safetensors(path)) {
    auto it = file_.metadata.find(kFormatKey);
    if (it == file_.metadata.end()) fail("not a kiln training checkpoint (no 'kiln.checkpoint' metadata)");
    if (it->second != kFormatVersion)
      fail(fmt::format("checkpoint format version '{}' is not supported (this kiln reads version {})", it->second,
                       kFormatVersion));
    auto st = file_.metadata.find(kStepKey);
    if (st == file_.metadata.end() || !parse_int(st->second, info_.step))
      fail(st == file_.metadata.end() ? std::string("'kiln.step' is missing")
                                      : fmt::format("'kiln.step' is '{}', not an integer", st->second));
    if (info_.step < 0) fail(fmt::format("'kiln.step' is {}: a step count is never negative", info_.step));
    for (const auto& [k, v] : file_.metadata)
      if (starts_with(k, kUserKey)) info_.metadata.emplace(k.substr(5), v);
  }

  [[noreturn]] void fail(const std::string& msg) const {
    throw_error("load_checkpoint", fmt::format("{}: {}", path_, msg));
  }

  const CheckpointInfo& info() const { return info_; }

  StateDict section(const std::string& section) const {
    if (!file_.metadata.count(cat(kSectionKey, section)))
      fail(fmt::format("the checkpoint has no {} state (saved without one)", section));
    StateDict sd;
    const std::string prefix = section + ".";
    for (const auto& [k, t] : file_.tensors)
      if (starts_with(k, prefix)) sd.insert(k.substr(prefix.size()), t);
    for (const auto& [k, v] : file_.metadata) {
      if (!starts_with(k, prefix)) continue;
      double d;
      if (!parse_double(v, d)) fail(fmt::format("{} scalar '{}' is '{}', not a number", section, k, v));
      sd.scalars.emplace(k.substr(prefix.size()), d);
    }
    return sd;
  }

  StateDict model() const {
    if (!file_.metadata.count(cat(kSectionKey, "model"))) fail("the checkpoint has no model state");
    StateDict d;
    for (const auto& [k, t] : file_.tensors)
      if (starts_with(k, "model.")) d.insert(k.substr(6), t);
    return d;
  }

  std::pair<std::uint64_t, std::uint64_t> generator(const std::string& name) const {
    auto it = file_.metadata.find(cat(kGeneratorKey, name));
    if (it == file_.metadata.end()) {
      std::string have;
      for (const auto& [k, v] : file_.metadata)
        if (starts_with(k, kGeneratorKey)) have += fmt::format("{}'{}'", have.empty() ? "" : ", ", k.substr(15));
      fail(fmt::format("no state for generator '{}' (the checkpoint has {})", name, have.empty() ? "none" : have));
    }
    const std::string& v = it->second;
    auto space = v.find(' ');
    std::uint64_t seed = 0, offset = 0;
    if (space == std::string::npos || !parse_int(std::string_view(v).substr(0, space), seed) ||
        !parse_int(std::string_view(v).substr(space + 1), offset))
      fail(fmt::format("generator '{}' state is '{}', expected '<seed> <offset>'", name, v));
    return {seed, offset};
  }

 private:
  std::string path_;
  SafetensorsFile file_;
  CheckpointInfo info_;
};

}  // namespace

void save_checkpoint(const std::string& path, const TrainingState& state, std::int64_t step,
                     const std::map<std::string, std::string>& metadata) {
  if (step < 0) throw_error("save_checkpoint", fmt::format("step must be >= 0, got {}", step));
  NamedTensors tensors;
  std::map<std::string, std::string> meta;
  meta[kFormatKey] = kFormatVersion;
  meta[kStepKey] = std::to_string(step);
  if (state.model) {
    meta[cat(kSectionKey, "model")] = "1";
    for (const auto& [k, t] : state.model->state_dict()) tensors.emplace_back("model." + k, t);
  }
  if (state.optimizer) put_section("optimizer", state.optimizer.state_dict(), tensors, meta);
  if (state.scheduler) put_section("scheduler", state.scheduler.state_dict(), tensors, meta);
  for (const auto& [name, ref] : state.extras) {
    check_name(name, "extra");
    if (!ref) throw_error("save_checkpoint", fmt::format("extra '{}' is empty", name));
    put_section("extra." + name, ref.state_dict(), tensors, meta);
  }
  for (const auto& [name, gen] : state.generators) {
    check_name(name, "generator");
    if (!gen) throw_error("save_checkpoint", fmt::format("generator '{}' is null", name));
    meta[cat(kGeneratorKey, name)] = fmt::format("{} {}", gen->seed(), gen->offset());
  }
  for (const auto& [k, v] : metadata) meta[cat(kUserKey, k)] = v;
  save_safetensors(path, tensors, meta);
}

namespace {
// check_finite: the first NaN or Inf among a part's floating tensors, as "[load_checkpoint] ...".
void check_finite_part(const Reader& r, const std::string& part, const StateDict& sd) {
  for (const auto& [k, t] : sd) {
    if (!t.is_floating_point() || all(isfinite(t)).item<bool>()) continue;
    const std::vector<bool> ok = isfinite(t).to_vector<bool>();
    const auto at = static_cast<std::size_t>(std::find(ok.begin(), ok.end(), false) - ok.begin());
    r.fail(fmt::format("tensor '{}.{}' (shape {}) holds {} at flat index {} (check_finite)", part, k,
                       shape_str(t.shape()), select(reshape(t, {-1}), 0, static_cast<std::int64_t>(at)).item<double>(),
                       at));
  }
}
}  // namespace

CheckpointInfo load_checkpoint(const std::string& path, const TrainingState& state, bool strict_model) {
  return load_checkpoint(path, state, LoadCheckpointOptions().strict_model(strict_model));
}

CheckpointInfo load_checkpoint(const std::string& path, const TrainingState& state,
                               const LoadCheckpointOptions& options) {
  const bool strict_model = options.strict_model();
  Reader r(path);
  // Gather and parse everything first: a missing part or a bad entry changes nothing.
  StateDict model;
  if (state.model) model = r.model();
  StateDict opt, sched;
  if (state.optimizer) opt = r.section("optimizer");
  if (state.scheduler) sched = r.section("scheduler");
  std::vector<std::pair<const StatefulRef*, StateDict>> extras;
  std::vector<std::string> extra_parts;  // "extra 'scaler'": errors name the extra
  for (const auto& [name, ref] : state.extras) {
    if (!ref) r.fail(fmt::format("extra '{}' is empty", name));
    extras.emplace_back(&ref, r.section("extra." + name));
    extra_parts.push_back(fmt::format("extra '{}'", name));
  }
  std::vector<std::pair<Generator*, std::pair<std::uint64_t, std::uint64_t>>> gens;
  for (const auto& [name, gen] : state.generators) {
    if (!gen) r.fail(fmt::format("generator '{}' is null", name));
    gens.emplace_back(gen, r.generator(name));
  }

  if (options.check_finite()) {
    check_finite_part(r, "model", model);
    check_finite_part(r, "optimizer", opt);
    check_finite_part(r, "scheduler", sched);
    auto extra = extras.begin();  // built in the order of state.extras
    for (const auto& [name, ref] : state.extras) check_finite_part(r, "extra." + name, (extra++)->second);
  }
  auto load_part = [&](const char* what, auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      r.fail(fmt::format("{}: {}", what, e.what()));
    }
  };
  if (state.model) load_part("model", [&] { state.model->load_state_dict(model, strict_model); });
  if (state.optimizer) load_part("optimizer", [&] { state.optimizer.load_state_dict(opt); });
  if (state.scheduler) load_part("scheduler", [&] { state.scheduler.load_state_dict(sched); });
  for (std::size_t i = 0; i < extras.size(); ++i)
    load_part(extra_parts[i].c_str(), [&] { extras[i].first->load_state_dict(extras[i].second); });
  for (const auto& [gen, s] : gens) gen->set_state(s.first, s.second);
  return r.info();
}

CheckpointInfo read_checkpoint_info(const std::string& path) { return Reader(path).info(); }

}  // namespace kiln::io
