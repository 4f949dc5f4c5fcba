#pragma once
// Vectorized math on contiguous runs, correct at the edges of the range.
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>

namespace kiln::cpu {

// Eigen's packet exp/log are wrong at the edges of the range (float64 exp(-inf) is 5.6e-309,
// float32 exp(88.5) is inf, log flushes subnormal inputs): elements outside the safe range
// are recomputed with std:: math.
template <typename T, typename Bad, typename F>
void fix_edges(T* o, const T* i, std::int64_t n, Bad bad, F f) {
  int any = 0;  // a branch-free scan first (vectorizes): edge values are rare
  for (std::int64_t k = 0; k < n; ++k) any |= int(bad(i[k]));
  if (!any) return;
  for (std::int64_t k = 0; k < n; ++k)
    if (bad(i[k])) o[k] = f(i[k]);
}

/// o[k] = exp(i[k]) for k < n, vectorized; o may equal i.
template <typename T>
void exp_run(T* o, const T* i, std::int64_t n) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  using L = std::numeric_limits<T>;
  // Below lo the result is subnormal or 0; above hi Eigen's argument clamp bites.
  const T lo = std::log(L::min()), hi = std::is_same_v<T, float> ? T(88) : T(709);
  if (o == i) {
    // In place: find the edge elements before they are overwritten.
    int any = 0;
    for (std::int64_t k = 0; k < n; ++k) any |= int((i[k] < lo) | (i[k] > hi));
    if (any) {
      for (std::int64_t k = 0; k < n; ++k) o[k] = std::exp(i[k]);
      return;
    }
    Eigen::Map<A>(o, n) = Eigen::Map<const A>(i, n).exp();
    return;
  }
  Eigen::Map<A>(o, n) = Eigen::Map<const A>(i, n).exp();
  fix_edges(
      o, i, n, [lo, hi](T v) { return (v < lo) | (v > hi); }, [](T v) { return std::exp(v); });
}

}  // namespace kiln::cpu
