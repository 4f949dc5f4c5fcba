// Autocast's thread-local state, its weight-cast cache and the cast every op applies at entry.
#include "autocast.hpp"

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "internal.hpp"

namespace kiln {
namespace {

constexpr unsigned bit(DeviceType d) { return 1u << static_cast<unsigned>(d); }

// A weight's cast, reusable while the weight is unchanged and its graph node can still run.
struct CachedCast {
  Tensor source;  // holds the weight, so its address is not reused while the entry lives
  std::uint64_t version;
  Tensor cast;
};
// Keyed also by grad mode: a cast made under NoGradGuard has no graph and must not serve a
// later differentiable use (nor the other way round).
using CacheKey = std::tuple<const TensorImpl*, DType, bool>;

// One live guard. The state is derived from the live guards rather than saved and restored by
// each, so guards ended out of creation order (held in optionals or on the heap) still leave
// the state of the guards that remain.
struct GuardEntry {
  const AutocastGuard* guard;
  DeviceType device;
  bool enabled;
  DType dtype;
};

struct State {
  unsigned enabled = 0;  // bit(DeviceType) per device type with autocast on
  DType dtype[2] = {kBFloat16, kBFloat16};
  std::vector<GuardEntry> guards;  // live guards, oldest first
  std::size_t base = 0;            // guards below it are suspended (AutocastSuspend)
  std::map<CacheKey, CachedCast> cache;

  // Per device type the newest live, unsuspended guard decides; the dtype is the newest enabling one's.
  void recompute() {
    enabled = 0;
    for (int d = 0; d < 2; ++d) {
      const auto dev = static_cast<DeviceType>(d);
      bool decided = false;
      dtype[d] = kBFloat16;
      for (auto it = guards.rbegin(); it != guards.rend(); ++it) {
        if (it->device != dev) continue;
        const bool active = static_cast<std::size_t>(guards.rend() - it) > base;
        if (!decided && active) {
          decided = true;
          if (it->enabled) enabled |= bit(dev);
        }
        if (it->enabled) {
          dtype[d] = it->dtype;
          break;
        }
      }
    }
  }
};
thread_local State g_state;

Tensor cached_cast(const Tensor& t, DType dtype) {
  CacheKey key{t.impl_ptr(), dtype, autograd::grad_enabled()};
  auto it = g_state.cache.find(key);
  if (it != g_state.cache.end()) {
    const CachedCast& c = it->second;
    const auto& fn = c.cast.grad_fn();
    // A backward without retain_graph frees the cast's node: make a fresh one for the next use.
    if (c.version == t.version() && !(fn && fn->released())) return c.cast;
  }
  Tensor cast = to(t, dtype);
  g_state.cache.insert_or_assign(key, CachedCast{t, t.version(), cast});
  return cast;
}

}  // namespace

AutocastGuard::AutocastGuard(DeviceType device, DType dtype, bool enabled) {
  const char* dev = device == DeviceType::CPU ? "cpu" : "cuda";
  if (enabled) {
    KILN_CHECK(is_reduced_float(dtype), "autocast",
               "dtype {} is not a low-precision type: autocast runs ops in bfloat16 or float16 (on {})",
               dtype_name(dtype), dev);
    KILN_CHECK(device != DeviceType::CUDA || cuda_is_available(), "autocast",
               "{} on cuda: no CUDA device (this kiln was built without the CUDA backend or sees no GPU)",
               dtype_name(dtype));
  }
  g_state.guards.push_back({this, device, enabled, dtype});
  g_state.recompute();
}

AutocastGuard::~AutocastGuard() {
  auto& gs = g_state.guards;
  for (std::size_t i = gs.size(); i-- > 0;)
    if (gs[i].guard == this) {
      gs.erase(gs.begin() + static_cast<std::ptrdiff_t>(i));
      if (i < g_state.base) --g_state.base;
      break;
    }
  g_state.recompute();
  if (gs.empty()) g_state.cache.clear();
}

bool is_autocast_enabled(DeviceType device) { return (g_state.enabled & bit(device)) != 0; }
DType autocast_dtype(DeviceType device) { return g_state.dtype[static_cast<int>(device)]; }
std::size_t autocast_cached_casts() { return g_state.cache.size(); }

DType autocast_input_dtype(const Tensor& t, AutocastPolicy policy) {
  const DType d = t.dtype();
  if (!(g_state.enabled & bit(t.device().type))) return d;
  if (policy == AutocastPolicy::Float32) return is_reduced_float(d) ? kFloat32 : d;
  // float64 keeps its precision; float32 and the other 16-bit type become the autocast dtype.
  return d == kFloat32 || is_reduced_float(d) ? g_state.dtype[static_cast<int>(t.device().type)] : d;
}

Tensor autocast_input(const Tensor& t, AutocastPolicy policy) {
  if (!t.defined()) return t;
  const DType d = autocast_input_dtype(t, policy);
  if (d == t.dtype()) return t;
  if (policy == AutocastPolicy::LowPrecision && t.requires_grad() && t.is_leaf()) return cached_cast(t, d);
  return to(t, d);
}

namespace detail {

bool autocast_active() { return g_state.enabled != 0; }

AutocastSuspend::AutocastSuspend() : saved_(g_state.base) {
  g_state.base = g_state.guards.size();
  g_state.recompute();
}
AutocastSuspend::~AutocastSuspend() {
  g_state.base = std::min(saved_, g_state.guards.size());
  g_state.recompute();
}

}  // namespace detail
}  // namespace kiln
