// amp::GradScaler: loss scaling and exact unscaling, skipped steps on inf/NaN with the scale backed
// off, growth after the interval, the call-order rules, state dicts and checkpoint resume, bad
// input. Gradients are float32 here (inf/NaN injected); the float16 runs are in test_amp_train.cpp.
#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/safetensors.hpp>
#include <limits>

#include "test_util.hpp"

using namespace kiln;
using amp::GradScaler;
using amp::GradScalerOptions;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A least-squares problem: w (3) fitted to y = x w*.
struct Problem {
  Tensor w = Tensor();
  Tensor x, y;
  explicit Problem(std::uint64_t seed = 3) {
    Generator g(seed);
    w = randn({3}, kFloat32, &g).requires_grad_();
    x = randn({8, 3}, kFloat32, &g);
    y = randn({8}, kFloat32, &g);
  }
  Tensor loss() const { return mse_loss(matmul(x, w), y); }
};

// One scaled step; `poison` (if finite is false) replaces gradient element 1 after backward.
bool scaled_step(Problem& p, optim::Optimizer& opt, GradScaler& s, double poison = 0) {
  opt.zero_grad();
  s.scale(p.loss()).backward();
  if (poison != 0) {
    NoGradGuard ng;
    p.w.grad().narrow(0, 1, 1).fill_(poison);
  }
  const bool stepped = s.step(opt);
  s.update();
  return stepped;
}

}  // namespace

TEST_CASE("GradScaler defaults are PyTorch's") {
  GradScaler s;
  CHECK(s.get_scale() == 65536.0);
  CHECK(s.options().growth_factor() == 2.0);
  CHECK(s.options().backoff_factor() == 0.5);
  CHECK(s.options().growth_interval() == 2000);
  CHECK(s.growth_tracker() == 0);
  CHECK(s.is_enabled());
}

TEST_CASE("GradScaler scale multiplies the loss and unscale_ restores the gradients exactly") {
  Problem a, b;
  optim::SGD opt_a({a.w}, optim::SGDOptions(0.1)), opt_b({b.w}, optim::SGDOptions(0.1));
  GradScaler s(GradScalerOptions().init_scale(1024));
  Tensor l = a.loss();
  CHECK(s.scale(l).item<double>() == l.item<double>() * 1024);
  s.scale(l).backward();
  b.loss().backward();
  kt::expect_values(a.w.grad(), (b.w.grad() * 1024.0).to_vector<double>(), 0, 1e-6);
  s.unscale_(opt_a);
  // Dividing by a power of two is exact, so the gradients equal the unscaled run's bit for bit.
  CHECK(equal(a.w.grad(), b.w.grad()));
  CHECK(s.step(opt_a));
  opt_b.step();
  CHECK(equal(a.w, b.w));
  s.update();
  CHECK(s.growth_tracker() == 1);
  CHECK(s.get_scale() == 1024);
}

TEST_CASE("GradScaler skips a step with inf or NaN gradients and halves the scale") {
  for (double poison : {kInf, -kInf, std::nan("")}) {
    INFO("poison " << poison);
    Problem p;
    optim::Adam opt({p.w}, optim::AdamOptions(0.1));
    GradScaler s(GradScalerOptions().growth_interval(3));
    CHECK(scaled_step(p, opt, s));  // one clean step: tracker 1, Adam state at step 1
    CHECK(s.growth_tracker() == 1);
    Tensor before = p.w.clone();
    Tensor exp_avg = opt.state(p.w)->buffers[0].clone();
    CHECK_FALSE(scaled_step(p, opt, s, poison));
    CHECK(equal(p.w, before));  // parameters and optimizer state untouched
    CHECK(opt.state(p.w)->step == 1);
    CHECK(equal(opt.state(p.w)->buffers[0], exp_avg));
    CHECK(s.get_scale() == 32768.0);
    CHECK(s.growth_tracker() == 0);
    CHECK(scaled_step(p, opt, s));  // training resumes at the smaller scale
    CHECK(opt.state(p.w)->step == 2);
    CHECK(s.get_scale() == 32768.0);
  }
}

