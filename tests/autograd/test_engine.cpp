// The backward engine: roots and seeds, accumulation, retain_graph, grad mode, detach,
// retain_grad, version checks, non-differentiable outputs, anomaly mode, autograd::grad,
// custom Functions, graph shapes (shared inputs, diamonds).
#include "test_util.hpp"

#include <limits>

using namespace kiln;

namespace {

using Vec = std::vector<double>;

Tensor f64(const Vec& v) { return tensor(v); }
Tensor leaf64(const Vec& v) { return tensor(v).requires_grad_(); }

// README example.
struct Cube : autograd::Function<Cube> {
  static const char* name() { return "cube"; }
  static Tensor forward(autograd::Context& ctx, const Tensor& x) {
    ctx.save_for_backward({x});
    return x * x * x;
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& g) {
    auto x = ctx.saved()[0];
    return {g[0] * 3 * x * x};
  }
};

// Two inputs, a saved output, a non-tensor argument kept in ctx.data.
struct ScaledMul : autograd::Function<ScaledMul> {
  static const char* name() { return "scaled_mul"; }
  static Tensor forward(autograd::Context& ctx, const Tensor& a, const Tensor& b, double s) {
    Tensor y = a * b * s;
    ctx.save_for_backward({a, b, y});
    ctx.data["s"] = s;
    return y;
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& g) {
    auto sv = ctx.saved();
    double s = std::any_cast<double>(ctx.data["s"]);
    return {g[0] * sv[1] * s, g[0] * sv[0] * s};
  }
};

// Returns a gradient of the wrong shape.
struct BadShape : autograd::Function<BadShape> {
  static const char* name() { return "bad_shape"; }
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 2.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) { return {g[0].sum()}; }
};

// Returns the wrong number of gradients.
struct BadCount : autograd::Function<BadCount> {
  static const char* name() { return "bad_count"; }
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 2.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) { return {g[0], g[0]}; }
};

// Sorted values (differentiable) and their positions (not differentiable).
struct MaxWithIndex : autograd::Function<MaxWithIndex> {
  static const char* name() { return "max_with_index"; }
  static std::vector<Tensor> forward(autograd::Context& ctx, const Tensor& x) {
    auto vi = max(x, 0);
    Tensor idx_f = vi.indices.to(kFloat64);
    ctx.mark_non_differentiable({idx_f});
    ctx.save_for_backward({vi.indices});
    ctx.data["n"] = x.size(0);
    return {vi.values, idx_f};
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& g) {
    Tensor idx = ctx.saved()[0];
    Tensor gx = zeros({std::any_cast<std::int64_t>(ctx.data["n"])}, kFloat64);
    return {index_add(gx, 0, idx.reshape({1}), g[0].reshape({1}))};
  }
};

// Identity with a deliberately wrong gradient (2 g): gradcheck must notice.
struct WrongGrad : autograd::Function<WrongGrad> {
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 1.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) { return {g[0] * 2.0}; }
};

// Backward hands back float32 for a float64 input: the engine casts it back.
struct Float32Grad : autograd::Function<Float32Grad> {
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 3.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) {
    return {(g[0] * 3.0).to(kFloat32)};
  }
};

}  // namespace

TEST_CASE("backward on a scalar and with an explicit gradient") {
  Tensor x = leaf64({1, 2, 3});
  (x * x).sum().backward();
  kt::expect_values(x.grad(), {2, 4, 6});
  CHECK(x.grad().dtype() == kFloat64);
  CHECK_FALSE(x.grad().requires_grad());

  Tensor z = leaf64({1, 2, 3});
  Tensor y = z * 2.0;
  y.backward(f64({1, 10, 100}));
  kt::expect_values(z.grad(), {2, 20, 200});
  // A float32 seed for a float64 tensor is converted.
  Tensor z2 = leaf64({1, 2});
  (z2 * z2).backward(tensor({1.f, 1.f}));
  kt::expect_values(z2.grad(), {2, 4});
  // One-element tensors of any rank take an implicit seed.
  Tensor w = leaf64({3});
  (w * 2.0).reshape({1, 1}).backward();
  kt::expect_values(w.grad(), {2});

  Tensor v = leaf64({1, 2, 3});
  CHECK_KILN_ERROR(
      (v * 2.0).backward(),
      "[backward] grad can be implicitly created only for one-element tensors; this tensor has shape (3,)");
  CHECK_KILN_ERROR((v * 2.0).backward(f64({1, 2})), "[backward] grad shape (2,) does not match tensor shape (3,)");
  CHECK_KILN_ERROR(f64({1, 2}).sum().backward(), "does not require grad");
}

