// Fused nn ops: softmax / log_softmax, layer_norm, dropout — values vs host references,
// gradients (first and second order), errors. Losses are in test_nn_loss.cpp.
#include "test_util.hpp"

#include <algorithm>
#include <limits>

using namespace kiln;

namespace {

using Vec = std::vector<double>;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Softmax of `x` (row-major, `shape`) along `dim`, on the host.
Vec host_softmax(const Vec& x, const Shape& shape, std::int64_t dim, bool log) {
  std::int64_t outer = 1, inner = 1, n = shape[static_cast<std::size_t>(dim)];
  for (std::int64_t d = 0; d < dim; ++d) outer *= shape[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  Vec y(x.size());
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = 0; i < inner; ++i) {
      auto at = [&](std::int64_t j) { return static_cast<std::size_t>((o * n + j) * inner + i); };
      double m = -kInf;
      for (std::int64_t j = 0; j < n; ++j) m = std::max(m, x[at(j)]);
      double s = 0;
      for (std::int64_t j = 0; j < n; ++j) s += std::exp(x[at(j)] - m);
      for (std::int64_t j = 0; j < n; ++j) y[at(j)] = log ? x[at(j)] - m - std::log(s) : std::exp(x[at(j)] - m) / s;
    }
  return y;
}

// Layer norm over the last `n` elements of each row, on the host.
Vec host_layer_norm(const Vec& x, std::int64_t n, const Vec& w, const Vec& b, double eps) {
  Vec y(x.size());
  for (std::size_t r = 0; r * n < x.size(); ++r) {
    double mu = 0, var = 0;
    for (std::int64_t j = 0; j < n; ++j) mu += x[r * n + j];
    mu /= static_cast<double>(n);
    for (std::int64_t j = 0; j < n; ++j) var += (x[r * n + j] - mu) * (x[r * n + j] - mu);
    var /= static_cast<double>(n);
    for (std::int64_t j = 0; j < n; ++j) {
      double v = (x[r * n + j] - mu) / std::sqrt(var + eps);
      if (!w.empty()) v *= w[j];
      if (!b.empty()) v += b[j];
      y[r * n + j] = v;
    }
  }
  return y;
}

Tensor rnd(const Shape& s, std::uint64_t seed, DType dt = kFloat64, double scale = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, dt, &g);
  if (scale != 1.0) t = t * scale;
  return t;
}

// Fixed weights so every output element's gradient differs.
Tensor weights_like(const Tensor& y, std::uint64_t seed = 99) { return rnd(y.shape(), seed, y.dtype()); }

}  // namespace

// ---------- softmax / log_softmax ----------

TEST_CASE("softmax / log_softmax values against a host reference / any dim") {
  Tensor x = rnd({2, 3, 4}, 1, kFloat64, 2.0);
  Vec xv = x.to_vector<double>();
  for (std::int64_t d = 0; d < 3; ++d) {
    INFO("dim " << d);
    kt::expect_values(softmax(x, d), host_softmax(xv, {2, 3, 4}, d, false), 1e-12);
    kt::expect_values(log_softmax(x, d), host_softmax(xv, {2, 3, 4}, d, true), 1e-12);
    kt::expect_values(softmax(x, d - 3), host_softmax(xv, {2, 3, 4}, d, false), 1e-12);
  }
  // float32
  Tensor x32 = x.to(kFloat32);
  kt::expect_values(softmax(x32, -1), host_softmax(xv, {2, 3, 4}, 2, false), 1e-6, 1e-5);
  kt::expect_values(log_softmax(x32, 1), host_softmax(xv, {2, 3, 4}, 1, true), 1e-5, 1e-5);
  CHECK(softmax(x32, 0).dtype() == kFloat32);
  // rows sum to one
  kt::expect_values(softmax(x, 1).sum({1}), Vec(8, 1.0), 1e-12);
}

