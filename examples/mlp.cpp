// A two-layer MLP learns to tell three concentric rings of 2-D points apart.
// Everything is plain kiln: tensors, autograd, cross_entropy and a hand-written
// SGD-with-momentum update (the optim/ and nn/ modules build on exactly this).
//
//   build/examples/mlp --steps 300 --threads 2
//   build/examples/mlp --precision bf16      # the matmuls in bfloat16 under kiln::autocast
//   build/examples/mlp --out runs/mlp        # + CSV log, TensorBoard events, PNG loss curve
// (No fp16 here: float16 needs loss scaling, which kiln::amp::GradScaler does for an optimizer;
// the other examples take --precision fp16.)
#include <cmath>
#include <string>

#include "common/common.hpp"

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
  examples::Flags flags{.steps = 300, .batch = 256, .lr = 0.1};
  std::int64_t hidden = 64;
  examples::add_common_flags(app, flags);
  app.add_option("--hidden", hidden, "hidden units")->check(examples::whole(1, 1 << 16))->capture_default_str();

  return examples::run(app, argc, argv, [&] {
    if (flags.precision == "fp16")
      throw examples::UsageError(
          "--precision fp16: mlp's hand-written SGD has no loss scaler; use fp32 or bf16 here (the other examples "
          "take fp16)");
    Device dev = examples::setup(flags);
    const bool bf16 = flags.precision == "bf16";
    Generator gen(flags.seed);
    auto [x_train, y_train] = make_rings(2000, gen);
    auto [x_test, y_test] = make_rings(500, gen);
    x_train = x_train.to(dev), y_train = y_train.to(dev), x_test = x_test.to(dev), y_test = y_test.to(dev);

    // Parameters: (in, out) weights with 1/sqrt(fan_in) scaling, zero biases.
    auto param = [&](Shape s, double scale) { return (randn(s, kFloat32, &gen) * scale).to(dev).requires_grad_(); };
    auto bias = [&](std::int64_t n) { return zeros({n}, TensorOptions(kFloat32).device(dev)).requires_grad_(); };
    std::vector<Tensor> params = {param({2, hidden}, 1 / std::sqrt(2.0)),
                                  bias(hidden),
                                  param({hidden, hidden}, 1 / std::sqrt(double(hidden))),
                                  bias(hidden),
                                  param({hidden, 3}, 1 / std::sqrt(double(hidden))),
                                  bias(3)};
    auto model = [&](const Tensor& x) {
      Tensor h = relu(matmul(x, params[0]) + params[1]);
      h = relu(matmul(h, params[2]) + params[3]);
      return matmul(h, params[4]) + params[5];  // logits (N, 3)
    };
    std::vector<Tensor> velocity;
    for (auto& p : params) velocity.push_back(zeros_like(p));
    fmt::print("mlp: {} hidden units, batch {}, {} on {} in {}\n", hidden, flags.batch,
               examples::count_of(flags.steps, "step"), dev.str(), flags.precision);

    examples::RunLog log(flags, "mlp", {"step", "loss"});
    const std::int64_t n_train = x_train.size(0), report_every = examples::eval_interval(flags);
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      Tensor idx = randint(0, n_train, {flags.batch}, kInt64, &gen).to(dev);
      Tensor loss;
      {
        auto mixed = autocast(dev, kBFloat16, bf16);  // enabled only for --precision bf16
        loss = cross_entropy(model(index_select(x_train, 0, idx)), index_select(y_train, 0, idx));
      }
      for (auto& p : params) p.set_grad(Tensor());
      loss.backward();
      {
        NoGradGuard no_grad;  // the update itself is not part of the graph
        for (std::size_t i = 0; i < params.size(); ++i) {
          velocity[i].mul_(0.9).add_(params[i].grad());
          params[i].sub_(velocity[i] * flags.lr);
        }
      }
      const double step_loss = loss.item<double>();
      examples::check_loss(step_loss, step, flags);
      if (step == 1 || step % report_every == 0 || step == flags.steps)
        fmt::print("{}\n", log.row({double(step), step_loss}));
    }
    log.close();
    io::LineChart chart("mlp: three rings", "step", "cross-entropy (nats)");
    chart.add("training loss (one batch)", log.metrics.column("step"), log.metrics.column("loss"));
    examples::write_chart(flags, chart, "mlp_loss.png", "loss chart, PNG");

    NoGradGuard no_grad;
    auto mixed = autocast(dev, kBFloat16, bf16);
    Tensor pred = argmax(model(x_test), 1);
    double acc = sum(eq(pred, y_test)).item<double>() / static_cast<double>(y_test.numel());
    fmt::print("test accuracy: {:.3f}\n", acc);
  });
}
