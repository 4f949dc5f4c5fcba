// Writing your own layer, start to finish (nn/WRITING_LAYERS.md explains each step):
//   1. a custom autograd Function with its backward: Swish with a learned slope per unit,
//      y = x * sigmoid(beta * x), where beta (hidden,) broadcasts over x (..., hidden);
//   2. a Module with parameters using it: a SwiGLU-style feed-forward
//      w_down(swish_beta(w_gate x) * w_up x);
//   3. gradcheck of both in float64 (the Function alone, then the module's parameters);
//   4. a short training run that must reach its target: a regressor of products of inputs,
//      which no linear model can fit (explained variance must pass 0.95 on held-out data);
//   5. a checkpoint of the trained model written and read back;
//   6. the same SwiGLU plugged into nn::TransformerEncoderLayer as its feed-forward, gradchecked.
//
//   build/examples/custom_layer                  # under a second
//   build/examples/custom_layer --steps 600 --out runs/custom
#include <cstdio>
#include <filesystem>

#include "common/common.hpp"

using namespace kiln;

// ---- 1. a custom Function -------------------------------------------------------------------
// forward runs without recording a graph; backward gets one gradient per output and returns one
// per tensor input, each of that input's shape. beta was broadcast against x in forward, so its
// gradient arrives with x's shape and is summed back with sum_to_shape.
struct BetaSwish : autograd::Function<BetaSwish> {
  static const char* name() { return "beta_swish"; }
  static Tensor forward(autograd::Context& ctx, const Tensor& x, const Tensor& beta) {
    Tensor s = sigmoid(x * beta);
    ctx.save_for_backward({x, beta, s});
    return x * s;
  }
  static std::vector<Tensor> backward(autograd::Context& ctx, const std::vector<Tensor>& grads) {
    const std::vector<Tensor> saved = ctx.saved();
    const Tensor &x = saved[0], &beta = saved[1], &s = saved[2];
    const Tensor ds = s * (1.0 - s);  // sigmoid'(beta * x)
    Tensor grad_x = grads[0] * (s + x * beta * ds);
    Tensor grad_beta = sum_to_shape(grads[0] * x * x * ds, beta.shape());  // (..., hidden) -> (hidden,)
    return {grad_x, grad_beta};
  }
};

// ---- 2. a Module with parameters ------------------------------------------------------------
struct SwiGLUOptions {
  SwiGLUOptions(std::int64_t dim, std::int64_t hidden) : dim_(dim), hidden_(hidden) {}
  KILN_ARG(std::int64_t, dim);
  KILN_ARG(std::int64_t, hidden);
  /// Where the initial weights come from (null = the default generator).
  KILN_ARG(Generator*, generator) = nullptr;
};

class SwiGLUImpl : public nn::Module {
 public:
  SwiGLUImpl(std::int64_t dim, std::int64_t hidden) : SwiGLUImpl(SwiGLUOptions(dim, hidden)) {}
  explicit SwiGLUImpl(const SwiGLUOptions& options_) : nn::Module("SwiGLU"), options(options_) {
    KILN_CHECK(options.dim() > 0 && options.hidden() > 0, "SwiGLU", "need dim > 0 and hidden > 0, got {} and {}",
               options.dim(), options.hidden());
    reset();
  }

  // Parameters are registered by name ("w_gate", ...: what state_dict and the tree print show),
  // then drawn by reset_parameters.
  void reset() override {
    const std::int64_t d = options.dim(), h = options.hidden();
    w_gate = register_parameter("w_gate", empty({h, d}));
    w_up = register_parameter("w_up", empty({h, d}));
    w_down = register_parameter("w_down", empty({d, h}));
    beta = register_parameter("beta", empty({h}));
    reset_parameters();
  }
  // nn::init fills parameters in place under its own NoGradGuard: no guard needed here.
  void reset_parameters() override {
    Generator* gen = options.generator();
    nn::init::xavier_uniform_(w_gate, 1.0, gen);
    nn::init::xavier_uniform_(w_up, 1.0, gen);
    nn::init::xavier_uniform_(w_down, 1.0, gen);
    nn::init::ones_(beta);  // beta = 1: plain SiLU at the start
  }
  std::string extra_repr() const override { return fmt::format("dim={}, hidden={}", options.dim(), options.hidden()); }

