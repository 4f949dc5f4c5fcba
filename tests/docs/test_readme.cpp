// The README's examples, compiled and run as written.
#include "test_util.hpp"

using namespace kiln;

namespace {
struct Cube : kiln::autograd::Function<Cube> {
  static const char* name() { return "cube"; }
  static Tensor forward(kiln::autograd::Context& ctx, const Tensor& x) {
    ctx.save_for_backward({x});
    return x * x * x;
  }
  static std::vector<Tensor> backward(kiln::autograd::Context& ctx, const std::vector<Tensor>& g) {
    Tensor x = ctx.saved()[0];
    return {g[0] * 3.0 * x * x};
  }
};
}  // namespace

TEST_CASE("README: the MLP example trains") {
  manual_seed(0);
  Tensor x = randn({256, 1});
  Tensor y = x * 3.0 - 1.0 + randn({256, 1}) * 0.1;
  Tensor w1 = (randn({1, 16}) * 0.5).requires_grad_(), b1 = zeros({16}).requires_grad_();
  Tensor w2 = (randn({16, 1}) * 0.25).requires_grad_(), b2 = zeros({1}).requires_grad_();
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    Tensor pred = matmul(tanh(matmul(x, w1) + b1), w2) + b2;
    Tensor loss = mse_loss(pred, y);
    for (Tensor p : {w1, b1, w2, b2}) p.set_grad(Tensor());
    loss.backward();
    NoGradGuard no_grad;
    for (Tensor p : {w1, b1, w2, b2}) p.sub_(p.grad() * 0.05);
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  CHECK(last < 0.1f * first);
  CHECK(last < 0.1f);
}

TEST_CASE("README: custom Function with gradcheck") {
  Tensor x = randn({4}).requires_grad_();
  Tensor y = Cube::apply(x);
  y.sum().backward();
  auto xv = x.to_vector<float>();
  auto gv = x.grad().to_vector<float>();
  for (std::size_t i = 0; i < xv.size(); ++i) CHECK(gv[i] == doctest::Approx(3 * xv[i] * xv[i]).epsilon(1e-5));
  Tensor x64 = randn({4}, kFloat64).requires_grad_();
  CHECK(kiln::autograd::gradcheck([](auto& in) { return Cube::apply(in[0]); }, {x64}));
  CHECK(y.grad_fn() != nullptr);
  CHECK(std::string(y.grad_fn()->name()) == "cube");
}