TEST_CASE("softmax on non-contiguous input") {
  Tensor base = rnd({4, 3, 5}, 2);
  Tensor p = base.permute({2, 0, 1});  // (5, 4, 3)
  Vec pv = p.contiguous().to_vector<double>();
  for (std::int64_t d = 0; d < 3; ++d) {
    INFO("dim " << d);
    kt::expect_values(softmax(p, d), host_softmax(pv, {5, 4, 3}, d, false), 1e-12);
    kt::expect_values(log_softmax(p, d), host_softmax(pv, {5, 4, 3}, d, true), 1e-12);
  }
  Tensor s = base.slice(2, 0, 5, 2);  // (4, 3, 3), strided last dim
  Vec sv = s.contiguous().to_vector<double>();
  kt::expect_values(softmax(s, -1), host_softmax(sv, {4, 3, 3}, 2, false), 1e-12);
  kt::expect_values(log_softmax(s, 0), host_softmax(sv, {4, 3, 3}, 0, true), 1e-12);
  Tensor e = rnd({3}, 3).expand({2, 3});
  kt::expect_values(softmax(e, 0), Vec(6, 0.5), 1e-12);
}

TEST_CASE("softmax with -inf entries and large logits") {
  Tensor x = tensor(Vec{0, -kInf, 1, -kInf, 2, -kInf}, {2, 3});
  double e = std::exp(1.0);
  kt::expect_values(softmax(x, 1), {1 / (1 + e), 0, e / (1 + e), 0, 1, 0}, 1e-12);
  Tensor ls = log_softmax(x, 1);
  auto lv = ls.to_vector<double>();
  CHECK(lv[1] == -kInf);
  CHECK(lv[3] == -kInf);
  CHECK(lv[4] == doctest::Approx(0.0));
  CHECK(lv[0] == doctest::Approx(-std::log(1 + e)));
  // -inf entries get zero gradient, the rest a finite one.
  Tensor xl = x.clone().requires_grad_();
  (softmax(xl, 1) * tensor(Vec{1, 2, 3, 4, 5, 6}, {2, 3})).sum().backward();
  auto gv = xl.grad().to_vector<double>();
  for (double g : gv) CHECK(std::isfinite(g));
  CHECK(gv[1] == 0);
  CHECK(gv[3] == 0);
  Tensor xl2 = x.clone().requires_grad_();
  gather(log_softmax(xl2, 1), 1, tensor({0, 1}).reshape({2, 1})).sum().backward();  // finite entries only
  for (double g : xl2.grad().to_vector<double>()) CHECK(std::isfinite(g));
  kt::expect_values(xl2.grad(), {1 - 1 / (1 + e), 0, -e / (1 + e), 0, 0, 0}, 1e-12);

  for (DType dt : {kFloat32, kFloat64}) {
    Tensor big = tensor(Vec{1000, 1001, 1002, -1000}, {1, 4}).to(dt);
    Vec ref = host_softmax({0, 1, 2, -2000}, {1, 4}, 1, false);
    Vec lref = host_softmax({0, 1, 2, -2000}, {1, 4}, 1, true);
    kt::expect_values(softmax(big, 1), ref, 1e-6);
    kt::expect_values(log_softmax(big, 1).slice(1, 0, 3), {lref[0], lref[1], lref[2]},
                      1e-6);  // float32 ulp at 1000 is 6e-5
    CHECK(std::isfinite(log_softmax(big, 1).to_vector<double>()[3]));
    Tensor bl = big.clone().requires_grad_();
    log_softmax(bl, 1).select(1, 2).sum().backward();
    for (double g : bl.grad().to_vector<double>()) CHECK(std::isfinite(g));
  }
}

