// Random fills and dropout: core/math/random.hpp's draws (shared with the CUDA backend), 16 Philox
// blocks at a time (philox.hpp), split over threads; element i's value depends only on (seed,
// offset, i), never on the split or on the vector width.
#include "random.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../math/elementwise.hpp"
#include "../math/random.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"
#include "philox.hpp"

namespace kiln::cpu {
namespace {

constexpr std::int64_t kGroup = 16;    // Philox blocks per philox16 call
constexpr std::int64_t kGrain = 2048;  // blocks per thread at least

// Calls f(e, base, m) for each group of blocks in [b0, b1): e holds the group's words in counter
// order, base is its first element and m its element count (clipped to n).
template <typename T, typename F>
void for_groups(const RandomSpec& s, std::int64_t b0, std::int64_t b1, std::int64_t n, F&& f) {
  constexpr std::int64_t per = math::kRandomPerBlock<T>;
  alignas(64) std::uint32_t e[4 * kGroup];
  for (std::int64_t blk = b0; blk < b1; blk += kGroup) {
    philox16_ordered(s.seed, s.offset + static_cast<std::uint64_t>(blk), e);
    const std::int64_t base = blk * per;
    f(e, base, static_cast<int>(std::min(std::min(kGroup, b1 - blk) * per, n - base)));
  }
}

// o[j] = element j of the group whose words are e, j < m (m is even except at a draw's end).
template <typename T>
void fill_group(const RandomSpec& s, const std::uint32_t* e, T* o, int m) {
  switch (s.kind) {
    case RandomSpec::Uniform:
      if constexpr (std::is_same_v<T, float>) {
        // random_store<float>'s bound check with nextafter hoisted, so the loop vectorizes.
        const float hi = static_cast<float>(s.b), below = std::nextafter(hi, -std::numeric_limits<float>::infinity());
        for (int j = 0; j < m; ++j) {
          const float f = static_cast<float>(math::random_uniform(s, math::random_unit<T>(e, j)));
          o[j] = f >= hi ? below : f;
        }
      } else {
        for (int j = 0; j < m; ++j)
          o[j] = math::random_store<T>(s, math::random_uniform(s, math::random_unit<T>(e, j)));
      }
      break;
    case RandomSpec::Normal:
      for (int j = 0; j < m; j += 2) {
        double v0, v1;
        math::random_normal(s, math::random_unit<T>(e, j), math::random_unit<T>(e, j + 1), v0, v1);
        o[j] = math::random_store<T>(s, v0);
        if (j + 1 < m) o[j + 1] = math::random_store<T>(s, v1);
      }
      break;
    case RandomSpec::Int:
      for (int j = 0; j < m; ++j) o[j] = math::random_store<T>(s, math::random_int(s, math::random_unit<T>(e, j)));
      break;
    case RandomSpec::Bernoulli: {
      const T on = math::random_store<T>(s, s.b), off = math::random_store<T>(s, 0.0);
      for (int j = 0; j < m; ++j) o[j] = math::random_unit<T>(e, j) < s.a ? on : off;
      break;
    }
  }
}

}  // namespace

void CpuBackend::random(const Tensor& out, const RandomSpec& spec) {
  const std::int64_t n = out.numel();
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    T* o = static_cast<T*>(out.raw_data());
    parallel_range(math::random_blocks<T>(n), kGrain, [&](std::int64_t b0, std::int64_t b1) {
      for_groups<T>(spec, b0, b1, n,
                    [&](const std::uint32_t* e, std::int64_t base, int m) { fill_group<T>(spec, e, o + base, m); });
    });
  });
}

void CpuBackend::dropout(const Tensor& x, const Tensor& mask, const Tensor& out, const RandomSpec& spec) {
  const std::int64_t n = out.numel();
  visit_float_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    using C = math::compute_t<T>;
    const T* xp = static_cast<const T*>(x.raw_data());
    T* mp = static_cast<T*>(mask.raw_data());
    T* op = static_cast<T*>(out.raw_data());
    // The values random() and binary Mul would give: on/off are random_store's Bernoulli values.
    const T on = math::random_store<T>(spec, spec.b), off = math::random_store<T>(spec, 0.0);
    parallel_range(math::random_blocks<T>(n), kGrain, [&](std::int64_t b0, std::int64_t b1) {
      for_groups<T>(spec, b0, b1, n, [&](const std::uint32_t* e, std::int64_t base, int m) {
        const T* xi = xp + base;
        T* mi = mp + base;
        T* oi = op + base;
        for (int j = 0; j < m; ++j) {
          const T k = math::random_unit<T>(e, j) < spec.a ? on : off;
          mi[j] = k;
          oi[j] = static_cast<T>(C(xi[j]) * C(k));
        }
      });
    });
  });
}

void random_scalar(const Tensor& out, const RandomSpec& spec) {
  const std::int64_t n = out.numel();
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    T* o = static_cast<T*>(out.raw_data());
    parallel_range(math::random_blocks<T>(n), kGrain, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) math::random_block<T>(spec, blk, o, n);
    });
  });
}

}  // namespace kiln::cpu
