// Random fills and dropout: core/math/random.hpp's draws (shared with the CUDA backend), 16 Philox
// blocks at a time (philox.hpp), split over threads; element i's value depends only on (seed,
// offset, i), never on the split or on the vector width.
#include "random.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../math/random.hpp"
#include "convert.hpp"
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

// Bernoulli's keep test u < a on the unit's integer bits: u = k * 2^-Bits exactly (Bits = 24 for
// 32-bit dtypes, 53 for 64-bit ones), so u < a exactly when k < ceil(a * 2^Bits); the integer
// compare vectorizes where the float-to-double one does not.
template <typename T>
struct KeepTest {
  static constexpr bool kWide = math::kRandomPerBlock<T> == 2;
  using U = std::conditional_t<kWide, std::uint64_t, std::uint32_t>;
  U thresh = 0;

  explicit KeepTest(double a) {
    const int bits = kWide ? 53 : 24;
    const double x = std::ldexp(a, bits), top = std::ldexp(1.0, bits);
    if (x > 0) thresh = static_cast<U>(x >= top ? top : std::ceil(x));  // NaN keeps nothing, like u < NaN
  }
  bool operator()(const std::uint32_t* e, int j) const {
    if constexpr (kWide) return ((static_cast<std::uint64_t>(e[2 * j]) << 32 | e[2 * j + 1]) >> 11) < thresh;
    else return (e[j] >> 8) < thresh;
  }
};

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
      const KeepTest<T> keep(s.a);
      for (int j = 0; j < m; ++j) o[j] = keep(e, j) ? on : off;
      break;
    }
  }
}

// Dropout of one group: mask[j] = on or off as the keep test says, out[j] = x[j] * mask[j] rounded
// as binary Mul rounds (16-bit types: in float32 through the bulk conversions, bit-identical to
// the scalar ones).
template <typename T>
void dropout_group(const KeepTest<T>& keep, T on, T off, const std::uint32_t* e, const T* x, T* mask, T* out, int m) {
  if constexpr (is_reduced_float_v<T>) {
    alignas(64) float xf[4 * kGroup];
    alignas(64) std::uint16_t mb[4 * kGroup];
    const float onf = static_cast<float>(on), offf = static_cast<float>(off);
    const std::uint16_t onb = on.bits(), offb = off.bits();
    load_float(x, xf, m);
    for (int j = 0; j < m; ++j) {
      const bool k = keep(e, j);
      mb[j] = k ? onb : offb;
      xf[j] *= k ? onf : offf;
    }
    std::memcpy(static_cast<void*>(mask), mb, sizeof(std::uint16_t) * static_cast<std::size_t>(m));
    store_float(xf, out, m);
  } else {
    for (int j = 0; j < m; ++j) {
      const T k = keep(e, j) ? on : off;
      mask[j] = k;
      out[j] = x[j] * k;
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
    const T* xp = static_cast<const T*>(x.raw_data());
    T* mp = static_cast<T*>(mask.raw_data());
    T* op = static_cast<T*>(out.raw_data());
    // The values random() gives: random_store's Bernoulli values.
    const T on = math::random_store<T>(spec, spec.b), off = math::random_store<T>(spec, 0.0);
    const KeepTest<T> keep(spec.a);
    parallel_range(math::random_blocks<T>(n), kGrain, [&](std::int64_t b0, std::int64_t b1) {
      for_groups<T>(spec, b0, b1, n, [&](const std::uint32_t* e, std::int64_t base, int m) {
        dropout_group<T>(keep, on, off, e, xp + base, mp + base, op + base, m);
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