TEST_CASE("softmax on 0-D and size-0 inputs / errors") {
  kt::expect_values(softmax(scalar_tensor(3.0), 0), {1});
  kt::expect_shape(softmax(scalar_tensor(3.0), -1), {});
  kt::expect_values(log_softmax(scalar_tensor(3.0), 0), {0});
  kt::expect_shape(softmax(zeros({0, 3}), 1), {0, 3});
  kt::expect_shape(softmax(zeros({3, 0}), 1), {3, 0});
  kt::expect_shape(log_softmax(zeros({2, 0, 3}), 1), {2, 0, 3});
  CHECK_KILN_ERROR(softmax(arange(3), 0), "[softmax] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(log_softmax(ones({2}, kBool), 0), "[log_softmax] expected a floating point tensor, got bool");
  CHECK_KILN_ERROR(softmax(zeros({2, 3}), 2), "[softmax] dim 2 out of range");
  CHECK_KILN_ERROR(log_softmax(zeros({2, 3}), -3), "[log_softmax] dim -3 out of range");
  CHECK_KILN_ERROR(softmax(scalar_tensor(1.0), 1), "[softmax] dim 1 out of range");
}

TEST_CASE("softmax / log_softmax gradcheck") {
  for (bool lg : {false, true}) {
    INFO("log " << lg);
    auto f = [lg](const Tensor& x, std::int64_t d) { return lg ? log_softmax(x, d) : softmax(x, d); };
    auto x = kt::leaf({2, 3, 4});
    for (std::int64_t d : {0, 1, 2, -1}) kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], d); }, {x});
    auto nc = kt::noncontig_leaf({3, 4});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], 1); }, {nc});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0].t(), 1); }, {nc});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0].slice(1, 0, 4, 2), 0); }, {nc});
    auto s = kt::leaf({});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], 0) * in[0]; }, {s});
    auto e = kt::leaf({0, 3});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], 1); }, {e});
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], 0); }, {e});
    auto big = kt::leaf({2, 5}, 3, 30.0);
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0], 1); }, {big});
  }
  // -inf entries: softmax is smooth in the finite entries.
  Tensor m = tensor(Vec{0.3, -kInf, 1.2, -0.5, -kInf, 0.7}, {2, 3}).requires_grad_();
  kt::grad_ok([](const std::vector<Tensor>& in) { return softmax(in[0], 1); }, {m});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return index_select(log_softmax(in[0], 1), 1, tensor({0, 2}));
      },
      {m});
}

TEST_CASE("softmax / log_softmax double backward") {
  for (bool lg : {false, true}) {
    INFO("log " << lg);
    auto g = [lg](std::int64_t d) {
      return [lg, d](const std::vector<Tensor>& in) {
        Tensor y = lg ? log_softmax(in[0], d) : softmax(in[0], d);
        Tensor s = (y * weights_like(y) * y).sum();  // non-linear in y so the Hessian is rich
        return autograd::grad({s}, {in[0]}, {}, false, /*create_graph=*/true)[0];
      };
    };
    auto x = kt::leaf({3, 4});
    kt::grad_ok(g(1), {x});
    kt::grad_ok(g(0), {x});
    auto nc = kt::noncontig_leaf({2, 3, 2});
    kt::grad_ok(g(1), {nc});
    // A linear function of the output too (second derivative comes from softmax alone).
    kt::grad_ok(
        [lg](const std::vector<Tensor>& in) {
          Tensor y = lg ? log_softmax(in[0], -1) : softmax(in[0], -1);
          return autograd::grad({(y * weights_like(y, 5)).sum()}, {in[0]}, {}, false, true)[0];
        },
        {x});
  }
}

// ---------- layer_norm ----------

TEST_CASE("layer_norm values against a host reference") {
  Tensor x = rnd({2, 3, 4}, 1, kFloat64, 3.0) + 1.0;
  Vec xv = x.to_vector<double>();
  Tensor w4 = rnd({4}, 2), b4 = rnd({4}, 3), w34 = rnd({3, 4}, 4), b34 = rnd({3, 4}, 5);
  Vec w4v = w4.to_vector<double>(), b4v = b4.to_vector<double>();
  Vec w34v = w34.to_vector<double>(), b34v = b34.to_vector<double>();
  kt::expect_values(layer_norm(x, {4}), host_layer_norm(xv, 4, {}, {}, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {4}, w4, b4), host_layer_norm(xv, 4, w4v, b4v, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {4}, w4), host_layer_norm(xv, 4, w4v, {}, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {4}, Tensor(), b4), host_layer_norm(xv, 4, {}, b4v, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {3, 4}), host_layer_norm(xv, 12, {}, {}, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {3, 4}, w34, b34), host_layer_norm(xv, 12, w34v, b34v, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x, {2, 3, 4}, Tensor(), Tensor(), 0.1), host_layer_norm(xv, 24, {}, {}, 0.1), 1e-10);
  kt::expect_values(layer_norm(x, {4}, w4, b4, 1.0), host_layer_norm(xv, 4, w4v, b4v, 1.0), 1e-10);
  // float32, non-contiguous input
  Tensor xt = x.transpose(0, 1);  // (3, 2, 4)
  Vec xtv = xt.contiguous().to_vector<double>();
  kt::expect_values(layer_norm(xt, {4}, w4, b4), host_layer_norm(xtv, 4, w4v, b4v, 1e-5), 1e-10);
  kt::expect_values(layer_norm(x.to(kFloat32), {4}, w4.to(kFloat32), b4.to(kFloat32)),
                    host_layer_norm(xv, 4, w4v, b4v, 1e-5), 1e-4, 1e-4);
  Tensor xp = x.permute({2, 0, 1});  // (4, 2, 3): normalize a strided last dim
  kt::expect_values(layer_norm(xp, {3}), host_layer_norm(xp.contiguous().to_vector<double>(), 3, {}, {}, 1e-5), 1e-10);
  // A constant row normalizes to 0 (not NaN) and then to the bias.
  kt::expect_values(layer_norm(full({2, 3}, 5.0, kFloat64), {3}, Tensor(), tensor(Vec{1, 2, 3})), {1, 2, 3, 1, 2, 3});
  kt::expect_shape(layer_norm(zeros({0, 4}), {4}), {0, 4});
  kt::expect_values(layer_norm(tensor(Vec{1, 3}), {2}), host_layer_norm({1, 3}, 2, {}, {}, 1e-5), 1e-10);
}

