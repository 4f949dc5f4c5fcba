// A two-layer MLP learns to tell three concentric rings of 2-D points apart.
// Everything is plain kiln: tensors, autograd, cross_entropy and a hand-written
// SGD-with-momentum update (the optim/ and nn/ modules build on exactly this).
//
//   build/examples/mlp --steps 300 --threads 2
//   build/examples/mlp --precision bf16      # the matmuls in bfloat16 under kiln::autocast
// (No fp16 here: float16 needs loss scaling, which kiln::amp::GradScaler does for an optimizer;
// the other examples take --precision fp16.)
#include <CLI/CLI.hpp>
#include <cmath>
#include <kiln/kiln.hpp>
#include <string>

using namespace kiln;

// n points per ring; ring k has radius k + 1 with noise. x: (3n, 2), labels: (3n,)
std::pair<Tensor, Tensor> make_rings(std::int64_t n, Generator& gen) {
  Tensor angle = rand({3 * n}, kFloat32, &gen) * (2 * M_PI);
  Tensor label = cat({zeros({n}), ones({n}), full({n}, 2.0)});  // 0,..,0,1,..,1,2,..,2
  Tensor radius = label + 1.0 + randn({3 * n}, kFloat32, &gen) * 0.15;
  Tensor x = stack({radius * cos(angle), radius * sin(angle)}, 1);
  return {x, label.to(kInt64)};
}

int main(int argc, char** argv) {
  CLI::App app{"kiln demo: an MLP classifies three rings of points"};
  int steps = 300, batch = 256, threads = 2, hidden = 64;
  double lr = 0.1;
  std::uint64_t seed = 0;
  std::string precision = "fp32";
  app.add_option("--steps", steps, "training steps")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber);
  app.add_option("--lr", lr, "learning rate")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "hidden units")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "random seed");
  app.add_option("--threads", threads, "CPU threads")->check(CLI::PositiveNumber);
  app.add_option("--precision", precision, "fp32, or bf16 (matmuls in bfloat16, float32 weights and loss)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const bool bf16 = precision == "bf16";
  set_num_threads(threads);

  Generator gen(seed);
  auto [x_train, y_train] = make_rings(2000, gen);
  auto [x_test, y_test] = make_rings(500, gen);

  // Parameters: (in, out) weights with 1/sqrt(fan_in) scaling, zero biases.
  auto param = [&](Shape s, double scale) { return (randn(s, kFloat32, &gen) * scale).requires_grad_(); };
  std::vector<Tensor> params = {param({2, hidden}, 1 / std::sqrt(2.0)),
                                zeros({hidden}).requires_grad_(),
                                param({hidden, hidden}, 1 / std::sqrt(double(hidden))),
                                zeros({hidden}).requires_grad_(),
                                param({hidden, 3}, 1 / std::sqrt(double(hidden))),
                                zeros({3}).requires_grad_()};
  auto model = [&](const Tensor& x) {
    Tensor h = relu(matmul(x, params[0]) + params[1]);
    h = relu(matmul(h, params[2]) + params[3]);
    return matmul(h, params[4]) + params[5];  // logits (N, 3)
  };
  std::vector<Tensor> velocity;
  for (auto& p : params) velocity.push_back(zeros_like(p));

  const std::int64_t n_train = x_train.size(0);
  for (int step = 1; step <= steps; ++step) {
    Tensor idx = randint(0, n_train, {batch}, kInt64, &gen);
    Tensor loss;
    {
      auto mixed = autocast(kBFloat16, bf16);  // enabled only for --precision bf16
      loss = cross_entropy(model(index_select(x_train, 0, idx)), index_select(y_train, 0, idx));
    }
    for (auto& p : params) p.set_grad(Tensor());
    loss.backward();
    {
      NoGradGuard no_grad;  // the update itself is not part of the graph
      for (std::size_t i = 0; i < params.size(); ++i) {
        velocity[i].mul_(0.9).add_(params[i].grad());
        params[i].sub_(velocity[i] * lr);
      }
    }
    if (step == 1 || step % 50 == 0 || step == steps) fmt::print("step {:4d}  loss {:.4f}\n", step, loss.item<float>());
  }
  NoGradGuard no_grad;
  auto mixed = autocast(kBFloat16, bf16);
  Tensor pred = argmax(model(x_test), 1);
  double acc = sum(eq(pred, y_test)).item<double>() / static_cast<double>(y_test.numel());
  fmt::print("test accuracy: {:.3f}\n", acc);
  return 0;
}
