// The fused backward kernels (Backend::unary_backward, Backend::layer_norm_backward,
// Backend::rms_norm_backward, with rms_norm's fused forward) against the
// composite formulation the ops keep for create_graph: the same backward run once without and
// once with create_graph gives the fused and the composite gradient. Layouts (contiguous,
// permuted, sliced, broadcast, non-contiguous incoming gradients), float64/float32, 16-bit against
// float32 on the same rounded values, thread-count independence, special values, size 0.
#include "test_util.hpp"

using namespace kiln;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Tensor rnd(const Shape& s, std::uint64_t seed, DType dt = kFloat64, double scale = 1.0) {
  Generator g(seed);
  return (randn(s, kFloat64, &g) * scale).to(dt);
}

// Gradient of sum(f(x) * w) w.r.t. x: fused (create_graph off) or composite (on).
Tensor grad_of(const std::function<Tensor(const Tensor&)>& f, const Tensor& x, const Tensor& w, bool composite) {
  Tensor y = f(x);
  return autograd::grad({(y * w).sum()}, {x}, {}, false, composite)[0].detach();
}

void expect_close(const Tensor& got, const Tensor& want, double atol, double rtol) {
  REQUIRE(got.shape() == want.shape());
  auto g = got.to_vector<double>(), e = want.to_vector<double>();
  for (std::size_t i = 0; i < g.size(); ++i) {
    INFO("element " << i << ": got " << g[i] << ", expected " << e[i]);
    if (std::isnan(e[i])) CHECK(std::isnan(g[i]));
    else CHECK(std::abs(g[i] - e[i]) <= atol + rtol * std::abs(e[i]));
  }
}

struct Act {
  const char* name;
  std::function<Tensor(const Tensor&)> f;
  // For the ops whose backward reads the output y: f'(x) as a function of y.
  std::function<Tensor(const Tensor&)> dy_of_y = nullptr;
};

const std::vector<Act>& activations() {
  static const std::vector<Act> acts = {
      {"gelu", [](const Tensor& x) { return gelu(x); }},
      {"gelu tanh", [](const Tensor& x) { return gelu(x, "tanh"); }},
      {"silu", [](const Tensor& x) { return silu(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](const Tensor& y) { return y * (1.0 - y); }},
      {"tanh", [](const Tensor& x) { return kiln::tanh(x); }, [](const Tensor& y) { return 1.0 - y * y; }},
      {"relu", [](const Tensor& x) { return relu(x); }},
      {"hardswish", [](const Tensor& x) { return hardswish(x); }},
  };
  return acts;
}

// An input of `dt` in one of the layouts the op tests use, built from a leaf that requires grad.
struct Layout {
  const char* name;
  std::function<Tensor(const Tensor&)> view;  // leaf -> the op's input
  Shape leaf_shape;
};

const std::vector<Layout>& layouts() {
  // 37 * 29 = 1073 elements: more than one 512-element chunk, not a multiple of the packet width.
  static const std::vector<Layout> ls = {
      {"contiguous", [](const Tensor& t) { return t; }, {37, 29}},
      {"permuted", [](const Tensor& t) { return t.transpose(0, 1); }, {29, 37}},
      {"sliced", [](const Tensor& t) { return t.slice(1, 1, 59, 2); }, {37, 60}},
      {"broadcast",
       [](const Tensor& t) {
         return t.expand({37, 29});
       },
       {1, 29}},
      {"0-size", [](const Tensor& t) { return t; }, {0, 5}},
  };
  return ls;
}

}  // namespace

TEST_CASE("unary backward: fused kernel against the composite, float64 and float32, every layout") {
  for (const Act& a : activations())
    for (const Layout& l : layouts())
      for (DType dt : {kFloat64, kFloat32}) {
        const std::string ctx = std::string(a.name) + ", " + l.name + ", " + std::string(dtype_name(dt));
        INFO(ctx);
        Tensor leaf = rnd(l.leaf_shape, 1, dt, 2.0).requires_grad_();
        Tensor x = l.view(leaf);
        // A transposed weight makes the incoming gradient non-contiguous as well.
        Tensor w = rnd({x.size(1), x.size(0)}, 2, dt).t();
        auto f = [&](const Tensor& in) { return a.f(l.view(in)); };
        Tensor fused = grad_of(f, leaf, w, false), composite = grad_of(f, leaf, w, true);
        if (dt == kFloat64) expect_close(fused, composite, 1e-14, 1e-12);
        // float32: gelu tanh's 1 - t^2 cancels near |x| = 4 in both forms (t from the same float32
        // tanh): ~1e-6 of absolute error each against float64, with weights up to ~3.
        else expect_close(fused, composite, 5e-6, 2e-6);
      }
}

