// Low-precision parameters (model->to(kBFloat16)) under the optimizers: float32 master weights
// and state, the master's effect on small updates, state dicts that resume bit for bit, a
// parameter overwritten from outside, and the errors.
#include <unistd.h>

#include <filesystem>
#include <kiln/io/checkpoint.hpp>

#include "test_util.hpp"

using namespace kiln;

namespace {

// SGD steps of lr * 1 on one parameter that starts at 1.
Tensor small_steps(bool master, int steps, DType dtype) {
  Tensor p = ones({4}, dtype).requires_grad_();
  optim::SGD opt({p}, optim::SGDOptions(1e-4));
  opt.master_weights(master);
  for (int i = 0; i < steps; ++i) {
    p.set_grad(ones({4}, dtype));
    opt.step();
  }
  return p;
}

nn::Sequential bf16_model() {
  manual_seed(7);
  nn::Sequential m(nn::Linear(6, 8), nn::LayerNorm(nn::LayerNormOptions({8})), nn::Linear(8, 3));
  m->to(kBFloat16);
  return m;
}

void train(nn::Sequential& m, optim::Optimizer& opt, int steps, std::uint64_t seed) {
  Generator g(seed);
  for (int i = 0; i < steps; ++i) {
    Tensor x = randn({5, 6}, kFloat32, &g).to(kBFloat16);
    Tensor y = randn({5, 3}, kFloat32, &g).to(kBFloat16);
    opt.zero_grad();
    mse_loss(m->forward(x), y).backward();
    opt.step();
  }
}

}  // namespace

TEST_CASE("master weights keep updates smaller than a bfloat16 step, without them they are lost") {
  for (DType dt : {kBFloat16, kFloat16}) {
    INFO("dtype " << dtype_name(dt));
    // 1 - 1e-4 rounds back to 1 in both 16-bit formats, but 100 such steps reach 0.99.
    Tensor lost = small_steps(false, 100, dt);
    CHECK(lost.to(kFloat32).to_vector<float>()[0] == 1.0f);
    Tensor kept = small_steps(true, 100, dt);
    CHECK(kept.dtype() == dt);
    CHECK(kept.to(kFloat32).to_vector<double>()[0] == doctest::Approx(0.99).epsilon(dt == kBFloat16 ? 4e-3 : 5e-4));
  }
}

TEST_CASE("a bfloat16 parameter's optimizer state and master are float32 and the parameter is the master rounded") {
  Tensor p = randn({3, 5}).to(kBFloat16).requires_grad_();
  optim::AdamW opt({p}, optim::AdamWOptions(1e-2));
  p.set_grad(randn({3, 5}).to(kBFloat16));
  opt.step();
  const optim::ParamState* st = opt.state(p);
  REQUIRE(st);
  CHECK(st->buffers[0].dtype() == kFloat32);
  CHECK(st->buffers[1].dtype() == kFloat32);
  REQUIRE(st->master.defined());
  CHECK(st->master.dtype() == kFloat32);
  CHECK(p.dtype() == kBFloat16);
  CHECK(equal(p, st->master.to(kBFloat16)));
  opt.master_weights(false);
  CHECK_FALSE(opt.state(p)->master.defined());
}

TEST_CASE("model->to(kBFloat16) trains, and an optimizer state dict with masters resumes bit for bit") {
  nn::Sequential a = bf16_model(), b = bf16_model();
  for (const Tensor& p : a->parameters()) CHECK(p.dtype() == kBFloat16);
  optim::AdamW opt_a(a->parameters(), optim::AdamWOptions(1e-2));
  train(a, opt_a, 3, 1);
  StateDict model_sd, opt_sd = opt_a.state_dict();  // the model's state dict shares storage: copy it
  for (const auto& [k, t] : a->state_dict()) model_sd.insert(k, t.clone());
  REQUIRE(opt_sd.find("state.0.master"));
  CHECK(opt_sd.at("state.0.master").dtype() == kFloat32);
  train(a, opt_a, 4, 2);

  optim::AdamW opt_b(b->parameters(), optim::AdamWOptions(1e-2));
  b->load_state_dict(model_sd);
  opt_b.load_state_dict(opt_sd);
  train(b, opt_b, 4, 2);
  auto pa = a->parameters(), pb = b->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(equal(pa[i], pb[i]));
  // Without the masters (only the rounded parameters) the run differs: they carry information.
  nn::Sequential c = bf16_model();
  optim::AdamW opt_c(c->parameters(), optim::AdamWOptions(1e-2));
  c->load_state_dict(model_sd);
  StateDict no_master = opt_sd;
  StateDict stripped;
  stripped.scalars = no_master.scalars;
  for (const auto& [k, t] : no_master)
    if (k.find(".master") == std::string::npos) stripped.insert(k, t);
  opt_c.load_state_dict(stripped);
  train(c, opt_c, 4, 2);
  bool all_equal = true;
  auto pc = c->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) all_equal = all_equal && equal(pa[i], pc[i]);
  CHECK_FALSE(all_equal);
}

