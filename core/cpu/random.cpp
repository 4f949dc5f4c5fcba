// Random fills from Philox counters: element i uses counter offset + i / per_counter,
// so values are the same whatever the thread split.
#include <cmath>
#include <fmt/format.h>

#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {

void CpuBackend::random(const Tensor& out, const RandomSpec& spec) {
  const std::int64_t n = out.numel();
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    T* o = static_cast<T*>(out.raw_data());
    // Each Philox call yields 4 words: 4 float draws, 2 double draws.
    constexpr std::int64_t per = std::is_same_v<T, double> || std::is_same_v<T, std::int64_t> ? 2 : 4;
    const std::int64_t blocks = (n + per - 1) / per;
    parallel_range(blocks, 2048, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        auto w = philox4x32(spec.seed, spec.offset + static_cast<std::uint64_t>(blk));
        double u[4];
        if constexpr (per == 4) {
          for (int j = 0; j < 4; ++j) u[j] = uint_to_unit_float(w[j]);
        } else {
          u[0] = uint_to_unit_double(w[0], w[1]);
          u[1] = uint_to_unit_double(w[2], w[3]);
        }
        double v[4] = {0, 0, 0, 0};
        switch (spec.kind) {
          case RandomSpec::Uniform:
            for (int j = 0; j < per; ++j) v[j] = spec.a + (spec.b - spec.a) * u[j];
            break;
          case RandomSpec::Normal:
            // Box-Muller on pairs; 1 - u keeps the log argument in (0, 1].
            for (int j = 0; j < per; j += 2) {
              double r = std::sqrt(-2.0 * std::log(1.0 - u[j])), th = 6.283185307179586 * u[j + 1];
              v[j] = spec.a + spec.b * r * std::cos(th);
              v[j + 1] = spec.a + spec.b * r * std::sin(th);
            }
            break;
          case RandomSpec::Int: {
            double range = spec.b - spec.a;
            for (int j = 0; j < per; ++j) v[j] = spec.a + std::floor(u[j] * range);
            break;
          }
          case RandomSpec::Bernoulli:
            for (int j = 0; j < per; ++j) v[j] = u[j] < spec.a ? spec.b : 0.0;
            break;
        }
        std::int64_t base = blk * per;
        for (int j = 0; j < per && base + j < n; ++j) {
          if constexpr (std::is_same_v<T, float>) {
            float f = static_cast<float>(v[j]);
            // Rounding must not push a uniform draw onto its open upper bound.
            if (spec.kind == RandomSpec::Uniform && f >= static_cast<float>(spec.b)) f = std::nextafter(static_cast<float>(spec.b), -INFINITY);
            o[base + j] = f;
          } else if constexpr (std::is_same_v<T, bool>) {
            o[base + j] = v[j] != 0.0;
          } else {
            o[base + j] = static_cast<T>(v[j]);
          }
        }
      }
    });
  });
}

}  // namespace kiln::cpu