TEST_CASE("unary backward: special values match the composite") {
  // Tiled so every value also meets the vectorized path.
  std::vector<double> v;
  for (int k = 0; k < 20; ++k)
    for (double s :
         std::vector<double>{0.0, -0.0, 1e-30, -3.0, 3.0, 13.5, -13.5, 40.0, -40.0, 1e300, -1e300, kInf, -kInf, kNaN})
      v.push_back(s);
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  for (const Act& a : activations())
    for (DType dt : {kFloat64, kFloat32}) {
      const std::string ctx = std::string(a.name) + ", " + std::string(dtype_name(dt));
      INFO(ctx);
      Tensor x = tensor(v, {n}).to(dt).requires_grad_();
      Tensor w = ones({n}, dt);
      expect_close(grad_of(a.f, x, w, false), grad_of(a.f, x, w, true), 1e-6, 1e-6);
    }
}

TEST_CASE("unary backward: bfloat16/float16 against float32 on the same rounded values") {
  for (const Act& a : activations())
    for (DType dt : {kBFloat16, kFloat16}) {
      const std::string ctx = std::string(a.name) + ", " + std::string(dtype_name(dt));
      INFO(ctx);
      const double eps = dt == kBFloat16 ? 0.0078125 : 0.0009765625;
      Tensor x16 = rnd({33, 31}, 3, dt, 2.0).requires_grad_(), w16 = rnd({33, 31}, 4, dt);
      Tensor x32 = x16.detach().to(kFloat32).requires_grad_(), w32 = w16.to(kFloat32);
      Tensor g16 = grad_of(a.f, x16, w16, false);
      CHECK(g16.dtype() == dt);
      // The float32 result on the values the 16-bit kernel reads (x, or the rounded output y).
      Tensor ref;
      if (a.dy_of_y) {
        NoGradGuard ng;
        ref = w32 * a.dy_of_y(a.f(x16).to(kFloat32));
      } else {
        ref = grad_of(a.f, x32, w32, false);
      }
      // Computed in float32 and rounded once: within half an ulp (and float32 noise).
      expect_close(g16, ref, 1e-6, eps);
    }
}

TEST_CASE("unary backward: gradcheck of first and second order (float64)") {
  for (const Act& a : activations()) {
    const std::string ctx = a.name;
    INFO(ctx);
    // Away from the kinks of relu (0) and hardswish (+-3).
    Tensor x = rnd({3, 5}, 5, kFloat64, 2.0);
    x = (x + sign(x) * 0.2).detach();
    x = where((abs(abs(x) - 3.0) < 0.1), x + 0.25, x).detach().requires_grad_();
    kt::grad_ok([&](const std::vector<Tensor>& in) { return a.f(in[0]); }, {x});
    kt::grad_ok(
        [&](const std::vector<Tensor>& in) {
          Tensor y = a.f(in[0]);
          return autograd::grad({(y * y).sum()}, {in[0]}, {}, false, /*create_graph=*/true)[0];
        },
        {x});
  }
}

TEST_CASE("unary backward: the same gradient at 1 and 2 threads") {
  const int saved = get_num_threads();
  Tensor x = rnd({300, 128}, 6, kFloat32).requires_grad_(), w = rnd({300, 128}, 7, kFloat32);
  for (const Act& a : activations()) {
    set_num_threads(1);
    Tensor g1 = grad_of(a.f, x, w, false);
    set_num_threads(2);
    Tensor g2 = grad_of(a.f, x, w, false);
    CHECK(equal(g1, g2));
  }
  set_num_threads(saved);
}