TEST_CASE("layer_norm errors") {
  Tensor x = zeros({2, 3, 4});
  CHECK_KILN_ERROR(layer_norm(x, {3}), "[layer_norm] input shape (2, 3, 4) does not end with normalized_shape (3,)");
  CHECK_KILN_ERROR(layer_norm(x, {4, 4}),
                   "[layer_norm] input shape (2, 3, 4) does not end with normalized_shape (4, 4)");
  CHECK_KILN_ERROR(layer_norm(x, {}), "[layer_norm] normalized_shape () does not fit input shape (2, 3, 4)");
  CHECK_KILN_ERROR(layer_norm(x, {1, 2, 3, 4}),
                   "[layer_norm] normalized_shape (1, 2, 3, 4) does not fit input shape (2, 3, 4)");
  CHECK_KILN_ERROR(layer_norm(x, {4}, ones({3})), "[layer_norm] weight shape (3,) must equal normalized_shape (4,)");
  CHECK_KILN_ERROR(layer_norm(x, {4}, ones({4}), ones({1, 4})),
                   "[layer_norm] bias shape (1, 4) must equal normalized_shape (4,)");
  CHECK_KILN_ERROR(layer_norm(x, {3, 4}, ones({4})),
                   "[layer_norm] weight shape (4,) must equal normalized_shape (3, 4)");
  CHECK_KILN_ERROR(layer_norm(arange(4), {4}), "[layer_norm] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(layer_norm(x, {4}, Tensor(), Tensor(), -1.0), "[layer_norm] eps must be >= 0, got -1");
  CHECK_KILN_ERROR(layer_norm(scalar_tensor(1.0), {1}),
                   "[layer_norm] normalized_shape (1,) does not fit input shape ()");
}

TEST_CASE("layer_norm gradcheck") {
  auto x = kt::leaf({2, 3, 4}, 1), w = kt::leaf({4}, 2), b = kt::leaf({4}, 3);
  auto ln = [](const Shape& ns) {
    return [ns](const std::vector<Tensor>& in) { return layer_norm(in[0], ns, in[1], in[2]); };
  };
  kt::grad_ok(ln({4}), {x, w, b});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}); }, {x});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, in[1]); }, {x, w});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, Tensor(), in[1]); }, {x, b});
  auto w2 = kt::leaf({3, 4}, 4), b2 = kt::leaf({3, 4}, 5);
  kt::grad_ok(ln({3, 4}), {x, w2, b2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {3, 4}); }, {x});
  auto nc = kt::noncontig_leaf({3, 4}, 6);
  kt::grad_ok(ln({4}), {nc, w, b});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0].t(), {3}, in[1], in[2]); },
              {nc, kt::noncontig_leaf({3}, 7), kt::leaf({3}, 8)});
  auto v = kt::leaf({4}, 9);
  kt::grad_ok(ln({4}), {v, w, b});  // no batch dims
  auto e = kt::leaf({0, 4}, 10);
  kt::grad_ok(ln({4}), {e, w, b});
  // Only weight / bias require grad.
  Tensor cx = rnd({3, 4}, 11);
  kt::grad_ok([cx](const std::vector<Tensor>& in) { return layer_norm(cx, {4}, in[0], in[1]); }, {w, b});
  // Weight and bias gradients sum over every batch row; size-0 batch gives zeros.
  Tensor wz = ones({4}, kFloat64).requires_grad_(), bz = zeros({4}, kFloat64).requires_grad_();
  layer_norm(zeros({0, 4}, kFloat64), {4}, wz, bz).sum().backward();
  kt::expect_values(wz.grad(), {0, 0, 0, 0});
  kt::expect_values(bz.grad(), {0, 0, 0, 0});
  // Zero-size normalized dims: empty output, and backward still runs.
  Tensor ez = zeros({2, 0}, kFloat64).requires_grad_();
  Tensor yz = layer_norm(ez, {0});
  kt::expect_shape(yz, {2, 0});
  yz.sum().backward();
  kt::expect_shape(ez.grad(), {2, 0});
  Tensor bb = zeros({4}, kFloat64).requires_grad_();
  layer_norm(rnd({2, 3, 4}, 12), {4}, Tensor(), bb).sum().backward();
  kt::expect_values(bb.grad(), {6, 6, 6, 6});
}