TEST_CASE("a bfloat16 model and its optimizer's masters resume bit for bit from a training checkpoint file") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_master_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "ck.safetensors").string();
  nn::Sequential a = bf16_model(), b = bf16_model();  // b stays at step 0 until the file loads
  optim::AdamW opt_a(a->parameters(), optim::AdamWOptions(1e-2));
  train(a, opt_a, 3, 1);
  io::save_checkpoint(path, {.model = a, .optimizer = opt_a}, 3);
  train(a, opt_a, 4, 2);
  optim::AdamW opt_b(b->parameters(), optim::AdamWOptions(1e-2));
  io::load_checkpoint(path, {.model = b, .optimizer = opt_b});
  for (const Tensor& p : b->parameters()) CHECK(p.dtype() == kBFloat16);
  train(b, opt_b, 4, 2);
  auto pa = a->parameters(), pb = b->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(equal(pa[i], pb[i]));
  fs::remove_all(dir);
}

TEST_CASE("a parameter written from outside is re-read into its master") {
  Tensor p = ones({2}, kBFloat16).requires_grad_();
  optim::SGD opt({p}, optim::SGDOptions(0.5));
  p.set_grad(ones({2}, kBFloat16));
  opt.step();  // master 0.5
  {
    NoGradGuard ng;
    p.fill_(4.0);  // e.g. a model load_state_dict
  }
  p.set_grad(ones({2}, kBFloat16));
  opt.step();
  CHECK(p.to(kFloat32).to_vector<float>() == std::vector<float>{3.5f, 3.5f});
}

TEST_CASE("master weight errors: a master for a float32 parameter, a master of the wrong shape") {
  Tensor p = ones({2}, kBFloat16).requires_grad_();
  optim::SGD opt({p}, optim::SGDOptions(0.5));
  p.set_grad(ones({2}, kBFloat16));
  opt.step();
  StateDict sd = opt.state_dict();
  Tensor q = ones({2}).requires_grad_();
  optim::SGD opt_f32({q}, optim::SGDOptions(0.5));
  CHECK_KILN_ERROR(opt_f32.load_state_dict(sd),
                   "[SGD] load_state_dict: 'state.0.master' is a float32 master copy but parameter 0 is float32");
  StateDict bad = sd;
  bad.insert("state.0.master", zeros({3}));
  CHECK_KILN_ERROR(opt.load_state_dict(bad), "'state.0.master' must be a float tensor of shape (2,)");
}

TEST_CASE("checkpoints across dtypes: a bfloat16 run into a float32 model, a float32 run into a bfloat16 model") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_master_dtypes_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string bf = (dir / "bf16.safetensors").string(), f32 = (dir / "f32.safetensors").string();
  auto f32_model = [] {
    manual_seed(8);
    return nn::Sequential(nn::Linear(6, 8), nn::LayerNorm(nn::LayerNormOptions({8})), nn::Linear(8, 3));
  };
  nn::Sequential a = bf16_model();
  optim::AdamW opt_a(a->parameters(), optim::AdamWOptions(1e-2));
  train(a, opt_a, 2, 1);
  io::save_checkpoint(bf, {.model = a, .optimizer = opt_a}, 2);
  // bfloat16 -> float32: the model widens exactly; the masters belong to bfloat16 parameters, so
  // the optimizer part is an error that says what to do, and converting the model first resumes.
  nn::Sequential b = f32_model();
  optim::AdamW opt_b(b->parameters(), optim::AdamWOptions(1e-2));
  CHECK_KILN_ERROR(io::load_checkpoint(bf, {.model = b, .optimizer = opt_b}),
                   "optimizer: [AdamW] load_state_dict: 'state.0.master' is a float32 master copy but parameter 0 "
                   "is float32 (masters are kept for bfloat16/float16 parameters only: the state was saved for a "
                   "low-precision model; convert this one with to() first, or start the optimizer afresh)");
  auto pa = a->parameters(), pb = b->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    CHECK(pb[i].dtype() == kFloat32);
    CHECK(equal(pb[i], pa[i].to(kFloat32)));  // the model part loaded before the optimizer's failed
  }
  b->to(kBFloat16);
  io::load_checkpoint(bf, {.model = b, .optimizer = opt_b});
  train(a, opt_a, 2, 2);
  train(b, opt_b, 2, 2);
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(equal(pa[i], pb[i]));

  // float32 -> bfloat16: the weights round to nearest even, the float32 optimizer state loads,
  // and the masters start from the rounded weights (nothing else holds the float32 values).
  nn::Sequential c = f32_model();
  optim::AdamW opt_c(c->parameters(), optim::AdamWOptions(1e-2));
  for (int i = 0; i < 2; ++i) {
    Generator g(3);
    Tensor x = randn({5, 6}, kFloat32, &g), y = randn({5, 3}, kFloat32, &g);
    opt_c.zero_grad();
    mse_loss(c->forward(x), y).backward();
    opt_c.step();
  }
  io::save_checkpoint(f32, {.model = c, .optimizer = opt_c}, 2);
  nn::Sequential d = bf16_model();
  optim::AdamW opt_d(d->parameters(), optim::AdamWOptions(1e-2));
  io::load_checkpoint(f32, {.model = d, .optimizer = opt_d});
  auto pc = c->parameters(), pd = d->parameters();
  for (std::size_t i = 0; i < pc.size(); ++i) {
    CHECK(pd[i].dtype() == kBFloat16);
    CHECK(equal(pd[i], pc[i].to(kBFloat16)));
  }
  train(d, opt_d, 1, 4);
  const optim::ParamState* st = opt_d.state(pd[0]);
  REQUIRE(st);
  CHECK(st->step == 3);
  CHECK(st->master.dtype() == kFloat32);
  fs::remove_all(dir);
}