TEST_CASE(".grad accumulates over backward calls") {
  Tensor x = leaf64({1, 2});
  (x * 3.0).sum().backward();
  (x * x).sum().backward();
  kt::expect_values(x.grad(), {3 + 2, 3 + 4});
  Tensor g_before = x.grad();
  (x * 1.0).sum().backward();
  kt::expect_values(x.grad(), {6, 8});
  // Accumulation is in place into the existing .grad (as PyTorch without create_graph).
  kt::expect_values(g_before, {6, 8});
  // Zeroing by hand, then accumulating again.
  {
    NoGradGuard ng;
    x.grad().zero_();
  }
  x.sum().backward();
  kt::expect_values(x.grad(), {1, 1});
  x.set_grad(Tensor());
  CHECK_FALSE(x.grad().defined());
  (x * 5.0).sum().backward();
  kt::expect_values(x.grad(), {5, 5});
}

TEST_CASE("retain_graph") {
  Tensor x = leaf64({0.5, 1.0});
  Tensor y = x.exp().sum();
  y.backward();
  CHECK_KILN_ERROR(y.backward(), "retain_graph");

  Tensor x2 = leaf64({0.5, 1.0});
  Tensor y2 = (x2.exp() * x2).sum();
  y2.backward(Tensor(), /*retain_graph=*/true);
  y2.backward();
  Vec expect;
  for (double v : {0.5, 1.0}) expect.push_back(2 * (std::exp(v) * v + std::exp(v)));
  kt::expect_values(x2.grad(), expect, 1e-12);
  CHECK_KILN_ERROR(y2.backward(), "retain_graph");

  // Part of a graph already freed: a new root that reaches a freed node fails too.
  Tensor x3 = leaf64({1.0, 2.0});
  Tensor h = x3.exp();
  h.sum().backward();
  CHECK_KILN_ERROR((h * 2.0).sum().backward(), "retain_graph");
  // autograd::grad frees the graph unless asked to keep it.
  Tensor x4 = leaf64({1.0});
  Tensor y4 = (x4 * x4).sum();
  auto g1 = autograd::grad({y4}, {x4}, {}, /*retain_graph=*/true);
  auto g2 = autograd::grad({y4}, {x4});
  kt::expect_values(g2[0], {2});
  CHECK_KILN_ERROR(autograd::grad({y4}, {x4}), "retain_graph");
}

TEST_CASE("the graph and its saved tensors are freed after backward") {
  Tensor x = leaf64({1, 2, 3});
  std::weak_ptr<Storage> saved;
  Tensor y;
  {
    Tensor t = x * 2.0;
    saved = t.storage();
    y = (t * t).sum();
  }
  CHECK_FALSE(saved.expired());  // held by mul's saved tensors
  y.backward();
  CHECK(saved.expired());
  kt::expect_values(x.grad(), {8, 16, 24});

  Tensor y2;
  {
    Tensor t = x * 2.0;
    saved = t.storage();
    y2 = (t * t).sum();
  }
  y2.backward(Tensor(), /*retain_graph=*/true);
  CHECK_FALSE(saved.expired());
  // Dropping the root drops the graph.
  y2 = Tensor();
  CHECK(saved.expired());
}