TEST_CASE("layer_norm: parameters of another float type get gradients of their own type") {
  Tensor x = rnd({2, 3}, 1).requires_grad_();
  Tensor w = tensor({1.f, 2.f, 0.5f}).requires_grad_(), b = tensor({0.f, 1.f, 0.f}).requires_grad_();
  Tensor y = layer_norm(x, {3}, w, b);
  CHECK(y.dtype() == kFloat64);
  kt::expect_values(y, host_layer_norm(x.to_vector<double>(), 3, {1, 2, 0.5}, {0, 1, 0}, 1e-5), 1e-6);
  (y * weights_like(y)).sum().backward();
  CHECK(x.grad().dtype() == kFloat64);
  CHECK(w.grad().dtype() == kFloat32);
  CHECK(b.grad().dtype() == kFloat32);
  kt::expect_values(b.grad(), weights_like(y).sum({0}).to_vector<double>(), 1e-6);
}

TEST_CASE("layer_norm / rms_norm: parameters of another dtype compute in the wider type, round once to x's") {
  // PyTorch's rule for mixed-dtype norms: the result has the input's dtype; a bfloat16 activation
  // with float32 parameters is normalized and scaled in float32 and rounded once.
  Tensor x = rnd({4, 16}, 3).to(kBFloat16).requires_grad_();
  Tensor w = rnd({16}, 4, kFloat32).requires_grad_(), b = rnd({16}, 5, kFloat32).requires_grad_();
  Tensor xf = x.detach().to(kFloat32);
  Tensor ln = layer_norm(x, {16}, w, b), rms = rms_norm(x, {16}, w);
  CHECK(ln.dtype() == kBFloat16);
  CHECK(rms.dtype() == kBFloat16);
  Tensor ln_ref = layer_norm(xf, {16}, w.detach(), b.detach()).to(kBFloat16);
  Tensor rms_ref = rms_norm(xf, {16}, w.detach()).to(kBFloat16);
  CHECK(ln.to_vector<double>() == ln_ref.to_vector<double>());  // bit for bit: one rounding
  CHECK(rms.to_vector<double>() == rms_ref.to_vector<double>());
  // Rounding the weight to bfloat16 first (two roundings) differs from that on these values.
  CHECK(layer_norm(x.detach(), {16}, w.detach().to(kBFloat16), b.detach().to(kBFloat16)).to_vector<double>() !=
        ln_ref.to_vector<double>());
  (ln.to(kFloat32).sum() + rms.to(kFloat32).sum()).backward();
  CHECK(x.grad().dtype() == kBFloat16);
  CHECK(w.grad().dtype() == kFloat32);
  CHECK(b.grad().dtype() == kFloat32);
  kt::expect_values(b.grad(), std::vector<double>(16, 4.0));

  // float32 input, float64 weight: computed in float64, float32 out, eps float32's machine epsilon.
  Tensor x32 = rnd({3, 8}, 6, kFloat32, 1e-3), w64 = rnd({8}, 7);
  Tensor r32 = rms_norm(x32, {8}, w64);
  CHECK(r32.dtype() == kFloat32);
  kt::expect_values(r32, rms_norm(x32.to(kFloat64), {8}, w64, 0x1p-23).to_vector<double>(), 0, 0x1p-24);
  CHECK_KILN_ERROR(rms_norm(x32, {8}, ones({8}, kInt64)), "[rms_norm] weight must be floating point, got int64");
  CHECK_KILN_ERROR(layer_norm(x32, {8}, Tensor(), ones({8}, kInt64)),
                   "[layer_norm] bias must be floating point, got int64");
}