namespace {

// {gx, gw, gb} of sum(layer_norm(view(x), ns, w, b)^T * u) with u of seed useed rounded through
// udt: fused or composite. The transpose makes the incoming gradient non-contiguous.
std::vector<Tensor> ln_grads(const Tensor& x, const std::function<Tensor(const Tensor&)>& view, const Shape& ns,
                             const Tensor& w, const Tensor& b, std::uint64_t useed, DType udt, bool composite) {
  Tensor yt = layer_norm(view(x), ns, w, b).transpose(0, -1);
  Tensor u = rnd(yt.shape(), useed, udt).to(x.dtype());
  std::vector<Tensor> in = {x};
  if (w.defined()) in.push_back(w);
  if (b.defined()) in.push_back(b);
  auto g = autograd::grad({(yt * u).sum()}, in, {}, false, composite);
  for (auto& t : g) t = t.detach();
  return g;
}

}  // namespace

TEST_CASE("layer_norm backward: fused kernel against the composite, layouts and affine cases") {
  struct L {
    const char* name;
    Shape leaf, ns;
    std::function<Tensor(const Tensor&)> view;
  };
  const std::vector<L> ls = {
      {"contiguous", {2, 70, 33}, {33}, [](const Tensor& t) { return t; }},
      {"two normalized dims", {9, 4, 33}, {4, 33}, [](const Tensor& t) { return t; }},
      {"permuted", {33, 40}, {33}, [](const Tensor& t) { return t.t(); }},
      {"sliced", {40, 67}, {33}, [](const Tensor& t) { return t.slice(1, 0, 66, 2); }},
      {"broadcast",
       {1, 33},
       {33},
       [](const Tensor& t) {
         return t.expand({40, 33});
       }},
      {"no batch dims", {33}, {33}, [](const Tensor& t) { return t; }},
      {"0 rows", {0, 33}, {33}, [](const Tensor& t) { return t; }},
      {"0 columns", {5, 0}, {0}, [](const Tensor& t) { return t; }},
  };
  for (const L& l : ls)
    for (DType dt : {kFloat64, kFloat32})
      for (int affine = 0; affine < 4; ++affine) {
        const std::string ctx = std::string(l.name) + ", " + std::string(dtype_name(dt)) + ", weight " +
                                std::to_string(affine & 1) + ", bias " + std::to_string(affine >> 1);
        INFO(ctx);
        Tensor x = rnd(l.leaf, 1, dt, 3.0).requires_grad_();
        Tensor w = affine & 1 ? (rnd(l.ns, 2, dt) + 1.0).detach().requires_grad_() : Tensor();
        Tensor b = affine & 2 ? rnd(l.ns, 3, dt).detach().requires_grad_() : Tensor();
        auto fused = ln_grads(x, l.view, l.ns, w, b, 4, dt, false);
        auto comp = ln_grads(x, l.view, l.ns, w, b, 4, dt, true);
        REQUIRE(fused.size() == comp.size());
        for (std::size_t i = 0; i < fused.size(); ++i) {
          CHECK(fused[i].dtype() == dt);
          if (dt == kFloat64) expect_close(fused[i], comp[i], 1e-12, 1e-10);
          else expect_close(fused[i], comp[i], 5e-5, 5e-5);
        }
      }
}

TEST_CASE("layer_norm backward: bfloat16/float16 against float32 on the same rounded values") {
  for (DType dt : {kBFloat16, kFloat16}) {
    const std::string ctx(dtype_name(dt));
    INFO(ctx);
    const double eps = dt == kBFloat16 ? 0.0078125 : 0.0009765625;
    Tensor x = rnd({50, 48}, 5, dt, 2.0).requires_grad_(), w = (rnd({48}, 6, dt) + 1.0).to(dt).requires_grad_();
    Tensor b = rnd({48}, 7, dt).requires_grad_();
    auto g16 = ln_grads(
        x, [](const Tensor& t) { return t; }, {48}, w, b, 8, dt, false);
    Tensor x32 = x.detach().to(kFloat32).requires_grad_(), w32 = w.detach().to(kFloat32).requires_grad_(),
           b32 = b.detach().to(kFloat32).requires_grad_();
    auto g32 = ln_grads(
        x32, [](const Tensor& t) { return t; }, {48}, w32, b32, 8, dt, false);
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(g16[i].dtype() == dt);
      // Float32 statistics and compute, one rounding: half an ulp plus float32 noise on the
      // largest value (gx's row means cancel).
      const double scale = amax(abs(g32[i])).item<double>();
      expect_close(g16[i], g32[i], 1e-5 * scale, eps);
    }
  }
}