TEST_CASE("NoGradGuard and GradModeGuard") {
  Tensor x = leaf64({1, 2});
  {
    NoGradGuard ng;
    CHECK_FALSE(autograd::grad_enabled());
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(y.is_leaf());
    Tensor s = softmax(matmul(x.unsqueeze(0), x.unsqueeze(1)), 0);
    CHECK_FALSE(s.requires_grad());
    {
      GradModeGuard on(true);
      CHECK((x * 2.0).requires_grad());
    }
    { NoGradGuard nested; }
    CHECK_FALSE(autograd::grad_enabled());
    CHECK_KILN_ERROR(y.sum().backward(), "does not require grad");
  }
  CHECK(autograd::grad_enabled());
  Tensor y = x * 2.0;
  CHECK(y.requires_grad());
  CHECK(y.grad_fn() != nullptr);
  CHECK(std::string(y.grad_fn()->name()) == "mul");
  CHECK_FALSE(y.is_leaf());
  // A leaf updated under no-grad stays a leaf that requires grad.
  {
    NoGradGuard ng;
    x.mul_(2.0);
  }
  CHECK(x.is_leaf());
  CHECK(x.requires_grad());
}

TEST_CASE("detach") {
  Tensor x = leaf64({1, 2, 3});
  Tensor y = x * 2.0;
  Tensor d = y.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.grad_fn() == nullptr);
  CHECK(d.is_leaf());
  CHECK(d.storage() == y.storage());
  kt::expect_values(d, {2, 4, 6});
  // Gradient does not flow through the detached branch.
  (y * d).sum().backward();
  kt::expect_values(x.grad(), {4, 8, 12});  // d/dx (2x * const) with const = 2x
  // A detached tensor can start its own graph.
  Tensor e = x.detach().requires_grad_();
  (e * e).sum().backward();
  kt::expect_values(e.grad(), {2, 4, 6});
  kt::expect_values(x.grad(), {4, 8, 12});
}

TEST_CASE("retain_grad on a non-leaf") {
  Tensor x = leaf64({1, 2});
  Tensor h = x * 3.0;
  Tensor k = h + 1.0;
  h.retain_grad();
  CHECK(h.retains_grad());
  (k * k).sum().backward();
  REQUIRE(h.grad().defined());
  kt::expect_values(h.grad(), {2 * 4, 2 * 7});
  CHECK_FALSE(k.grad().defined());  // not retained
  kt::expect_values(x.grad(), {3 * 8, 3 * 14});
  x.retain_grad();  // leaves: a no-op
  CHECK_KILN_ERROR(f64({1}).retain_grad(),
                   "[retain_grad] cannot retain the grad of a tensor that does not require grad");
  // Retained grads accumulate too.
  Tensor x2 = leaf64({1});
  Tensor h2 = x2 * 2.0;
  h2.retain_grad();
  Tensor y2 = (h2 * h2).sum();
  y2.backward(Tensor(), true);
  y2.backward();
  kt::expect_values(h2.grad(), {8});
}

TEST_CASE("requires_grad_ rules") {
  CHECK_KILN_ERROR(arange(3).requires_grad_(),
                   "[requires_grad_] only floating point tensors can require gradients, got int64");
  CHECK_KILN_ERROR(tensor({true}).requires_grad_(), "got bool");
  Tensor i = arange(3);
  i.requires_grad_(false);  // always allowed
  CHECK_FALSE(i.requires_grad());
  Tensor x = leaf64({1});
  Tensor y = x * 2.0;
  CHECK_KILN_ERROR(y.requires_grad_(false),
                   "[requires_grad_] can only change requires_grad of leaf tensors (this one was produced by 'mul')");
  Tensor f = zeros({2}, TensorOptions(kFloat64).requires_grad(true));
  CHECK(f.requires_grad());
  CHECK(f.is_leaf());
  x.requires_grad_(false);
  CHECK_FALSE((x * 2.0).requires_grad());
}