TEST_CASE("layer_norm double backward") {
  auto gfn = [](const Shape& ns) {
    return [ns](const std::vector<Tensor>& in) {
      Tensor y = layer_norm(in[0], ns, in[1], in[2]);
      Tensor s = (y * y * weights_like(y)).sum();
      auto gs = autograd::grad({s}, {in[0], in[1], in[2]}, {}, false, /*create_graph=*/true);
      return cat({gs[0].flatten(), gs[1].flatten(), gs[2].flatten()});
    };
  };
  auto x = kt::leaf({2, 3}, 1), w = kt::leaf({3}, 2), b = kt::leaf({3}, 3);
  kt::grad_ok(gfn({3}), {x, w, b});
  auto x2 = kt::noncontig_leaf({2, 2, 2}, 4), w2 = kt::leaf({2, 2}, 5), b2 = kt::leaf({2, 2}, 6);
  kt::grad_ok(gfn({2, 2}), {x2, w2, b2});
  // Without affine parameters, linear loss: the Hessian comes from the normalization alone.
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor y = layer_norm(in[0], {3});
        return autograd::grad({(y * weights_like(y, 7)).sum()}, {in[0]}, {}, false, true)[0];
      },
      {x});
}

// ---------- dropout ----------

TEST_CASE("dropout: identities and zeros") {
  Tensor x = rnd({3, 4}, 1);
  CHECK(dropout(x, 0.0).is_same(x));
  CHECK(dropout(x, 0.7, /*training=*/false).is_same(x));
  CHECK(dropout(x, 1.0, false).is_same(x));
  Tensor z = dropout(x, 1.0);
  kt::expect_shape(z, {3, 4});
  kt::expect_values(z, Vec(12, 0.0));
  Tensor xl = rnd({3, 4}, 2).requires_grad_();
  dropout(xl, 1.0).sum().backward();
  kt::expect_values(xl.grad(), Vec(12, 0.0));
  kt::expect_shape(dropout(zeros({0, 3}), 0.5), {0, 3});
  kt::expect_shape(dropout(scalar_tensor(2.0), 0.5), {});
  CHECK(dropout(arange(3), 0.0).dtype() == kInt64);
}

TEST_CASE("dropout: seeded determinism with a Generator") {
  Tensor x = ones({1000});
  Generator g1(123), g2(123), g3(124);
  Tensor a = dropout(x, 0.5, true, &g1), b = dropout(x, 0.5, true, &g2), c = dropout(x, 0.5, true, &g3);
  CHECK(equal(a, b));
  CHECK_FALSE(equal(a, c));
  Tensor a2 = dropout(x, 0.5, true, &g1);  // the generator advanced
  CHECK_FALSE(equal(a, a2));
  Tensor b2 = dropout(x, 0.5, true, &g2);
  CHECK(equal(a2, b2));
  // Same seed, same mask, whatever the input layout.
  Generator h1(9), h2(9);
  Tensor m = rnd({20, 30}, 4);
  Tensor d1 = dropout(m.t().contiguous(), 0.3, true, &h1);
  Tensor d2 = dropout(m.t(), 0.3, true, &h2);
  CHECK(equal(d1, d2));
  // The default generator follows manual_seed.
  manual_seed(77);
  Tensor e1 = dropout(x, 0.5);
  manual_seed(77);
  Tensor e2 = dropout(x, 0.5);
  CHECK(equal(e1, e2));
}

