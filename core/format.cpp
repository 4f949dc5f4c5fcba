#include "format.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace kiln {

namespace autograd {
const char* grad_fn_name(const Tensor& t);  // autograd/tensor_methods.cpp: the op that made t
}

namespace {

constexpr std::int64_t kSummarizeOver = 1000;  // NumPy's threshold
constexpr std::int64_t kEdgeItems = 3;

struct Printer {
  std::vector<double> fvals;
  std::vector<std::int64_t> ivals;
  const Shape* shape;
  Strides strides;  // contiguous strides of the host copy
  DType dtype;
  bool summarize;
  bool use_sci = false;
  int width = 0;
  int precision = 4;

  std::string elem(std::int64_t flat) const {
    if (dtype == kBool) return ivals[flat] ? " True" : "False";
    if (dtype == kInt64) return fmt::format("{:>{}}", ivals[flat], width);
    double v = fvals[flat];
    if (std::isnan(v)) return fmt::format("{:>{}}", "nan", width);
    if (std::isinf(v)) return fmt::format("{:>{}}", v > 0 ? "inf" : "-inf", width);
    if (use_sci) return fmt::format("{:>{}.{}e}", v, width, precision);
    return fmt::format("{:>{}.{}f}", v, width, precision);
  }

  std::vector<std::int64_t> shown(std::int64_t n) const {
    std::vector<std::int64_t> idx;
    if (summarize && n > 2 * kEdgeItems) {
      for (std::int64_t i = 0; i < kEdgeItems; ++i) idx.push_back(i);
      idx.push_back(-1);  // ellipsis
      for (std::int64_t i = n - kEdgeItems; i < n; ++i) idx.push_back(i);
    } else {
      for (std::int64_t i = 0; i < n; ++i) idx.push_back(i);
    }
    return idx;
  }

  void rec(std::string& out, std::size_t d, std::int64_t base, int indent) const {
    if (d == shape->size()) {
      out += elem(base);
      return;
    }
    out += '[';
    auto idx = shown((*shape)[d]);
    bool last = d + 1 == shape->size();
    for (std::size_t k = 0; k < idx.size(); ++k) {
      if (k) {
        out += ',';
        if (last) out += ' ';
        else {
          out += std::string(shape->size() - d - 1, '\n');
          out += std::string(indent + 1, ' ');
        }
      }
      if (idx[k] < 0) out += "...";
      else rec(out, d + 1, base + idx[k] * strides[d], indent + 1);
    }
    out += ']';
  }
};

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  Printer p;
  p.shape = &shape();
  p.dtype = dtype();
  p.summarize = numel() > kSummarizeOver;
  if (p.dtype == kBool || p.dtype == kInt64) p.ivals = to_vector<std::int64_t>();
  else p.fvals = to_vector<double>();
  p.strides = contiguous_strides(shape());
  // Only the printed elements decide the format, as NumPy does.
  std::vector<std::int64_t> flat;
  std::vector<std::int64_t> sizes = shape();
  std::function<void(std::size_t, std::int64_t)> collect = [&](std::size_t d, std::int64_t base) {
    if (d == sizes.size()) {
      flat.push_back(base);
      return;
    }
    for (auto i : p.shown(sizes[d]))
      if (i >= 0) collect(d + 1, base + i * p.strides[d]);
  };
  if (numel() > 0) collect(0, 0);
  if (p.dtype == kInt64) {
    for (auto f : flat) p.width = std::max<int>(p.width, static_cast<int>(fmt::format("{}", p.ivals[f]).size()));
  } else if (is_floating(p.dtype)) {
    double amax = 0, amin = INFINITY;
    for (auto f : flat)
      if (std::isfinite(p.fvals[f])) {
        amax = std::max(amax, std::abs(p.fvals[f]));
        if (p.fvals[f] != 0) amin = std::min(amin, std::abs(p.fvals[f]));
      }
    p.use_sci = amax >= 1e8 || (amin < 1e-4 && amin != INFINITY);
    for (auto f : flat) {
      std::string s = p.elem(f);
      p.width = std::max<int>(p.width, static_cast<int>(s.size()));
    }
    // second pass with the final width happens in rec()
    int w = 0;
    for (auto f : flat) w = std::max<int>(w, static_cast<int>(p.elem(f).size()));
    p.width = w;
  }
  std::string body;
  if (numel() == 0) body = "[]";
  else p.rec(body, 0, 0, 7);
  std::string extra;
  if (!is_leaf()) extra = fmt::format(", grad_fn=<{}>", autograd::grad_fn_name(*this));
  else if (requires_grad()) extra = ", requires_grad=true";
  return fmt::format("tensor({}, shape={}, dtype={}, device={}{})", body, shape_str(shape()), dtype_name(dtype()),
                     device().str(), extra);
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace kiln