TEST_CASE("version counter: modifying a saved tensor in place is caught") {
  Tensor x = leaf64({1, 2, 3});
  Tensor a = x * 1.0;
  Tensor y = (a * a).sum();  // mul saves a
  {
    NoGradGuard ng;
    a.add_(1.0);
  }
  CHECK_KILN_ERROR(y.backward(), "modified by an in-place operation");
  // A saved leaf.
  Tensor w = leaf64({1, 2});
  Tensor y2 = (w * w).sum();
  {
    NoGradGuard ng;
    w.mul_(2.0);
  }
  CHECK_KILN_ERROR(y2.backward(), "modified by an in-place operation");
  // Through a view: the version lives on the storage.
  Tensor v = leaf64({1, 2, 3, 4});
  Tensor b = v * 1.0;
  Tensor y4 = (b.exp() * 1.0).sum();  // exp saves its input and output
  {
    NoGradGuard ng;
    b.narrow(0, 1, 2).fill_(0.0);
  }
  CHECK_KILN_ERROR(y4.backward(), "modified by an in-place operation");
  // The message names the op whose saved tensor changed.
  Tensor p = leaf64({0.1, 0.2});
  Tensor q = p * 1.0;
  Tensor r = q.exp();
  Tensor s = r.sum();
  {
    NoGradGuard ng;
    r.mul_(2.0);  // exp saved its output
  }
  CHECK_KILN_ERROR(s.backward(), "[exp]");
  // Modifying something that was not saved is fine.
  Tensor m = leaf64({1, 2});
  Tensor n = m + 1.0;  // add saves nothing
  Tensor t = n.sum();
  {
    NoGradGuard ng;
    n.fill_(5.0);
  }
  t.backward();
  kt::expect_values(m.grad(), {1, 1});
}

TEST_CASE("backward through non-differentiable outputs fails clearly") {
  Tensor x = leaf64({1, 3, 2});
  Tensor am = argmax(x);
  CHECK(am.dtype() == kInt64);
  CHECK_FALSE(am.requires_grad());
  CHECK_KILN_ERROR(am.backward(), "does not require grad");
  CHECK_KILN_ERROR(am.to(kFloat64).backward(), "does not require grad");
  Tensor c = gt(x, scalar_tensor(1.5, kFloat64));
  CHECK(c.dtype() == kBool);
  CHECK_FALSE(c.requires_grad());
  CHECK_KILN_ERROR(c.to(kFloat64).sum().backward(), "does not require grad");
  CHECK_KILN_ERROR(sum(x == x).backward(), "does not require grad");
  auto mi = max(x, 0);
  CHECK(mi.values.requires_grad());
  CHECK_FALSE(mi.indices.requires_grad());
  CHECK_KILN_ERROR(autograd::grad({am.to(kFloat64)}, {x}), "does not require grad");
}

TEST_CASE("anomaly mode names the forward op that produced NaN/Inf gradients") {
  {
    AnomalyGuard ag;
    CHECK(autograd::anomaly_mode());
    Tensor x = leaf64({0.0, 1.0});
    Tensor y = sqrt(x).sum();
    CHECK_KILN_ERROR(y.backward(), "'sqrt'");
    Tensor x2 = leaf64({0.0, 1.0});
    CHECK_KILN_ERROR(log(x2).sum().backward(), "'log'");
    Tensor x3 = leaf64({0.0, 1.0});
    CHECK_KILN_ERROR((log(x3) * 2.0).sum().backward(), "[autograd anomaly] the backward of 'log' produced NaN or Inf");
    // Finite gradients pass.
    Tensor ok = leaf64({1.0, 4.0});
    sqrt(ok).sum().backward();
    kt::expect_values(ok.grad(), {0.5, 0.25});
  }
  CHECK_FALSE(autograd::anomaly_mode());
  // Without anomaly mode the Inf simply propagates.
  Tensor x = leaf64({0.0, 1.0});
  log(x).sum().backward();
  auto g = x.grad().to_vector<double>();
  CHECK(std::isinf(g[0]));
  CHECK(g[1] == 1.0);
}

