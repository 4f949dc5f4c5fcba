// The README's examples, compiled and run as written.
#include "test_util.hpp"

#include <cstdio>

#include <kiln/io/safetensors.hpp>

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

TEST_CASE("README: the short example trains a small MLP with AdamW and saves it") {
  manual_seed(0);
  Tensor x = rand({512, 1}) * 2.0 - 1.0;
  Tensor y = sin(x * 3.0) + randn({512, 1}) * 0.05;
  nn::Sequential model(nn::Linear(1, 32), nn::Tanh(), nn::Linear(32, 32), nn::Tanh(), nn::Linear(32, 1));
  optim::AdamW opt(model->parameters(), optim::AdamWOptions(1e-2).weight_decay(1e-4));
  float first = 0, last = 0;
  for (int step = 0; step <= 300; ++step) {
    Tensor loss = mse_loss(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  CHECK(last < 0.05f * first);
  CHECK(last < 0.02f);
  const std::string path = "readme_mlp.safetensors";
  nn::save(model, path);
  nn::Sequential again(nn::Linear(1, 32), nn::Tanh(), nn::Linear(32, 32), nn::Tanh(), nn::Linear(32, 1));
  nn::load(again, path);
  CHECK(kiln::max(kiln::abs(again(x) - model(x))).item<float>() == 0.0f);
  std::remove(path.c_str());
}

TEST_CASE("README: the MultiHeadAttention snippet decodes with a KV cache like the full causal forward") {
  manual_seed(1);
  const std::int64_t B = 2, T = 5;
  Tensor x = randn({B, T, 256});
  std::vector<Tensor> tokens;
  for (std::int64_t t = 0; t < T; ++t) tokens.push_back(x.narrow(1, t, 1));
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(256, 8).num_kv_heads(2).dropout(0.1).rotary(
      nn::RotaryEmbeddingOptions(32)));  // GQA + RoPE
  Tensor y = mha(x, nn::MhaForward().is_causal(true));
  CHECK(y.shape() == Shape{B, T, 256});
  mha->eval();
  NoGradGuard no_grad;
  Tensor full = mha(x, nn::MhaForward().is_causal(true));
  nn::KVCache cache = mha->make_kv_cache(/*batch=*/B, /*max_length=*/512);
  std::vector<Tensor> outs;
  for (const Tensor& tok : tokens) outs.push_back(mha(tok, nn::MhaForward().cache(&cache).is_causal(true)));
  Tensor stepwise = cat(outs, 1);
  CHECK(kiln::max(kiln::abs(stepwise - full)).item<float>() < 1e-5f);
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