TEST_CASE("GradScaler grows the scale after growth_interval clean steps in a row") {
  Problem p;
  optim::SGD opt({p.w}, optim::SGDOptions(0.01));
  GradScaler s(GradScalerOptions().init_scale(8).growth_interval(3).growth_factor(4));
  CHECK(scaled_step(p, opt, s));
  CHECK(scaled_step(p, opt, s));
  CHECK(s.get_scale() == 8);
  CHECK(s.growth_tracker() == 2);
  CHECK(scaled_step(p, opt, s));
  CHECK(s.get_scale() == 32);
  CHECK(s.growth_tracker() == 0);
  // An overflow resets the count: two clean steps after it do not grow the scale.
  CHECK_FALSE(scaled_step(p, opt, s, kInf));
  CHECK(s.get_scale() == 16);
  CHECK(scaled_step(p, opt, s));
  CHECK(scaled_step(p, opt, s));
  CHECK(s.get_scale() == 16);
  CHECK(scaled_step(p, opt, s));
  CHECK(s.get_scale() == 64);
}

TEST_CASE("GradScaler unscale_ before clipping: the clip sees the true gradient norm") {
  Problem a, b;
  optim::SGD opt_a({a.w}, optim::SGDOptions(0.1)), opt_b({b.w}, optim::SGDOptions(0.1));
  GradScaler s;
  s.scale(a.loss()).backward();
  b.loss().backward();
  s.unscale_(opt_a);
  const double na = optim::clip_grad_norm_({a.w}, 0.01), nb = optim::clip_grad_norm_({b.w}, 0.01);
  CHECK(na == nb);
  CHECK(s.step(opt_a));  // does not unscale a second time
  opt_b.step();
  CHECK(equal(a.w, b.w));
  s.update();
}

TEST_CASE("GradScaler with two optimizers: an overflow in either skips only that one and backs off once") {
  Problem a(1), b(2);
  optim::SGD opt_a({a.w}, optim::SGDOptions(0.1)), opt_b({b.w}, optim::SGDOptions(0.1));
  GradScaler s;
  s.scale(add(a.loss(), b.loss())).backward();
  {
    NoGradGuard ng;
    b.w.grad().fill_(std::nan(""));
  }
  Tensor wa = a.w.clone(), wb = b.w.clone();
  CHECK(s.step(opt_a));
  CHECK_FALSE(s.step(opt_b));
  CHECK_FALSE(equal(a.w, wa));
  CHECK(equal(b.w, wb));
  s.update();
  CHECK(s.get_scale() == 32768.0);
}

TEST_CASE("GradScaler call order errors") {
  Problem p;
  optim::SGD opt({p.w}, optim::SGDOptions(0.1));
  GradScaler s;
  CHECK_KILN_ERROR(s.update(), "no unscale_() or step() since the last update()");
  s.scale(p.loss()).backward();
  s.unscale_(opt);
  CHECK_KILN_ERROR(s.unscale_(opt), "[GradScaler] unscale_() has already been called on this SGD optimizer");
  s.step(opt);
  CHECK_KILN_ERROR(s.step(opt), "step() has already been called on this SGD optimizer");
  s.update();
  // Forgetting scale(): the gradients would be divided by a scale they never got.
  opt.zero_grad();
  p.loss().backward();
  const Tensor g = p.w.grad().clone();
  CHECK_KILN_ERROR(s.step(opt),
                   "[GradScaler] unscale_()/step(): no scale() since the last update(), so the "
                   "gradients were not multiplied by the scale (65536)");
  CHECK_KILN_ERROR(s.unscale_(opt), "no scale() since the last update()");
  CHECK(equal(p.w.grad(), g));  // left as they were
  s.scale(p.loss()).backward();
  s.step(opt);
  CHECK_KILN_ERROR(s.unscale_(opt), "unscale_() is called after step()");
  s.update(4.0);
  CHECK(s.get_scale() == 4.0);
  CHECK_KILN_ERROR(s.update(0.0), "update(new_scale) must be positive and finite, got 0");
  CHECK_KILN_ERROR(s.update(kInf), "update(new_scale) must be positive and finite, got inf");
  CHECK_KILN_ERROR(s.scale(Tensor()), "[GradScaler] scale: the loss is undefined");
  CHECK_KILN_ERROR(s.scale(full({}, 1, kInt64)), "scale: the loss must be floating point, got int64");
}