TEST_CASE("custom Function: README Cube") {
  Tensor x = leaf64({1, 2, -3});
  Tensor y = Cube::apply(x);
  kt::expect_values(y, {1, 8, -27});
  CHECK(y.requires_grad());
  CHECK(std::string(y.grad_fn()->name()) == "cube");
  y.sum().backward();
  kt::expect_values(x.grad(), {3, 12, 27});
  auto xl = kt::leaf({2, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return Cube::apply(in[0]); }, {xl});
  auto nc = kt::noncontig_leaf({3, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return Cube::apply(in[0].t()); }, {nc});
  // Backward is made of differentiable ops, so the second derivative is 6x.
  Tensor x2 = leaf64({1.5});
  Tensor g1 = autograd::grad({Cube::apply(x2)}, {x2}, {}, false, /*create_graph=*/true)[0];
  kt::expect_values(g1, {6.75});
  Tensor g2 = autograd::grad({g1}, {x2})[0];
  kt::expect_values(g2, {9});
  // No input requires grad, or grad mode off: nothing recorded.
  Tensor c = Cube::apply(f64({2}));
  CHECK_FALSE(c.requires_grad());
  kt::expect_values(c, {8});
  {
    NoGradGuard ng;
    CHECK_FALSE(Cube::apply(x).requires_grad());
  }
  // Its graph is freed like any other.
  Tensor x3 = leaf64({1.0});
  Tensor y3 = Cube::apply(x3).sum();
  y3.backward();
  CHECK_KILN_ERROR(y3.backward(), "retain_graph");
}

TEST_CASE("custom Function: several inputs / saved output / ctx.data / version check") {
  Tensor a = leaf64({1, 2}), b = leaf64({3, 4});
  Tensor y = ScaledMul::apply(a, b, 0.5);
  kt::expect_values(y, {1.5, 4});
  y.sum().backward();
  kt::expect_values(a.grad(), {1.5, 2});
  kt::expect_values(b.grad(), {0.5, 1});
  auto la = kt::leaf({3}, 1), lb = kt::leaf({3}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return ScaledMul::apply(in[0], in[1], 2.0); }, {la, lb});
  // Only one input requires grad.
  kt::grad_ok([](const std::vector<Tensor>& in) { return ScaledMul::apply(in[0], f64({1, 2, 3}), 2.0); }, {la});
  // A saved input modified in place.
  Tensor c = leaf64({1, 2}), d = leaf64({3, 4});
  Tensor z = ScaledMul::apply(c, d, 1.0);
  {
    NoGradGuard ng;
    d.add_(1.0);
  }
  CHECK_KILN_ERROR(z.sum().backward(), "modified by an in-place operation");
  // The saved output modified in place.
  Tensor e = leaf64({1, 2}), f = leaf64({3, 4});
  Tensor w = ScaledMul::apply(e, f, 1.0);
  {
    NoGradGuard ng;
    w.mul_(3.0);
  }
  CHECK_KILN_ERROR(w.sum().backward(), "[scaled_mul]");
}

TEST_CASE("custom Function: bad gradients and non-differentiable outputs") {
  Tensor x = leaf64({1, 2, 3});
  CHECK_KILN_ERROR(BadShape::apply(x).sum().backward(),
                   "[bad_shape] backward returned a gradient of shape () for input 0 of shape (3,)");
  Tensor x2 = leaf64({1, 2, 3});
  CHECK_KILN_ERROR(BadCount::apply(x2).sum().backward(),
                   "[bad_count] backward returned 2 gradients but forward took 1");

  Tensor v = leaf64({1, 5, 2});
  auto outs = MaxWithIndex::apply(v);
  REQUIRE(outs.size() == 2);
  kt::expect_values(outs[0], {5});
  kt::expect_values(outs[1], {1});
  CHECK(outs[0].requires_grad());
  CHECK_FALSE(outs[1].requires_grad());
  CHECK_KILN_ERROR(outs[1].backward(), "does not require grad");
  (outs[0] * 2.0).backward();
  kt::expect_values(v.grad(), {0, 2, 0});
  // Using both outputs: only the differentiable one carries gradient.
  Tensor v2 = leaf64({4, 1, 2});
  auto o2 = MaxWithIndex::apply(v2);
  (o2[0] * o2[1] + o2[0]).backward();
  kt::expect_values(v2.grad(), {1, 0, 0});

  Tensor x3 = leaf64({1, 2});
  Float32Grad::apply(x3).sum().backward();
  CHECK(x3.grad().dtype() == kFloat64);
  kt::expect_values(x3.grad(), {3, 3});
}

