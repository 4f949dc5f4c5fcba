#pragma once
// Shared helpers for the optimizer, scheduler and clipping suites: their golden files (read by
// tests/golden.hpp) and the small problem the trajectories are computed on.
#include "golden.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace ko {

using kiln::Shape;
using kiln::Tensor;
namespace optim = kiln::optim;

using kt::Golden;

/// The optimizer goldens: tests/data/optim/<file>.
inline Golden load_golden(const std::string& file) { return kt::load_golden("optim/" + file); }

/// Largest |a - b| / (atol + rtol * |b|) over all elements; <= 1 means "close". NaN -> inf.
inline double closeness(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-12) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return INFINITY;
    m = std::max(m, std::abs(x[i] - y[i]) / (atol + rtol * std::abs(y[i])));
  }
  return m;
}

/// Bitwise equality of two tensors' values.
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  for (std::size_t i = 0; i < x.size(); ++i)
    if (std::memcmp(&x[i], &y[i], sizeof(double)) != 0) return false;
  return true;
}

/// The golden problem: loss = sum(A * sin(w)) + 0.25 * sum((b * b - c)^2).
struct Problem {
  Tensor A, c, w, b;
  Tensor loss() const { return (A * kiln::sin(w)).sum() + ((b * b - c).pow(2.0)).sum() * 0.25; }
  void backward() const { loss().backward(); }
};

/// Fresh leaves w, b (float64 unless dt) at the golden start point.
inline Problem make_problem(const Golden& g, kiln::DType dt = kiln::kFloat64) {
  Problem p;
  p.A = g.at("A").to(dt);
  p.c = g.at("c").to(dt);
  p.w = g.at("w0").to(dt).clone().requires_grad_();
  p.b = g.at("b0").to(dt).clone().requires_grad_();
  return p;
}

}  // namespace ko