TEST_CASE("GradScaler refuses float16 gradients (unscaled in float16 they underflow), takes bfloat16 ones") {
  // A true gradient of 1e-8 is 6.6e-4 scaled by 2^16, a normal float16; divided by 2^16 in
  // float16 it would round to 0 (below 2^-25), silently undoing what the scaling kept.
  Tensor h = ones({3}, kFloat16).requires_grad_();
  optim::SGD opt_h({h}, optim::SGDOptions(1.0));
  GradScaler s;
  (void)s.scale(ones({}));  // the loss whose backward the gradients below stand for
  h.set_grad(full({3}, 1e-8 * s.get_scale(), kFloat16));
  const char* msg =
      "[GradScaler] unscale_: parameter 0 of this SGD optimizer (shape (3,)) has a float16 gradient, which "
      "unscaling in float16 would underflow; keep the parameters float32 and run the forward pass under "
      "kiln::autocast(kFloat16)";
  CHECK_KILN_ERROR(s.unscale_(opt_h), msg);
  CHECK_KILN_ERROR(s.step(opt_h), msg);
  CHECK(equal(h, ones({3}, kFloat16)));                                                   // not stepped
  CHECK(h.grad().to_vector<double>()[0] == doctest::Approx(1e-8 * 65536).epsilon(1e-3));  // not divided
  CHECK_KILN_ERROR(s.update(), "no unscale_() or step() since the last update()");  // the refusals recorded nothing
  // bfloat16 has float32's exponent range: dividing by a power of two is exact.
  Tensor b = ones({3}, kBFloat16).requires_grad_();
  optim::SGD opt_b({b}, optim::SGDOptions(1.0));
  b.set_grad(full({3}, 3.0 * s.get_scale(), kBFloat16));
  CHECK(s.step(opt_b));
  CHECK(b.grad().to_vector<double>() == std::vector<double>{3, 3, 3});
  s.update();
}

TEST_CASE("GradScaler rejects bfloat16, non-float16 dtypes and bad options") {
  CHECK_KILN_ERROR(GradScaler{kBFloat16}, "[GradScaler] bfloat16 needs no loss scaling");
  CHECK_KILN_ERROR(GradScaler{kFloat32}, "loss scaling is for float16 training, got dtype float32");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().init_scale(0)}, "init_scale must be positive and finite, got 0");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().init_scale(kInf)}, "init_scale must be positive and finite");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().growth_factor(1)}, "growth_factor must be finite and > 1, got 1");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().backoff_factor(1)}, "backoff_factor must be in (0, 1), got 1");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().backoff_factor(0)}, "backoff_factor must be in (0, 1), got 0");
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().growth_interval(0)}, "growth_interval must be >= 1, got 0");
  // Disabled, any dtype is accepted (one training loop serves every precision).
  CHECK_NOTHROW((GradScaler{kBFloat16, GradScalerOptions().enabled(false)}));
}