TEST_CASE("layer_norm backward: gradcheck through the fused path, and second order through the composite") {
  Tensor x = rnd({6, 7}, 9).requires_grad_(), w = rnd({7}, 10).requires_grad_(), b = rnd({7}, 11).requires_grad_();
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0], {7}, in[1], in[2]); }, {x, w, b});
  kt::grad_ok([](const std::vector<Tensor>& in) { return layer_norm(in[0].t(), {6}); }, {x});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor y = layer_norm(in[0], {7}, in[1], in[2]);
        auto g = autograd::grad({(y * y * y).sum()}, {in[0], in[1], in[2]}, {}, false, /*create_graph=*/true);
        return cat({g[0].flatten(), g[1].flatten(), g[2].flatten()});
      },
      {x, w, b});
}

TEST_CASE("layer_norm backward: weight and bias gradients do not depend on the thread count") {
  const int saved = get_num_threads();
  for (DType dt : {kFloat32, kBFloat16}) {
    Tensor x = rnd({1000, 96}, 12, dt).requires_grad_(), w = rnd({96}, 13, dt).requires_grad_();
    Tensor b = rnd({96}, 14, dt).requires_grad_();
    set_num_threads(1);
    auto g1 = ln_grads(
        x, [](const Tensor& t) { return t; }, {96}, w, b, 15, dt, false);
    set_num_threads(2);
    auto g2 = ln_grads(
        x, [](const Tensor& t) { return t; }, {96}, w, b, 15, dt, false);
    for (std::size_t i = 0; i < 3; ++i) CHECK(equal(g1[i], g2[i]));
  }
  set_num_threads(saved);
}

namespace {

// rms_norm as the composite of tensor ops it replaced (float32 statistics for 16-bit x, the
// weight applied after rounding to x's dtype): the reference for the fused forward and backward.
Tensor rms_composite(const Tensor& x, const Shape& ns, const Tensor& w, double eps) {
  Dims dims;
  for (std::int64_t d = x.dim() - static_cast<std::int64_t>(ns.size()); d < x.dim(); ++d) dims.push_back(d);
  const Tensor xc = is_reduced_float(x.dtype()) ? x.to(kFloat32) : x;
  Tensor y = (xc * rsqrt(mean(square(xc), dims, true) + eps)).to(x.dtype());
  return w.defined() ? y * w : y;
}

// {y, gx, gw} of sum(f(view(x), ns, w)^T * u), u of seed useed rounded through udt; `composite`
// runs the backward with create_graph (rms_norm's differentiable formulas).
std::vector<Tensor> rms_grads(const std::function<Tensor(const Tensor&, const Shape&, const Tensor&)>& f,
                              const Tensor& x, const std::function<Tensor(const Tensor&)>& view, const Shape& ns,
                              const Tensor& w, std::uint64_t useed, bool composite, DType udt = kFloat64) {
  Tensor y = f(view(x), ns, w);
  Tensor yt = y.transpose(0, -1);
  Tensor u = rnd(yt.shape(), useed, udt).to(y.dtype());
  std::vector<Tensor> in = {x};
  if (w.defined()) in.push_back(w);
  auto g = autograd::grad({(yt * u).sum()}, in, {}, false, composite);
  g.insert(g.begin(), y);
  for (auto& t : g) t = t.detach();
  return g;
}

Tensor fused_rms(const Tensor& x, const Shape& ns, const Tensor& w) { return rms_norm(x, ns, w, 1e-5); }
Tensor old_rms(const Tensor& x, const Shape& ns, const Tensor& w) { return rms_composite(x, ns, w, 1e-5); }

}  // namespace

