// nn::gradcheck (a module's parameters checked by finite differences, named in failures),
// custom Functions with broadcast inputs, and nn::init on parameters without a NoGradGuard.
#include "test_util.hpp"

using namespace kiln;

namespace {

// x * w with w broadcast over x's leading dims; `reduce` = false forgets sum_to_shape.
template <bool reduce>
struct Scale : autograd::Function<Scale<reduce>> {
  static const char* name() { return "scale"; }
  static Tensor forward(autograd::Context& ctx, const Tensor& x, const Tensor& w) {
    ctx.save_for_backward({x, w});
    return x * w;
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& g) {
    auto s = ctx.saved();
    Tensor gw = g[0] * s[0];
    return {sum_to_shape(g[0] * s[1], s[0].shape()), reduce ? sum_to_shape(gw, s[1].shape()) : gw};
  }
};

// w's gradient deliberately doubled: a wrong backward gradcheck must name.
struct BadScale : autograd::Function<BadScale> {
  static Tensor forward(autograd::Context& ctx, const Tensor& x, const Tensor& w) {
    ctx.save_for_backward({x, w});
    return x * w;
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& g) {
    auto s = ctx.saved();
    return {sum_to_shape(g[0] * s[1], s[0].shape()), sum_to_shape(g[0] * s[0] * 2.0, s[1].shape())};
  }
};

// A layer with two parameters, its scale applied through a custom Function.
template <typename Fn>
struct ScaledLinearImpl : nn::Module {
  ScaledLinearImpl() : nn::Module("ScaledLinear") {
    weight = register_parameter("weight", randn({3, 4}, kFloat64));
    scale = register_parameter("scale", rand({3}, kFloat64) + 0.5);
  }
  Tensor forward(const Tensor& x) { return Fn::apply(linear(x, weight), scale); }
  Tensor weight, scale;
};

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

}  // namespace

TEST_CASE("custom Function: broadcast inputs need sum_to_shape in backward") {
  Tensor x = kt::leaf({2, 3, 4}, 1), w = kt::leaf({4}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return Scale<true>::apply(in[0], in[1]); }, {x, w});
  Tensor y = Scale<false>::apply(x, w);
  CHECK_KILN_ERROR(y.sum().backward(),
                   "[scale] backward returned a gradient of shape (2, 3, 4) for input 1 of shape (4,)");
}

TEST_CASE("nn::gradcheck checks a module's parameters and names the one that is wrong") {
  auto good = std::make_shared<ScaledLinearImpl<Scale<true>>>();
  Tensor x = kt::leaf({2, 5, 4}, 3);
  auto run_good = [&](const std::vector<Tensor>& in) { return good->forward(in[0]); };
  CHECK(nn::gradcheck(*good, run_good, {x}));
  // the parameters alone (an input that does not require grad)
  CHECK(nn::gradcheck(*good, run_good, {x.detach()}));

  auto bad = std::make_shared<ScaledLinearImpl<BadScale>>();
  auto run_bad = [&](const std::vector<Tensor>& in) { return bad->forward(in[0]); };
  CHECK_KILN_ERROR(nn::gradcheck(*bad, run_bad, {x}), "[gradcheck] Jacobian mismatch for parameter scale (shape (3,))");
  CHECK_FALSE(nn::gradcheck(*bad, run_bad, {x}, autograd::GradcheckOptions().raise_on_failure(false)));
  // a frozen parameter is left out: the wrong gradient of `scale` is then never compared
  bad->scale.requires_grad_(false);
  CHECK(nn::gradcheck(*bad, run_bad, {x}));
}

TEST_CASE("nn::gradcheck takes holders and says how to fix a float32 module") {
  nn::Linear lin(3, 2);
  Tensor x = kt::leaf({4, 3}, 5);
  Fn run = [&](const std::vector<Tensor>& in) { return lin(in[0]); };
  CHECK_KILN_ERROR(nn::gradcheck(lin, run, {x}),
                   "[gradcheck] parameter weight is float32 on cpu; gradcheck needs float64 on the cpu: call "
                   "module->to(kFloat64) first");
  lin->to(kFloat64);
  CHECK(nn::gradcheck(lin, run, {x}));
  CHECK_KILN_ERROR(nn::gradcheck(lin, run, {x}, autograd::GradcheckOptions().input_names({"a", "b"})),
                   "[gradcheck] 2 input names for 1 inputs");
  // input names reach the messages of autograd::gradcheck too
  Fn wrong = [](const std::vector<Tensor>& in) { return in[0] * 2.0 + (in[0] * 0.5).detach(); };
  CHECK_KILN_ERROR(autograd::gradcheck(wrong, {x}, autograd::GradcheckOptions().input_names({"queries"})),
                   "[gradcheck] Jacobian mismatch for queries (shape (4, 3))");
}

TEST_CASE("nn::init needs no NoGradGuard: parameters stay leaves, nothing is recorded") {
  nn::Linear lin(4, 6);
  REQUIRE(autograd::grad_enabled());
  const std::vector<std::pair<const char*, std::function<void(Tensor)>>> inits = {
      {"zeros_", [](Tensor t) { nn::init::zeros_(t); }},
      {"ones_", [](Tensor t) { nn::init::ones_(t); }},
      {"constant_", [](Tensor t) { nn::init::constant_(t, 0.5); }},
      {"eye_", [](Tensor t) { nn::init::eye_(t); }},
      {"uniform_", [](Tensor t) { nn::init::uniform_(t, -1, 1); }},
      {"normal_", [](Tensor t) { nn::init::normal_(t); }},
      {"truncated_normal_", [](Tensor t) { nn::init::truncated_normal_(t); }},
      {"xavier_uniform_", [](Tensor t) { nn::init::xavier_uniform_(t); }},
      {"xavier_normal_", [](Tensor t) { nn::init::xavier_normal_(t); }},
      {"kaiming_uniform_", [](Tensor t) { nn::init::kaiming_uniform_(t); }},
      {"kaiming_normal_", [](Tensor t) { nn::init::kaiming_normal_(t); }},
      {"lecun_uniform_", [](Tensor t) { nn::init::lecun_uniform_(t); }},
      {"lecun_normal_", [](Tensor t) { nn::init::lecun_normal_(t); }},
      {"variance_scaling_", [](Tensor t) { nn::init::variance_scaling_(t, 2.0, "fan_avg", "uniform"); }},
      {"orthogonal_", [](Tensor t) { nn::init::orthogonal_(t); }},
  };
  for (const auto& [name, init] : inits) {
    CAPTURE(name);
    const Tensor before = lin->weight.clone();
    init(lin->weight);
    CHECK(lin->weight.is_leaf());
    CHECK(lin->weight.requires_grad());
    CHECK(lin->weight.grad_fn() == nullptr);
    CHECK_FALSE(equal(lin->weight, before));  // it did write the parameter
    // and the parameter still trains: the gradient reaches it
    lin->zero_grad();
    lin(ones({2, 4})).sum().backward();
    REQUIRE(lin->weight.grad().defined());
    kt::expect_values(lin->weight.grad(), std::vector<double>(24, 2.0));
  }
}