TEST_CASE("autograd::grad and higher derivatives") {
  // d/dx x^3 = 3x^2, d2 = 6x, d3 = 6
  Tensor x = leaf64({2.0, -1.0});
  Tensor y = (x * x * x).sum();
  Tensor g1 = autograd::grad({y}, {x}, {}, false, /*create_graph=*/true)[0];
  kt::expect_values(g1, {12, 3});
  CHECK(g1.requires_grad());
  Tensor g2 = autograd::grad({g1.sum()}, {x}, {}, false, true)[0];
  kt::expect_values(g2, {12, -6});
  Tensor g3 = autograd::grad({g2.sum()}, {x})[0];
  kt::expect_values(g3, {6, 6});
  CHECK_FALSE(x.grad().defined());  // grad() never accumulates

  // With pow and an explicit grad_output
  Tensor p = leaf64({3.0});
  Tensor q = p.pow(3);
  Tensor dq = autograd::grad({q}, {p}, {f64({1.0})}, false, true)[0];
  kt::expect_values(autograd::grad({dq}, {p})[0], {18});

  // backward(create_graph) leaves a differentiable .grad
  Tensor z = leaf64({1.5});
  (z * z * z).sum().backward(Tensor(), false, /*create_graph=*/true);
  REQUIRE(z.grad().defined());
  CHECK(z.grad().requires_grad());
  kt::expect_values(autograd::grad({z.grad()}, {z})[0], {9});

  // Several inputs and outputs
  Tensor a = leaf64({1, 2}), b = leaf64({3});
  auto gs = autograd::grad({(a * b).sum(), (b * b).sum()}, {a, b});
  kt::expect_values(gs[0], {3, 3});
  kt::expect_values(gs[1], {3 + 6});
  // Unused inputs
  Tensor u = leaf64({1});
  auto gu = autograd::grad({(a * 2.0).sum()}, {a, u});
  CHECK_FALSE(gu[1].defined());
  CHECK_KILN_ERROR(autograd::grad({(a * 2.0).sum()}, {a, u}, {}, false, false, /*allow_unused=*/false),
                   "[grad] input 1 is not reachable");
  CHECK_KILN_ERROR(autograd::grad({(a * 2.0).sum()}, {f64({1})}), "[grad] input 0 does not require grad");
  CHECK_KILN_ERROR(autograd::grad({a * 2.0}, {a}),
                   "[grad] grad_outputs can be implicitly created only for one-element outputs");
  // A leaf that is its own output: the gradient is the seed.
  Tensor self = leaf64({1, 2});
  kt::expect_values(autograd::grad({self}, {self}, {f64({5, 7})})[0], {5, 7});
  kt::expect_values(autograd::grad({self.sum()}, {self})[0], {1, 1});
  self.backward(f64({2, 3}));
  kt::expect_values(self.grad(), {2, 3});
  // Gradient w.r.t. an intermediate
  Tensor h = a * 3.0;
  kt::expect_values(autograd::grad({(h * h).sum()}, {h})[0], {6, 12});
}

TEST_CASE("shared inputs and diamonds sum their gradients") {
  Tensor x = leaf64({1, 2, 3});
  (x * x + x).sum().backward();
  kt::expect_values(x.grad(), {3, 5, 7});

  // diamond: a = 2x; y = exp(a) + 3a
  Tensor x2 = leaf64({0.1, 0.2});
  Tensor a = x2 * 2.0;
  Tensor b = a.exp();
  Tensor c = a * 3.0;
  (b + c).sum().backward();
  kt::expect_values(x2.grad(), {2 * (std::exp(0.2) + 3), 2 * (std::exp(0.4) + 3)}, 1e-12);

  // Deeper: one node reached along many paths of different lengths.
  Tensor x3 = leaf64({0.5});
  Tensor h = x3 * 1.0;
  Tensor acc = h;
  for (int i = 0; i < 5; ++i) acc = acc * h;  // h^6
  (acc + h).sum().backward();
  kt::expect_values(x3.grad(), {6 * std::pow(0.5, 5) + 1}, 1e-12);

  // Outputs of one multi-output op used on different paths.
  Tensor x4 = leaf64({1, 2, 3, 4});
  auto parts = split(x4, 2);
  (parts[0] * parts[1] + parts[1]).sum().backward();
  kt::expect_values(x4.grad(), {3, 4, 2, 3});
  // Only one output of a multi-output op used: the other gets zeros.
  Tensor x5 = leaf64({1, 2, 3, 4});
  auto mi = max(x5.reshape({2, 2}), 1);
  (mi.values * 2.0).sum().backward();
  kt::expect_values(x5.grad(), {0, 2, 0, 2});
  // A gradcheck over a diamond
  auto l = kt::leaf({3});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor t = in[0] * in[0];
        return t.exp() * t + softmax(t, 0);
      },
      {l});
}