TEST_CASE("rms_norm: fused forward and backward against the composite, layouts and weights") {
  struct L {
    const char* name;
    Shape leaf, ns;
    std::function<Tensor(const Tensor&)> view;
  };
  const std::vector<L> ls = {
      {"contiguous", {2, 70, 33}, {33}, [](const Tensor& t) { return t; }},
      {"two normalized dims", {9, 4, 33}, {4, 33}, [](const Tensor& t) { return t; }},
      {"permuted", {33, 40}, {33}, [](const Tensor& t) { return t.t(); }},
      {"permuted, two normalized dims",
       {5, 6, 7},
       {5, 6},
       [](const Tensor& t) {
         return t.permute({2, 0, 1});
       }},
      {"sliced", {40, 67}, {33}, [](const Tensor& t) { return t.slice(1, 0, 66, 2); }},
      {"broadcast",
       {1, 33},
       {33},
       [](const Tensor& t) {
         return t.expand({40, 33});
       }},
      {"no batch dims", {33}, {33}, [](const Tensor& t) { return t; }},
      {"long rows", {3, 2500}, {2500}, [](const Tensor& t) { return t; }},
      {"0 rows", {0, 33}, {33}, [](const Tensor& t) { return t; }},
      {"0 columns", {5, 0}, {0}, [](const Tensor& t) { return t; }},
  };
  for (const L& l : ls)
    for (DType dt : {kFloat64, kFloat32})
      for (bool weighted : {false, true}) {
        const std::string ctx =
            std::string(l.name) + ", " + std::string(dtype_name(dt)) + ", weight " + std::to_string(weighted);
        INFO(ctx);
        Tensor x = rnd(l.leaf, 1, dt, 3.0).requires_grad_();
        Tensor w = weighted ? (rnd(l.ns, 2, dt) + 1.0).detach().requires_grad_() : Tensor();
        auto fused = rms_grads(fused_rms, x, l.view, l.ns, w, 4, false);
        auto comp = rms_grads(fused_rms, x, l.view, l.ns, w, 4, true);
        auto old = rms_grads(old_rms, x, l.view, l.ns, w, 4, false);
        REQUIRE(fused.size() == old.size());
        for (std::size_t i = 0; i < fused.size(); ++i) {
          INFO("output " << i);
          CHECK(fused[i].dtype() == dt);
          if (dt == kFloat64) {
            expect_close(fused[i], old[i], 1e-12, 1e-10);
            expect_close(comp[i], old[i], 1e-12, 1e-10);
          } else {
            expect_close(fused[i], old[i], 5e-5, 5e-5);
            expect_close(comp[i], old[i], 5e-5, 5e-5);
          }
        }
      }
}

TEST_CASE("rms_norm: default eps, special values, a weight of another dtype") {
  Tensor x = rnd({4, 8}, 20);
  // eps defaults to the machine epsilon of the compute type (and only that is added): float32's
  // for 16-bit inputs too, as PyTorch's rms_norm (its opmath type).
  for (DType dt : {kFloat64, kFloat32, kBFloat16, kFloat16}) {
    const double e = dt == kFloat64 ? 0x1p-52 : 0x1p-23;
    Tensor xd = x.to(dt);
    CHECK(equal(rms_norm(xd, {8}), rms_norm(xd, {8}, Tensor(), e)));
  }
  // PyTorch 2.15: F.rms_norm(torch.tensor([[0.01, 0.02, -0.03, 0.015]], dtype=torch.bfloat16), (4,))
  // (with bfloat16's own epsilon 2^-7 this row would come out ~0.11, 0.22, -0.33, 0.17).
  Tensor small = tensor({0.01, 0.02, -0.03, 0.015}).reshape({1, 4}).to(kBFloat16);
  CHECK(rms_norm(small, {4}).to(kFloat64).to_vector<double>() ==
        std::vector<double>{0.49609375, 0.9921875, -1.484375, 0.7421875});
  // Rows holding inf or NaN, an all-zero row with eps 0 (0 * inf): NaN/inf where the composite has them.
  std::vector<double> v;
  for (double s : {1.0, kInf, -2.0, 0.5, kNaN, 1.0, 0.0, 0.0, 3.0, -kInf, 2.0, 1.0})
    for (int k = 0; k < 10; ++k) v.push_back(s * (k + 1));
  for (DType dt : {kFloat64, kFloat32})
    for (double e : {0.0, 1e-6}) {
      Tensor xs = tensor(v, {6, 20}).to(dt);
      expect_close(rms_norm(xs, {20}, Tensor(), e), rms_composite(xs, {20}, Tensor(), e), 1e-6, 1e-6);
      Tensor z = zeros({2, 20}, dt);
      expect_close(rms_norm(z, {20}, Tensor(), e), rms_composite(z, {20}, Tensor(), e), 0, 0);
    }
  // A float64 weight on float32 x: computed in float64, the result x's float32 (PyTorch's rule).
  Tensor x32 = rnd({5, 6}, 21, kFloat32).requires_grad_(), w64 = rnd({6}, 22).requires_grad_();
  Tensor y = rms_norm(x32, {6}, w64);
  CHECK(y.dtype() == kFloat32);
  expect_close(y, rms_composite(x32, {6}, w64, 0x1p-23), 1e-6, 1e-6);
  y.sum().backward();
  CHECK(x32.grad().dtype() == kFloat32);
  CHECK(w64.grad().dtype() == kFloat64);
  expect_close(w64.grad(), sum(rms_norm(x32.detach().to(kFloat64), {6}, Tensor(), 0x1p-23), {0}), 1e-12, 1e-12);
}