TEST_CASE("dropout statistics over 1e5 elements") {
  const std::int64_t n = 100000;
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    INFO("p = " << p);
    Generator g(2024);
    Tensor x = ones({n});
    Tensor y = dropout(x, p, true, &g);
    double zero_frac = sum(eq(y, scalar_tensor(0.0))).item<std::int64_t>() / static_cast<double>(n);
    double sigma = std::sqrt(p * (1 - p) / static_cast<double>(n));
    CHECK(std::abs(zero_frac - p) < 5 * sigma);
    double m = y.mean().item<double>();
    CHECK(std::abs(m - 1.0) < 5 * sigma / (1 - p));
    // kept values are exactly x / (1 - p)
    Tensor kept = max(y);
    CHECK(kept.item<double>() == doctest::Approx(1.0 / (1 - p)).epsilon(1e-6));
    CHECK(min(where(gt(y, scalar_tensor(0.0)), y, full({}, 1e9))).item<double>() ==
          doctest::Approx(1.0 / (1 - p)).epsilon(1e-6));
  }
  Generator g(5);
  Tensor xr = rnd({n}, 6, kFloat32, 2.0) + 3.0;
  Tensor yr = dropout(xr, 0.25, true, &g);
  CHECK(std::abs(yr.mean().item<double>() - xr.mean().item<double>()) < 0.05);
}

TEST_CASE("dropout gradient is mask / (1 - p)") {
  const double p = 0.4;
  Generator g(11);
  Tensor x = rnd({50, 40}, 7).requires_grad_();
  Tensor y = dropout(x, p, true, &g);
  Tensor w = rnd({50, 40}, 8);
  (y * w).sum().backward();
  auto yv = y.to_vector<double>(), xv = x.to_vector<double>(), gv = x.grad().to_vector<double>(),
       wv = w.to_vector<double>();
  int zeros_seen = 0;
  for (std::size_t i = 0; i < yv.size(); ++i) {
    double mask = yv[i] == 0 ? 0.0 : 1.0 / (1 - p);
    zeros_seen += yv[i] == 0;
    CHECK(yv[i] == doctest::Approx(xv[i] * mask));
    CHECK(gv[i] == doctest::Approx(wv[i] * mask));
  }
  CHECK(zeros_seen > 0);
  // Non-contiguous input, fixed generator inside fn: gradcheck sees one mask.
  auto nc = kt::noncontig_leaf({4, 5});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Generator gg(3);
        return dropout(in[0].t(), 0.5, true, &gg);
      },
      {nc});
  auto s = kt::leaf({});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Generator gg(4);
        return dropout(in[0], 0.2, true, &gg);
      },
      {s});
  auto e = kt::leaf({0, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return dropout(in[0], 0.5); }, {e});
  auto l = kt::leaf({3, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return dropout(in[0], 0.5, false); }, {l});
}

TEST_CASE("dropout keeps only its mask for backward, not its input") {
  Generator g(12);
  Tensor leaf = rnd({64, 32}, 9).requires_grad_();
  Tensor x = leaf * 2.0;  // an activation no other node saves
  std::weak_ptr<Storage> xs = x.storage();
  Tensor y = dropout(x, 0.3, true, &g);
  x = Tensor();
  CHECK(xs.expired());
  y.sum().backward();
  Generator g2(12);
  Tensor mask = dropout(ones({64, 32}, kFloat64), 0.3, true, &g2);
  CHECK(leaf.grad().to_vector<double>() == (mask * 2.0).to_vector<double>());
}

TEST_CASE("dropout errors") {
  Tensor x = ones({3});
  CHECK_KILN_ERROR(dropout(x, -0.1), "[dropout] probability must be in [0, 1], got -0.1");
  CHECK_KILN_ERROR(dropout(x, 1.5), "[dropout] probability must be in [0, 1], got 1.5");
  CHECK_KILN_ERROR(dropout(x, 1.5, false), "[dropout] probability must be in [0, 1]");
  CHECK_KILN_ERROR(dropout(x, std::numeric_limits<double>::quiet_NaN()), "[dropout] probability must be in [0, 1]");
  CHECK_KILN_ERROR(dropout(arange(3), 0.5), "[dropout] expected a floating point tensor, got int64");
}