  /// x (..., dim) -> (..., dim).
  Tensor forward(const Tensor& x) {
    KILN_CHECK(x.dim() >= 1 && x.size(-1) == options.dim(), "SwiGLU", "input of shape {} does not end in dim={}",
               shape_str(x.shape()), options.dim());
    return linear(BetaSwish::apply(linear(x, w_gate), beta) * linear(x, w_up), w_down);
  }

  SwiGLUOptions options;
  Tensor w_gate, w_up, w_down, beta;
};
KILN_MODULE(SwiGLU);

// The model trained below: a projection in, a residual pre-norm SwiGLU block, a projection out.
class RegressorImpl : public nn::Module {
 public:
  RegressorImpl(std::int64_t in, std::int64_t dim, std::int64_t hidden, Generator* gen)
      : proj_in(register_module("proj_in", nn::Linear(nn::LinearOptions(in, dim).generator(gen)))),
        norm(register_module("norm", nn::RMSNorm(dim))),
        block(register_module("block", SwiGLU(SwiGLUOptions(dim, hidden).generator(gen)))),
        proj_out(register_module("proj_out", nn::Linear(nn::LinearOptions(dim, 1).generator(gen)))) {}
  Tensor forward(const Tensor& x) {
    Tensor h = proj_in(x);
    h = h + block(norm(h));
    return squeeze(proj_out(h), -1);
  }
  nn::Linear proj_in;
  nn::RMSNorm norm;
  SwiGLU block;
  nn::Linear proj_out;
};
KILN_MODULE(Regressor);

// ---- 3. gradcheck ---------------------------------------------------------------------------
void check_gradients() {
  // The Function alone: float64 inputs, beta broadcast over the leading dims.
  Tensor x = randn({2, 3, 5}, kFloat64).requires_grad_();
  Tensor beta = (rand({5}, kFloat64) + 0.5).requires_grad_();
  autograd::gradcheck([](const std::vector<Tensor>& in) { return BetaSwish::apply(in[0], in[1]); }, {x, beta});
  // The module: its input and every parameter (w_gate, w_up, w_down, beta).
  SwiGLU block(4, 6);
  block->to(kFloat64);
  Tensor h = randn({2, 3, 4}, kFloat64).requires_grad_();
  nn::gradcheck(block, [&](const std::vector<Tensor>& in) { return block(in[0]); }, {h});
  fmt::print("gradcheck: BetaSwish and SwiGLU (input + {} parameters) match float64 finite differences\n",
             block->parameters().size());
}

// ---- 4. the task: y = x0 x1 + x2 x3 - x4 x5 + 0.5 sin(3 x6), inputs uniform in [-1, 1] -----------
std::pair<Tensor, Tensor> make_data(std::int64_t n, Generator& gen, Device dev) {
  Tensor x = rand({n, 8}, kFloat32, &gen) * 2.0 - 1.0;
  auto col = [&](std::int64_t i) { return x.select(1, i); };
  Tensor y = col(0) * col(1) + col(2) * col(3) - col(4) * col(5) + sin(col(6) * 3.0) * 0.5;
  return {x.to(dev), y.to(dev)};
}

// 1 - MSE / Var(y): 1 is a perfect fit; the best linear model explains 0.19 of this task (its
// only linear part is the sine's slope).
double explained_variance(Regressor& model, const Tensor& x, const Tensor& y) {
  NoGradGuard no_grad;
  model->eval();
  const double mse = mse_loss(model(x), y).item<double>();
  model->train();
  return 1.0 - mse / var(y).item<double>();
}