TEST_CASE("GradScaler disabled passes through") {
  Problem a, b;
  optim::SGD opt_a({a.w}, optim::SGDOptions(0.1)), opt_b({b.w}, optim::SGDOptions(0.1));
  GradScaler s(kFloat32, GradScalerOptions().enabled(false));
  Tensor l = a.loss();
  CHECK(s.scale(l).is_same(l));
  l.backward();
  b.loss().backward();
  {
    NoGradGuard ng;
    a.w.grad().narrow(0, 0, 1).fill_(1.5);
    b.w.grad().narrow(0, 0, 1).fill_(1.5);
  }
  s.unscale_(opt_a);
  CHECK(s.step(opt_a));
  s.update();
  opt_b.step();
  CHECK(equal(a.w, b.w));
  CHECK(s.get_scale() == 65536.0);
}

TEST_CASE("GradScaler state dict round trip and load errors") {
  Problem p;
  optim::SGD opt({p.w}, optim::SGDOptions(0.01));
  GradScaler s(GradScalerOptions().init_scale(256).growth_interval(5).growth_factor(3).backoff_factor(0.25));
  scaled_step(p, opt, s);
  scaled_step(p, opt, s, kInf);
  scaled_step(p, opt, s);
  scaled_step(p, opt, s);
  StateDict sd = s.state_dict();
  CHECK(sd.scalars.at("scale") == 64);
  CHECK(sd.scalars.at("growth_tracker") == 2);
  GradScaler r;
  r.load_state_dict(sd);
  CHECK(r.get_scale() == 64);
  CHECK(r.growth_tracker() == 2);
  CHECK(r.options().growth_interval() == 5);
  CHECK(r.options().growth_factor() == 3);
  CHECK(r.options().backoff_factor() == 0.25);

  kt::check_bad_states(
      sd, [&](const StateDict& s) { r.load_state_dict(s); },
      {{kt::erase_scalar("scale"), "load_state_dict: missing key 'scale'"},
       {kt::set_scalar("scale", -1), "must be positive and finite, got -1"},
       {kt::set_scalar("growth_tracker", 5), "growth_tracker must be an integer in [0, growth_interval), got 5"},
       {kt::set_scalar("growth_interval", 2.5), "growth_interval must be an integer >= 1, got 2.5"},
       {kt::set_scalar("extra", 1), "load_state_dict: unexpected key 'extra'"},
       {kt::set_tensor("scale_tensor", zeros({1})), "expected scalars only, got 1 tensors (first 'scale_tensor')"}});
  CHECK(r.get_scale() == 64);  // rejected loads change nothing
}

TEST_CASE("GradScaler: a run that keeps overflowing stops backing off at 2^-126, steps again, and its state loads") {
  Problem p;
  optim::SGD opt({p.w}, optim::SGDOptions(0.01));
  GradScaler s(GradScalerOptions().init_scale(1e-30));
  // Below 2^-126, 1/S overflows float32: every later step would be skipped, and after ~1100
  // halvings S = 0 would make a state dict that loads nowhere.
  for (int i = 0; i < 40; ++i) CHECK_FALSE(scaled_step(p, opt, s, std::nan("")));
  const double floor = std::numeric_limits<float>::min();
  CHECK(s.get_scale() == floor);
  GradScaler r;
  r.load_state_dict(s.state_dict());
  CHECK(r.get_scale() == floor);
  CHECK(scaled_step(p, opt, s));  // a clean step runs again
  CHECK_KILN_ERROR(GradScaler{GradScalerOptions().init_scale(1e-39)},
                   "[GradScaler] init_scale is 1e-39, below float32's smallest normal 1.1754943508222875e-38 (1/scale "
                   "would overflow float32)");
  CHECK_KILN_ERROR(s.update(1e-40), "update(new_scale) is 1e-40, below float32's smallest normal");
}

