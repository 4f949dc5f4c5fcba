#pragma once
// Host-side references for the elementwise and reduction suites: tensors from host
// values, NumPy broadcasting of flat indices, and reductions over any dims, all computed
// with plain std:: math so expectations never come from the kiln op under test.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "test_util.hpp"

namespace ew {

using kiln::Shape;
using kiln::Tensor;
using Vec = std::vector<double>;

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

/// kt::expect_values that also accepts infinities (an expected +-inf must match exactly).
inline void expect_values(const Tensor& t, const Vec& expect, double atol = 1e-6, double rtol = 1e-6) {
  auto v = t.to_vector<double>();
  REQUIRE(v.size() == expect.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    INFO("element " << i << ": got " << v[i] << ", expected " << expect[i]);
    if (std::isnan(expect[i])) CHECK(std::isnan(v[i]));
    else if (std::isinf(expect[i])) CHECK(v[i] == expect[i]);
    else CHECK(std::abs(v[i] - expect[i]) <= atol + rtol * std::abs(expect[i]));
  }
}

/// A contiguous tensor of `dtype` holding `v` with `shape` ({} = 0-D, v must then hold one value).
inline Tensor make(const Vec& v, const Shape& shape, kiln::DType dtype = kiln::kFloat64) {
  REQUIRE(static_cast<std::int64_t>(v.size()) == kiln::numel_of(shape));
  Tensor t = kiln::tensor(v, Shape{static_cast<std::int64_t>(v.size())}).to(dtype);
  return t.reshape(shape).contiguous();
}

/// A float64 leaf requiring grad holding `v`; non-contiguous (every other element of a wider
/// buffer) when asked.
inline Tensor leaf_of(const Vec& v, const Shape& shape, bool noncontig = false) {
  Tensor src = make(v, shape);
  if (!noncontig) return src.clone().detach().requires_grad_();
  Shape wide = shape;
  wide.push_back(2);
  Tensor buf = kiln::zeros(wide, kiln::kFloat64);
  Tensor view = buf.select(-1, 1);
  view.copy_(src);
  if (view.numel() > 1) REQUIRE_FALSE(view.is_contiguous());
  return view.requires_grad_();
}

/// Seeded normal values, each passed through `f`.
inline Vec randvals(const Shape& shape, std::uint64_t seed, const std::function<double(double)>& f = nullptr) {
  kiln::Generator g(seed);
  Vec v = kiln::randn(shape, kiln::kFloat64, &g).to_vector<double>();
  if (f)
    for (auto& x : v) x = f(x);
  return v;
}

// Common input domains (keep gradchecks away from kinks and poles).
inline double positive(double x) { return std::abs(x) + 0.3; }
inline double away_from_zero(double x) { return x < 0 ? x - 0.2 : x + 0.2; }

// Moves x at least 0.05 away from the clamp bounds the unary suite uses.
inline double off_bounds_for_tests(double x) {
  for (double b : {-0.5, 0.7, 0.25, -0.25})
    if (std::abs(x - b) < 0.05) return b + 0.1;
  return x;
}

inline Vec map(const Vec& v, const std::function<double(double)>& f) {
  Vec out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = f(v[i]);
  return out;
}

/// Values rounded through float32 (what a float32 tensor holds).
inline Vec as_f32(const Vec& v) {
  return map(v, [](double x) { return double(static_cast<float>(x)); });
}

/// NumPy broadcast of two shapes (test-side reimplementation).
inline Shape bshape(const Shape& a, const Shape& b) {
  std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    std::int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// Flat index into a tensor of `in` shape that element `flat` of the broadcast `out` shape reads.
inline std::int64_t bindex(std::int64_t flat, const Shape& out, const Shape& in) {
  std::int64_t idx = 0, mul = 1;
  std::size_t lead = out.size() - in.size();
  for (std::size_t d = out.size(); d-- > 0;) {
    std::int64_t i = flat % out[d];
    flat /= out[d];
    if (d >= lead) {
      std::int64_t s = in[d - lead];
      if (s != 1) idx += i * mul;
      mul *= s;
    }
  }
  return idx;
}

/// f applied elementwise over the broadcast of (a, sa) and (b, sb).
inline Vec host_binary(const Vec& a, const Shape& sa, const Vec& b, const Shape& sb,
                       const std::function<double(double, double)>& f) {
  Shape so = bshape(sa, sb);
  std::int64_t n = kiln::numel_of(so);
  Vec out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[bindex(i, so, sa)], b[bindex(i, so, sb)]);
  return out;
}

/// Reduces (v, shape) over `dims` (already non-negative; empty = all) with `f` applied to
/// the list of reduced values of each output, outputs in row-major order of the kept dims.
inline Vec host_reduce(const Vec& v, const Shape& shape, std::vector<std::int64_t> dims,
                       const std::function<double(const Vec&)>& f) {
  std::int64_t nd = static_cast<std::int64_t>(shape.size());
  if (dims.empty())
    for (std::int64_t d = 0; d < nd; ++d) dims.push_back(d);
  for (auto& d : dims)
    if (d < 0) d += nd;
  std::vector<bool> red(shape.size(), false);
  for (auto d : dims) red[d] = true;
  std::int64_t nout = 1;
  for (std::int64_t d = 0; d < nd; ++d)
    if (!red[d]) nout *= shape[d];
  std::vector<Vec> buckets(static_cast<std::size_t>(nout));
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(v.size()); ++i) {
    std::int64_t rem = i, o = 0, mul = 1;
    for (std::int64_t d = nd - 1; d >= 0; --d) {
      std::int64_t k = rem % shape[d];
      rem /= shape[d];
      if (!red[d]) {
        o += k * mul;
        mul *= shape[d];
      }
    }
    buckets[o].push_back(v[i]);
  }
  Vec out;
  for (auto& b : buckets) out.push_back(f(b));
  return out;
}

