#pragma once
// Shared helpers for the scaled_dot_product_attention suites.
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <kiln/nn/attention.hpp>
#include <limits>
#include <vector>

namespace ka {

using kiln::Shape;
using kiln::Tensor;
namespace F = kiln::nn::functional;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline Tensor rnd(const Shape& s, std::uint64_t seed, kiln::DType dt = kiln::kFloat64, double scale = 1.0) {
  kiln::Generator g(seed);
  Tensor t = kiln::randn(s, dt, &g);
  if (scale != 1.0) {
    kiln::NoGradGuard ng;
    t.mul_(scale);
  }
  return t;
}

// cond ? a : b as a `dt` tensor.
inline Tensor sel(const Tensor& cond, double a, double b, kiln::DType dt = kiln::kFloat64) {
  return kiln::where(cond, kiln::full({}, a, dt), kiln::full({}, b, dt));
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return kInf;
    m = std::max(m, std::abs(x[i] - y[i]));
  }
  return m;
}

inline bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

// Plain loops over (row-major, contiguous) host copies: out[b, h, t, :] for the decided semantics.
// mask: empty, or keep flags / additive values laid out as the full (B, H, T, S) logits.
struct HostCase {
  std::int64_t B, H, Hkv, T, S, Dk, Dv;
  double scale;
  bool causal;
  std::vector<double> q, k, v;
  std::vector<double> mask;  // full (B, H, T, S), may be empty
  bool bool_mask = false;
};

inline std::vector<double> host_sdpa(const HostCase& c) {
  std::vector<double> out(static_cast<std::size_t>(c.B * c.H * c.T * c.Dv), 0.0);
  const std::int64_t G = c.H / c.Hkv;
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t h = 0; h < c.H; ++h)
      for (std::int64_t t = 0; t < c.T; ++t) {
        std::vector<double> s(static_cast<std::size_t>(c.S));
        std::vector<bool> keep(static_cast<std::size_t>(c.S), true);
        const std::int64_t kh = h / G;
        for (std::int64_t j = 0; j < c.S; ++j) {
          double d = 0;
          for (std::int64_t x = 0; x < c.Dk; ++x)
            d += c.q[static_cast<std::size_t>(((b * c.H + h) * c.T + t) * c.Dk + x)] *
                 c.k[static_cast<std::size_t>(((b * c.Hkv + kh) * c.S + j) * c.Dk + x)];
          s[static_cast<std::size_t>(j)] = d * c.scale;
          if (!c.mask.empty()) {
            double m = c.mask[static_cast<std::size_t>(((b * c.H + h) * c.T + t) * c.S + j)];
            if (c.bool_mask) keep[static_cast<std::size_t>(j)] = m != 0;
            else s[static_cast<std::size_t>(j)] += m;
          }
          if (c.causal && j > c.S - c.T + t) keep[static_cast<std::size_t>(j)] = false;
          if (s[static_cast<std::size_t>(j)] == -kInf) keep[static_cast<std::size_t>(j)] = false;
        }
        double mx = -kInf;
        for (std::int64_t j = 0; j < c.S; ++j)
          if (keep[static_cast<std::size_t>(j)]) mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        if (mx == -kInf) continue;  // nothing to attend to: 0
        double sum = 0;
        for (std::int64_t j = 0; j < c.S; ++j)
          if (keep[static_cast<std::size_t>(j)]) sum += std::exp(s[static_cast<std::size_t>(j)] - mx);
        for (std::int64_t j = 0; j < c.S; ++j) {
          if (!keep[static_cast<std::size_t>(j)]) continue;
          double p = std::exp(s[static_cast<std::size_t>(j)] - mx) / sum;
          for (std::int64_t x = 0; x < c.Dv; ++x)
            out[static_cast<std::size_t>(((b * c.H + h) * c.T + t) * c.Dv + x)] +=
                p * c.v[static_cast<std::size_t>(((b * c.Hkv + kh) * c.S + j) * c.Dv + x)];
        }
      }
  return out;
}

}  // namespace ka