int main(int argc, char** argv) {
  CLI::App app{"kiln example: a custom Function and a custom Module, gradchecked, then trained"};
  examples::Flags flags{.steps = 400, .batch = 128, .lr = 3e-3};
  examples::add_common_flags(app, flags);
  double target = 0.95;
  app.add_option("--target", target, "explained variance the held-out set must reach")->capture_default_str();
  return examples::run(app, argc, argv, [&] {
    const Device dev = examples::setup(flags);
    if (flags.precision != "fp32")
      throw examples::UsageError("--precision " + flags.precision + ": this example trains in fp32 only");
    check_gradients();

    Generator gen(flags.seed);
    auto [x_train, y_train] = make_data(4096, gen, dev);
    auto [x_test, y_test] = make_data(1024, gen, dev);
    Regressor model(8, 32, 64, &gen);
    model->to(dev);
    fmt::print("{}\n", model);  // the tree: SwiGLU(dim=32, hidden=64) with w_gate (64, 32), ...

    optim::AdamW opt(model->parameters(), optim::AdamWOptions(flags.lr).weight_decay(0.01));
    optim::WarmupCosineLR sched(opt, flags.steps / 10, flags.steps);
    const std::int64_t eval_every = examples::eval_interval(flags);
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      Tensor idx = randint(0, x_train.size(0), {flags.batch}, kInt64, &gen).to(dev);
      Tensor loss = mse_loss(model(index_select(x_train, 0, idx)), index_select(y_train, 0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
      sched.step();
      if (step % eval_every == 0 || step == flags.steps)
        fmt::print("step {:>4}/{}  loss {:.4f}  held-out explained variance {:.3f}\n", step, flags.steps,
                   loss.item<double>(), explained_variance(model, x_test, y_test));
    }
    const double r2 = explained_variance(model, x_test, y_test);

    // ---- 5. a checkpoint: the holder goes straight into TrainingState -------------------------
    const bool keep = !flags.out.empty();
    const std::string path = keep ? examples::out_path(flags, "custom_layer.ckpt")
                                  : (std::filesystem::temp_directory_path() /
                                     fmt::format("kiln_custom_layer_{}.ckpt", static_cast<long>(getpid())))
                                        .string();
    io::save_checkpoint(path, {.model = model, .optimizer = opt}, flags.steps);
    Regressor restored(8, 32, 64, nullptr);
    restored->to(dev);
    io::load_checkpoint(path, {.model = restored});
    const double r2_restored = explained_variance(restored, x_test, y_test);
    if (keep) fmt::print("wrote {}\n", path);
    else std::remove(path.c_str());

    fmt::print("held-out explained variance: {:.3f} (target {}), restored from the checkpoint: {:.3f}\n", r2, target,
               r2_restored);
    if (r2_restored != r2) throw examples::UsageError("the restored model does not reproduce the trained one");
    if (!(r2 >= target)) throw examples::UsageError(fmt::format("explained variance {:.3f} < {}", r2, target));
    fmt::print("target reached\n");

    // ---- 6. the same layer as a transformer block's feed-forward --------------------------------
    // The builder is called once per layer; the block is registered as "ff" like the built-in one.
    nn::TransformerEncoderLayer encoder(nn::TransformerLayerOptions(8, 2).dropout(0).make_feedforward(
        [](const nn::TransformerLayerOptions& o) { return SwiGLU(o.d_model(), 2 * o.d_model()); }));
    encoder->to(kFloat64);
    Tensor tokens = randn({2, 3, 8}, kFloat64).requires_grad_();
    nn::gradcheck(encoder, [&](const std::vector<Tensor>& in) { return encoder(in[0]); }, {tokens});
    if (!encoder->state_dict().contains("ff.w_gate"))
      throw examples::UsageError("the SwiGLU block is not registered as the layer's \"ff\"");
    fmt::print(
        "TransformerEncoderLayer with a SwiGLU feed-forward (ff.w_gate, ff.w_up, ff.w_down, ff.beta): "
        "gradcheck passed\n");
  });
}