/// Shape after reducing `dims` (empty = all) of `shape`.
inline Shape reduced_shape(const Shape& shape, std::vector<std::int64_t> dims, bool keepdim) {
  std::int64_t nd = static_cast<std::int64_t>(shape.size());
  if (dims.empty())
    for (std::int64_t d = 0; d < nd; ++d) dims.push_back(d);
  for (auto& d : dims)
    if (d < 0) d += nd;
  Shape out;
  for (std::int64_t d = 0; d < nd; ++d) {
    bool r = std::find(dims.begin(), dims.end(), d) != dims.end();
    if (!r) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// Host reducers.
inline double r_sum(const Vec& b) {
  double s = 0;
  for (double x : b) s += x;
  return s;
}
inline double r_mean(const Vec& b) { return b.empty() ? kNaN : r_sum(b) / double(b.size()); }
inline std::function<double(const Vec&)> r_var(double correction) {
  return [correction](const Vec& b) {
    double m = r_mean(b), s = 0;
    for (double x : b) s += (x - m) * (x - m);
    return s / std::max(0.0, double(b.size()) - correction);
  };
}
inline double r_max(const Vec& b) {
  double m = -kInf;
  for (double x : b) {
    if (std::isnan(x)) return kNaN;
    m = std::max(m, x);
  }
  return m;
}
inline double r_min(const Vec& b) {
  double m = kInf;
  for (double x : b) {
    if (std::isnan(x)) return kNaN;
    m = std::min(m, x);
  }
  return m;
}
inline double r_logsumexp(const Vec& b) {
  double m = r_max(b);
  if (std::isinf(m)) return m;  // all -inf -> -inf; any +inf -> +inf
  double s = 0;
  for (double x : b) s += std::exp(x - m);
  return m + std::log(s);
}

/// Gradient of `out.sum()` (or of out against `g`) with respect to `x`, via backward.
inline Tensor grad_of(const Tensor& out, const Tensor& x) {
  Tensor s = out.numel() == 1 && out.dim() == 0 ? out : kiln::sum(out);
  s.backward();
  return x.grad();
}

}  // namespace ew
