#pragma once
// Shared helpers for the nn::MultiHeadAttention suites.
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
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

/// A golden file written by tools/mha_goldens.py: `meta` values and named float64 tensors.
struct Golden {
  std::map<std::string, double> meta;
  std::map<std::string, Tensor> tensors;
  bool has(const std::string& n) const { return tensors.count(n) != 0; }
  const Tensor& at(const std::string& n) const {
    auto it = tensors.find(n);
    INFO("golden tensor '" << n << "'");
    REQUIRE(it != tensors.end());
    return it->second;
  }
  std::int64_t imeta(const std::string& k) const {
    auto it = meta.find(k);
    INFO("golden meta '" << k << "'");
    REQUIRE(it != meta.end());
    return static_cast<std::int64_t>(it->second);
  }
};

inline Golden load_golden(const std::string& file) {
  const std::string path = std::string(KILN_TEST_DATA) + "/" + file;
  std::ifstream in(path);
  INFO("golden file " << path);
  REQUIRE(in.good());
  Golden g;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string kind, name;
    ls >> kind >> name;
    if (kind == "meta") {
      std::string v;
      ls >> v;
      g.meta[name] = std::strtod(v.c_str(), nullptr);
    } else if (kind == "tensor") {
      std::int64_t nd = 0;
      ls >> nd;
      Shape s(static_cast<std::size_t>(nd));
      for (auto& d : s) ls >> d;
      std::string vals;
      std::getline(in, vals);
      std::istringstream vs(vals);
      std::vector<double> v;
      std::string tok;
      while (vs >> tok) v.push_back(std::strtod(tok.c_str(), nullptr));  // strtod reads inf/-inf
      std::int64_t n = 1;
      for (auto d : s) n *= d;
      REQUIRE(static_cast<std::int64_t>(v.size()) == n);
      g.tensors[name] = kiln::tensor(v, s);
    } else {
      INFO("line: " << line);
      REQUIRE(kind == "meta");  // an unknown line kind
    }
  }
  return g;
}

}  // namespace km