TEST_CASE("gradcheck itself: catches a wrong gradient / validates its inputs") {
  auto x = kt::leaf({3});
  autograd::GradcheckOptions o;
  o.raise_on_failure(false);
  auto wrong = [](const std::vector<Tensor>& in) { return WrongGrad::apply(in[0]); };
  CHECK_FALSE(autograd::gradcheck(wrong, {x}, o));
  CHECK_KILN_ERROR(autograd::gradcheck(wrong, {x}), "[gradcheck] Jacobian mismatch for input 0 (shape (3,))");
  auto ident = [](const std::vector<Tensor>& in) { return in[0] * 1.0; };
  CHECK(autograd::gradcheck(ident, {x}));
  CHECK_KILN_ERROR(autograd::gradcheck(ident, {tensor({1.f}).requires_grad_()}),
                   "[gradcheck] input 0 is float32; gradcheck needs float64 inputs");
  CHECK_KILN_ERROR(autograd::gradcheck(ident, {f64({1})}), "[gradcheck] no input requires grad");
  // Grad mode inside fn is the caller's: fn may take gradients itself (double backward).
  CHECK(autograd::gradcheck(
      [](const std::vector<Tensor>& in) {
        return autograd::grad({(in[0] * in[0] * in[0]).sum()}, {in[0]}, {}, false, true)[0];
      },
      {x}));
}

TEST_CASE("create_graph backward stores a grad that later accumulation can add into") {
  Tensor x = zeros({3}, kFloat64).requires_grad_();
  x.sum().backward(Tensor(), false, /*create_graph=*/true);
  CHECK(x.grad().is_contiguous());
  x.sum().backward();
  kt::expect_values(x.grad(), {2, 2, 2});
}

TEST_CASE("backward after the leaf itself was dropped runs and drops its gradient") {
  Tensor y, w = zeros({2}, kFloat64).requires_grad_();
  {
    Tensor x = ones({2}, kFloat64).requires_grad_();
    y = (x * w).sum();
  }
  y.backward();
  kt::expect_values(w.grad(), {1, 1});
}

namespace {
// Returns, as x's gradient, a tensor it also keeps (the engine must not add into it).
Tensor g_kept;
struct KeepGrad : autograd::Function<KeepGrad> {
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 1.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) {
    g_kept = g[0] * 2.0;
    return {g_kept};
  }
};
}  // namespace

TEST_CASE("engine: gradients reaching one input are summed into a buffer only nothing else holds") {
  // y feeds three consumers; backward runs the latest-created first, so KeepGrad's gradient
  // (also held by the Function) reaches y's buffer first and must keep its value, while the
  // fresh sum that replaces it takes the third one in place.
  Tensor x = leaf64({1, 2, 3});
  Tensor y = x * 1.0;
  Tensor a = (y * 3.0).sum();
  Tensor b = (y * y).sum();
  Tensor c = KeepGrad::apply(y).sum();
  (a + b + c).backward();
  kt::expect_values(x.grad(), {3 + 2 + 2, 3 + 4 + 2, 3 + 6 + 2});
  kt::expect_values(g_kept, {2, 2, 2});
  g_kept = Tensor();
}