TEST_CASE("rms_norm: bfloat16/float16 against float32 on the same rounded values") {
  for (DType dt : {kBFloat16, kFloat16}) {
    const std::string ctx(dtype_name(dt));
    INFO(ctx);
    const double eps = dt == kBFloat16 ? 0.0078125 : 0.0009765625;
    Tensor x = rnd({50, 48}, 5, dt, 2.0).requires_grad_(), w = (rnd({48}, 6, dt) + 1.0).to(dt).requires_grad_();
    auto same = [](const Tensor& t) { return t; };
    auto g16 = rms_grads(fused_rms, x, same, {48}, w, 8, false, dt);
    Tensor x32 = x.detach().to(kFloat32).requires_grad_(), w32 = w.detach().to(kFloat32).requires_grad_();
    auto g32 = rms_grads(fused_rms, x32, same, {48}, w32, 8, false, dt);
    for (std::size_t i = 0; i < 3; ++i) {
      INFO("output " << i);
      CHECK(g16[i].dtype() == dt);
      // Float32 statistics and compute, one rounding: half an ulp plus float32 noise on the
      // largest value (gx's row means cancel).
      const double scale = amax(abs(g32[i])).item<double>();
      expect_close(g16[i], g32[i], 1e-5 * scale, eps / 2);
    }
  }
}

TEST_CASE("rms_norm: gradcheck through the fused path, and second order through the composite") {
  Tensor x = rnd({6, 7}, 9).requires_grad_(), w = rnd({7}, 10).requires_grad_();
  kt::grad_ok([](const std::vector<Tensor>& in) { return rms_norm(in[0], {7}, in[1], 1e-3); }, {x, w});
  kt::grad_ok([](const std::vector<Tensor>& in) { return rms_norm(in[0].t(), {6}); }, {x});
  kt::grad_ok([](const std::vector<Tensor>& in) { return rms_norm(in[0].reshape({2, 3, 7}), {3, 7}); }, {x});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor y = rms_norm(in[0], {7}, in[1]);
        auto g = autograd::grad({(y * y * y).sum()}, {in[0], in[1]}, {}, false, /*create_graph=*/true);
        return cat({g[0].flatten(), g[1].flatten()});
      },
      {x, w});
}

TEST_CASE("rms_norm: outputs and gradients do not depend on the thread count") {
  const int saved = get_num_threads();
  for (DType dt : {kFloat32, kBFloat16, kFloat64}) {
    const std::string ctx(dtype_name(dt));
    INFO(ctx);
    Tensor x = rnd({1000, 96}, 12, dt).requires_grad_(), w = rnd({96}, 13, dt).requires_grad_();
    auto same = [](const Tensor& t) { return t; };
    set_num_threads(1);
    auto g1 = rms_grads(fused_rms, x, same, {96}, w, 15, false);
    set_num_threads(2);
    auto g2 = rms_grads(fused_rms, x, same, {96}, w, 15, false);
    for (std::size_t i = 0; i < 3; ++i) CHECK(equal(g1[i], g2[i]));
  }
  set_num_threads(saved);
}
