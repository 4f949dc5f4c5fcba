#pragma once
// Shared helpers for the optimizer, scheduler and clipping suites: the golden-file loader
// (format of tools/optim_goldens.py) and the small problem the trajectories are computed on.
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

/// A golden file: `meta` numbers and named float64 tensors.
struct Golden {
  std::string file;
  std::map<std::string, double> meta;
  std::map<std::string, Tensor> tensors;

  bool has_meta(const std::string& k) const { return meta.count(k) != 0; }
  double num(const std::string& k) const {
    auto it = meta.find(k);
    INFO("golden " << file << ": meta '" << k << "'");
    REQUIRE(it != meta.end());
    return it->second;
  }
  std::int64_t inum(const std::string& k) const { return static_cast<std::int64_t>(num(k)); }
  bool flag(const std::string& k) const { return num(k) != 0; }
  const Tensor& at(const std::string& n) const {
    auto it = tensors.find(n);
    INFO("golden " << file << ": tensor '" << n << "'");
    REQUIRE(it != tensors.end());
    return it->second;
  }
  /// Case names: the distinct prefixes before `.<suffix>` of tensor names ending in `suffix`.
  std::vector<std::string> cases(const std::string& suffix) const {
    std::vector<std::string> out;
    const std::string tail = "." + suffix;
    for (const auto& [n, t] : tensors)
      if (n.size() > tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0)
        out.push_back(n.substr(0, n.size() - tail.size()));
    return out;
  }
};

inline Golden load_golden(const std::string& file) {
  const std::string path = std::string(KILN_TEST_DATA) + "/optim/" + file;
  std::ifstream in(path);
  INFO("golden file " << path);
  REQUIRE(in.good());
  Golden g;
  g.file = file;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string kind, name;
    ls >> kind >> name;
    if (kind == "meta") {
      std::string v;
      ls >> v;
      g.meta[name] = std::strtod(v.c_str(), nullptr);  // strtod reads inf
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
      while (vs >> tok) v.push_back(std::strtod(tok.c_str(), nullptr));
      std::int64_t n = 1;
      for (auto d : s) n *= d;
      INFO("tensor " << name);
      REQUIRE(static_cast<std::int64_t>(v.size()) == n);
      g.tensors[name] = kiln::tensor(v, s);
    } else {
      INFO("line: " << line);
      REQUIRE(kind == "meta");  // an unknown line kind
    }
  }
  return g;
}

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