TEST_CASE("GradScaler state in a checkpoint file with bad or missing fields: errors naming the extra and the key") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_scaler_bad_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "ck.safetensors").string(), bad = (dir / "bad.safetensors").string();
  GradScaler s(GradScalerOptions().growth_interval(4));
  io::save_checkpoint(path, {.extras = {{"scaler", s}}}, 3);
  const io::SafetensorsFile f = io::load_safetensors(path);
  auto load_with = [&](const std::string& key, const char* value) {
    auto meta = f.metadata;
    if (value) meta[key] = value;
    else meta.erase(key);
    io::save_safetensors(bad, f.tensors, meta);
    GradScaler r;
    io::load_checkpoint(bad, {.extras = {{"scaler", r}}});
  };
  const std::string pre = "[load_checkpoint] " + bad + ": extra 'scaler': [GradScaler] load_state_dict: ";
  CHECK_KILN_ERROR(load_with("extra.scaler.scale", "nan"),
                   (pre + "scale must be positive and finite, got nan").c_str());
  CHECK_KILN_ERROR(load_with("extra.scaler.scale", "-0"), (pre + "scale must be positive and finite, got -0").c_str());
  CHECK_KILN_ERROR(load_with("extra.scaler.scale", "0"), "scale must be positive and finite, got 0");
  CHECK_KILN_ERROR(load_with("extra.scaler.scale", "1e999"), "'extra.scaler.scale' is '1e999', not a number");
  CHECK_KILN_ERROR(load_with("extra.scaler.growth_tracker", "4"),
                   (pre + "growth_tracker must be an integer in [0, growth_interval), got 4").c_str());
  CHECK_KILN_ERROR(load_with("extra.scaler.growth_tracker", "-1"), "growth_tracker must be an integer");
  CHECK_KILN_ERROR(load_with("extra.scaler.growth_interval", "0"), "growth_interval must be an integer >= 1, got 0");
  CHECK_KILN_ERROR(load_with("extra.scaler.backoff_factor", "1"), "backoff_factor must be in (0, 1), got 1");
  CHECK_KILN_ERROR(load_with("extra.scaler.growth_factor", "inf"), "growth_factor must be finite and > 1, got inf");
  CHECK_KILN_ERROR(load_with("extra.scaler.growth_interval", nullptr), (pre + "missing key 'growth_interval'").c_str());
  CHECK_KILN_ERROR(load_with("kiln.section.extra.scaler", nullptr), "the checkpoint has no extra.scaler state");
  fs::remove_all(dir);
}

TEST_CASE("GradScaler in a training checkpoint: a resumed run continues bit for bit") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_scaler_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "ck.safetensors").string();
  // Ten steps with overflows injected at steps 2 and 6 (the scale moves both ways); the
  // checkpoint is written after step 4.
  auto poison = [](std::int64_t step) { return step == 2 || step == 6 ? kInf : 0.0; };
  auto opts = GradScalerOptions().growth_interval(2);
  Problem run;
  nn::Module model;
  model.register_parameter("w", run.w);
  optim::Adam opt({run.w}, optim::AdamOptions(0.05));
  GradScaler s(opts);
  for (std::int64_t step = 0; step < 10; ++step) {
    scaled_step(run, opt, s, poison(step));
    if (step == 4) io::save_checkpoint(path, {.model = model, .optimizer = opt, .extras = {{"scaler", s}}}, step + 1);
  }
  Problem resumed(99);  // other initial weights (the checkpoint replaces them); the same data
  resumed.x = run.x, resumed.y = run.y;
  nn::Module model2;
  model2.register_parameter("w", resumed.w);
  optim::Adam opt2({resumed.w}, optim::AdamOptions(0.05));
  GradScaler s2;  // default options: the file brings the interval, the scale and the count
  io::CheckpointInfo info = io::load_checkpoint(path, {.model = model2, .optimizer = opt2, .extras = {{"scaler", s2}}});
  CHECK(info.step == 5);
  CHECK(s2.options().growth_interval() == 2);
  for (std::int64_t step = info.step; step < 10; ++step) scaled_step(resumed, opt2, s2, poison(step));
  CHECK(equal(resumed.w, run.w));
  CHECK(s2.get_scale() == s.get_scale());
  CHECK(s2.growth_tracker() == s.growth_tracker());
  fs::remove_all(dir);
}
