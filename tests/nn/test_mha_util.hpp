#pragma once
// Shared helpers for the nn::MultiHeadAttention suites.
#include "golden.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace km {

using kiln::Shape;
using kiln::Tensor;
namespace nn = kiln::nn;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// A float64 tensor of N(0, scale^2) values from `seed` (not a leaf).
inline Tensor rnd(const Shape& s, std::uint64_t seed, double scale = 1.0, kiln::DType dt = kiln::kFloat64) {
  kiln::Generator g(seed);
  Tensor t = kiln::randn(s, dt, &g);
  if (scale != 1.0) {
    kiln::NoGradGuard ng;
    t.mul_(scale);
  }
  return t;
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

/// Largest |a - b| / (1 + |b|): absolute near 0, relative for large values.
inline double max_scaled_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return kInf;
    m = std::max(m, std::abs(x[i] - y[i]) / (1.0 + std::abs(y[i])));
  }
  return m;
}

inline bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

inline bool all_zero(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (v != 0.0) return false;
  return true;
}

/// Sets every parameter of `m` from N(0, scale^2) (seeded), e.g. to give biases non-zero values.
inline void randomize(nn::Module& m, std::uint64_t seed, double scale = 0.3) {
  kiln::NoGradGuard ng;
  kiln::Generator g(seed);
  for (Tensor p : m.parameters()) p.copy_(kiln::randn(p.shape(), p.dtype(), &g) * scale);
}

/// A module holder moved to float64 with N(0, 0.4^2) parameters (seeded) and its norms' weights
/// shifted to near 1, so that stacked layers stay well conditioned (transformer tests).
template <typename M>
M float64_randomized(M m, std::uint64_t seed = 3) {
  m->to(kiln::kFloat64);
  randomize(*m, seed, 0.4);
  kiln::NoGradGuard ng;
  for (auto& [n, p] : m->named_parameters())
    if (n.find("norm") != std::string::npos && n.find("weight") != std::string::npos) p.add_(kiln::ones_like(p));
  return m;
}

/// The goldens of tools/mha_goldens.py (tests/data/mha_*.txt), read by tests/golden.hpp.
using kt::Golden;
using kt::load_golden;

}  // namespace km
