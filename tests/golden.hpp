#pragma once
// The one reader of the golden files under tests/data (written by tools/mha_goldens.py and
// tools/optim_goldens.py): `#` comment lines, `meta <name> <number>` lines, and
// `tensor <name> <ndim> <dims...>` lines followed by one line of row-major values.
//   kt::Golden g = kt::load_golden("optim/adam.txt");
//   std::int64_t steps = g.inum("steps");
//   const kiln::Tensor& w = g.at("w0");   // float64
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace kt {

/// A golden file: `meta` numbers and named float64 tensors. A missing name fails the test
/// case with the file and the name.
struct Golden {
  std::string file;
  std::map<std::string, double> meta;
  std::map<std::string, kiln::Tensor> tensors;

  bool has(const std::string& n) const { return tensors.count(n) != 0; }
  bool has_meta(const std::string& k) const { return meta.count(k) != 0; }
  double num(const std::string& k) const {
    auto it = meta.find(k);
    INFO("golden " << file << ": meta '" << k << "'");
    REQUIRE(it != meta.end());
    return it->second;
  }
  std::int64_t inum(const std::string& k) const { return static_cast<std::int64_t>(num(k)); }
  bool flag(const std::string& k) const { return num(k) != 0; }
  const kiln::Tensor& at(const std::string& n) const {
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

/// Reads tests/data/<file>.
inline Golden load_golden(const std::string& file) {
  const std::string path = std::string(KILN_TEST_DATA) + "/" + file;
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
      g.meta[name] = std::strtod(v.c_str(), nullptr);  // strtod reads inf / -inf / nan
    } else if (kind == "tensor") {
      std::int64_t nd = 0;
      ls >> nd;
      kiln::Shape s(static_cast<std::size_t>(nd));
      for (auto& d : s) ls >> d;
      std::string vals;
      std::getline(in, vals);
      std::istringstream vs(vals);
      std::vector<double> v;
      std::string tok;
      while (vs >> tok) v.push_back(std::strtod(tok.c_str(), nullptr));
      INFO("tensor " << name);
      REQUIRE(static_cast<std::int64_t>(v.size()) == kiln::numel_of(s));
      g.tensors[name] = kiln::tensor(v, s);
    } else {
      INFO("line: " << line);
      REQUIRE(kind == "meta");  // an unknown line kind
    }
  }
  return g;
}

}  // namespace kt
