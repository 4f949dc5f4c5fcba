#pragma once
// Helpers for the CUDA suites: the skip line, CPU-vs-CUDA comparison, and the table of
// layouts (contiguous, transposed, sliced, broadcast) every op runs on. These suites compile
// in every build; without CUDA support or a GPU each case prints one line and passes.
#include "test_util.hpp"

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace kc {

using kiln::Device;
using kiln::Shape;
using kiln::Tensor;

/// True when a GPU can run the case; otherwise prints, once per process,
/// "CUDA tests skipped: <reason>" and the case returns early.
inline bool cuda_ready() {
  if (kiln::cuda::is_available()) return true;
  static bool said = false;
  if (!said) {
    std::printf("CUDA tests skipped: %s\n", kiln::cuda::unavailable_reason().c_str());
    std::fflush(stdout);
    said = true;
  }
  return false;
}

#define KILN_CUDA_OR_SKIP()        \
  do {                             \
    if (!kc::cuda_ready()) return; \
  } while (0)

inline const Device kGpu = Device::cuda(0);

/// The CUDA result equals the CPU result: same shape and dtype, |a - b| <= atol + rtol |b|,
/// NaN where the CPU has NaN, the same infinities.
inline void expect_match(const Tensor& gpu, const Tensor& cpu, double rtol = 1e-6, double atol = 1e-6,
                         const std::string& what = "") {
  INFO(what << ": shapes " << kiln::shape_str(gpu.shape()) << " vs " << kiln::shape_str(cpu.shape()));
  REQUIRE(gpu.defined());
  REQUIRE(cpu.defined());
  REQUIRE(gpu.shape() == cpu.shape());
  CHECK(gpu.dtype() == cpu.dtype());
  CHECK(gpu.device().is_cuda());
  const auto a = gpu.to_vector<double>(), b = cpu.to_vector<double>();
  std::size_t bad = 0, first = 0;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    bool ok;
    if (std::isnan(b[i])) ok = std::isnan(a[i]);
    else if (std::isinf(b[i])) ok = a[i] == b[i];
    else ok = std::abs(a[i] - b[i]) <= atol + rtol * std::abs(b[i]);
    if (!ok) {
      if (bad++ == 0) first = i;
      worst = std::max(worst, std::abs(a[i] - b[i]));
    }
  }
  INFO(what << ": " << bad << " of " << a.size() << " elements differ; first at " << first << ": cuda "
            << (a.empty() ? 0.0 : a[first]) << " vs cpu " << (b.empty() ? 0.0 : b[first]) << "; worst |diff| "
            << worst);
  CHECK(bad == 0);
}

/// Tolerances per dtype for results computed in a different order (float sums, libm vs CUDA math).
inline double rtol_for(kiln::DType dt) { return dt == kiln::kFloat64 ? 1e-12 : 2e-5; }
inline double atol_for(kiln::DType dt) { return dt == kiln::kFloat64 ? 1e-12 : 2e-5; }

/// A pair of identically laid out tensors: one on the CPU, one on the GPU.
struct Pair {
  Tensor cpu, gpu;
};

/// How an input is laid out in memory; `make` turns a contiguous base of `shape` (already on
/// its device) into a view of `shape` with that layout, the same way on both devices.
struct Layout {
  const char* name;
  std::function<Tensor(const Tensor& base_of_bigger, const Shape& shape)> view;
  std::function<Shape(const Shape& shape)> base_shape;  // the shape of the storage to allocate
};

inline std::vector<Layout> layouts() {
  std::vector<Layout> ls;
  ls.push_back({"contiguous", [](const Tensor& b, const Shape&) { return b; }, [](const Shape& s) { return s; }});
  // Stored with the dims reversed, viewed through permute: every stride differs from row-major.
  ls.push_back({"permuted",
                [](const Tensor& b, const Shape& s) {
                  std::vector<std::int64_t> p(s.size());
                  for (std::size_t i = 0; i < s.size(); ++i) p[i] = static_cast<std::int64_t>(s.size() - 1 - i);
                  return b.permute(p);
                },
                [](const Shape& s) { return Shape(s.rbegin(), s.rend()); }});
  // Every other element of the last dim (from 1) and rows from 1 of the other dims: an offset
  // and gaps everywhere.
  ls.push_back({"sliced",
                [](const Tensor& b, const Shape& s) {
                  if (s.empty()) return b;
                  Tensor v = b.slice(-1, 1, 2 * s.back() + 1, 2);
                  for (std::size_t d = 0; d + 1 < s.size(); ++d) v = v.narrow(static_cast<std::int64_t>(d), 1, s[d]);
                  return v;
                },
                [](const Shape& s) {
                  Shape w = s;
                  for (std::size_t d = 0; d + 1 < w.size(); ++d) w[d] += 1;
                  if (!w.empty()) w.back() = 2 * s.back() + 1;
                  return w;
                }});
  // The first dim broadcast from size 1 (stride 0).
  ls.push_back({"broadcast", [](const Tensor& b, const Shape& s) { return s.empty() ? b : b.expand(s); },
                [](const Shape& s) {
                  if (s.empty()) return s;
                  Shape w = s;
                  w[0] = 1;
                  return w;
                }});
  return ls;
}

/// Random values of `dt` in `layout` with `shape`, identical on both devices.
inline Pair make_pair(const Layout& layout, const Shape& shape, kiln::DType dt, std::uint64_t seed, double lo = -2,
                      double hi = 2) {
  kiln::Generator g(seed);
  const Shape bs = layout.base_shape(shape);
  Tensor base;
  if (dt == kiln::kBool) base = kiln::rand(bs, kiln::kFloat64, &g) < 0.5;
  else if (dt == kiln::kInt64)
    base = kiln::randint(static_cast<std::int64_t>(lo), static_cast<std::int64_t>(hi) + 1, bs, kiln::kInt64, &g);
  else base = (kiln::rand(bs, kiln::kFloat64, &g) * (hi - lo) + lo).to(dt);
  Pair p;
  p.cpu = layout.view(base, shape);
  p.gpu = layout.view(base.to(kGpu), shape);
  REQUIRE(p.cpu.strides() == p.gpu.strides());
  return p;
}

/// The shapes of the op table: scalar, empty, vector, odd 2-D, 3-D, and one that needs
/// 64-bit-free but multi-block launches.
inline std::vector<Shape> table_shapes() { return {{}, {0, 3}, {7}, {5, 13}, {3, 4, 33}, {2, 3, 257}}; }

}  // namespace kc

namespace kc {

/// Runs fn on the CPU inputs and on the GPU inputs and compares the results.
inline void check_op(const std::string& what, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                     const std::vector<Pair>& in, double rtol, double atol) {
  std::vector<Tensor> c, g;
  for (const Pair& p : in) {
    c.push_back(p.cpu);
    g.push_back(p.gpu);
  }
  Tensor rc = fn(c), rg = fn(g);
  expect_match(rg, rc, rtol, atol, what);
}

/// Gradients of sum(fn(inputs) * weights) w.r.t. every floating input, on both devices.
inline void check_grads(const std::string& what, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                        const std::vector<Pair>& in, double rtol, double atol, std::uint64_t seed = 99) {
  auto run = [&](bool gpu) {
    std::vector<Tensor> xs;
    for (const Pair& p : in) {
      Tensor t = (gpu ? p.gpu : p.cpu).detach();
      if (t.is_floating_point()) t.requires_grad_();
      xs.push_back(t);
    }
    Tensor y = fn(xs);
    kiln::Generator g(seed);
    Tensor w = kiln::randn(y.shape(), y.dtype(), &g);
    kiln::sum(y * (gpu ? w.to(kGpu) : w)).backward();
    std::vector<Tensor> gs;
    for (const Tensor& x : xs) gs.push_back(x.requires_grad() ? x.grad() : Tensor());
    return gs;
  };
  auto gc = run(false), gg = run(true);
  for (std::size_t i = 0; i < gc.size(); ++i) {
    if (!gc[i].defined()) continue;
    expect_match(gg[i], gc[i], rtol, atol, what + ": grad of input " + std::to_string(i));
  }
}

}  // namespace kc
