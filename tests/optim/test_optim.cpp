// Optimizer API: options, param groups, zero_grad, gradient accumulation, state dicts (exact
// resume), the steady-state no-allocation promise, thread-count independence, errors.
#include "optim/test_optim_util.hpp"

namespace {

using namespace ko;

// Every optimizer with options that exercise all of its state buffers.
struct Maker {
  std::string name;
  std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)> make;
  std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)> make_other;  // other options
};

std::vector<Maker> makers() {
  using namespace kiln::optim;
  return {
      {"SGD",
       [](auto p) {
         return std::make_unique<SGD>(p, SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(0.01));
       },
       [](auto p) { return std::make_unique<SGD>(p, SGDOptions(1.0)); }},
      {"Adam", [](auto p) { return std::make_unique<Adam>(p, AdamOptions(0.05).amsgrad(true).weight_decay(0.01)); },
       [](auto p) { return std::make_unique<Adam>(p, AdamOptions(0.5)); }},
      {"AdamW",
       [](auto p) {
         return std::make_unique<AdamW>(p, AdamWOptions(0.05).betas({0.9, 0.95}).amsgrad(true));
       },
       [](auto p) { return std::make_unique<AdamW>(p, AdamWOptions(0.5)); }},
      {"RMSprop",
       [](auto p) { return std::make_unique<RMSprop>(p, RMSpropOptions(0.01).momentum(0.5).centered(true)); },
       [](auto p) { return std::make_unique<RMSprop>(p, RMSpropOptions(0.1)); }},
      {"Adagrad",
       [](auto p) {
         return std::make_unique<Adagrad>(p, AdagradOptions(0.1).lr_decay(0.01).initial_accumulator_value(0.1));
       },
       [](auto p) { return std::make_unique<Adagrad>(p, AdagradOptions(1.0)); }},
      {"Lion", [](auto p) { return std::make_unique<Lion>(p, LionOptions(0.01).weight_decay(0.1)); },
       [](auto p) { return std::make_unique<Lion>(p, LionOptions(0.5)); }},
  };
}

// A fixed non-quadratic problem of two parameters (loss as in the goldens).
Problem small_problem(kiln::DType dt = kiln::kFloat64, std::int64_t n = 5) {
  kiln::Generator gen(3);
  Problem p;
  p.A = kiln::randn({3, 4}, dt, &gen);
  p.c = kiln::rand({n}, dt, &gen);
  p.w = kiln::randn({3, 4}, dt, &gen).requires_grad_();
  p.b = kiln::randn({n}, dt, &gen).requires_grad_();
  return p;
}

Problem copy_of(const Problem& p) {
  Problem q = p;
  q.w = p.w.detach().clone().requires_grad_();
  q.b = p.b.detach().clone().requires_grad_();
  return q;
}

void train(optim::Optimizer& opt, const Problem& p, int steps) {
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    p.backward();
    opt.step();
  }
}

}  // namespace

TEST_CASE("optim options have PyTorch defaults and chained setters") {
  using namespace kiln::optim;
  SGDOptions s(0.1);
  CHECK(s.lr() == 0.1);
  CHECK(s.momentum() == 0);
  CHECK(!s.nesterov());
  CHECK(s.momentum(0.9).nesterov(true).weight_decay(1e-4).dampening(0).momentum() == 0.9);
  CHECK(s.nesterov());
  AdamOptions a;
  CHECK(a.lr() == 1e-3);
  CHECK(a.betas() == Betas{0.9, 0.999});
  CHECK(a.eps() == 1e-8);
  CHECK(a.weight_decay() == 0);
  CHECK(std::get<1>(a.betas({0.8, 0.95}).betas()) == 0.95);
  CHECK(AdamWOptions().weight_decay() == 1e-2);
  CHECK(RMSpropOptions().alpha() == 0.99);
  CHECK(RMSpropOptions().lr() == 1e-2);
  CHECK(AdagradOptions().eps() == 1e-10);
  CHECK(LionOptions().betas() == Betas{0.9, 0.99});
  CHECK(LionOptions().lr() == 1e-4);
  // Options list their fields by name (state dicts use these).
  std::vector<std::string> names;
  AdamWOptions w(3e-4);
  w.fields([&](const char* n, double&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize"});
}

TEST_CASE("optim param groups override the defaults per group") {
  Problem p = small_problem();
  optim::Adam opt({optim::ParamGroup({p.w}), optim::ParamGroup({p.b}, optim::AdamOptions(0.5).betas({0.5, 0.6}))},
                  optim::AdamOptions(0.01).weight_decay(0.1));
  REQUIRE(opt.param_groups().size() == 2);
  CHECK(opt.lr(0) == 0.01);
  CHECK(opt.lr(1) == 0.5);
  CHECK(opt.param_groups()[0].options_as<optim::AdamOptions>().weight_decay() == 0.1);  // from the defaults
  CHECK(opt.param_groups()[1].options_as<optim::AdamOptions>().weight_decay() == 0);    // its own options
  CHECK(opt.param_groups()[1].options_as<optim::AdamOptions>().betas().first == 0.5);
  opt.set_lr(0.02, 1);
  CHECK(opt.lr(1) == 0.02);
  CHECK(opt.parameters().size() == 2);
  CHECK(opt.parameters()[1].is_same(p.b));
  // add_param_group: defaults when the group has none, and the new group steps.
  Tensor extra = kiln::ones({2}, kiln::kFloat64).requires_grad_();
  opt.add_param_group(optim::ParamGroup({extra}));
  CHECK(opt.lr(2) == 0.01);
  extra.set_grad(kiln::ones({2}, kiln::kFloat64));
  opt.step();
  // Adam's first step moves every coordinate by lr (bias-corrected m / sqrt(v) = sign(g)), + decay
  auto v = extra.to_vector<double>();
  CHECK(v[0] == doctest::Approx(1.0 - 0.01).epsilon(1e-6));
  CHECK_KILN_ERROR(opt.param_groups()[0].options_as<optim::SGDOptions>(), "[ParamGroup] options are AdamOptions");
  CHECK_KILN_ERROR(opt.lr(3), "[Adam] lr: group 3 out of range (3 groups)");
  CHECK_KILN_ERROR(opt.set_lr(-1.0, 0), "[Adam] invalid learning rate: -1 (must be >= 0)");
}

TEST_CASE("optim zero_grad drops or zeroes gradients and step skips missing ones") {
  Problem p = small_problem();
  optim::SGD opt({p.w, p.b}, optim::SGDOptions(0.1).momentum(0.9));
  p.backward();
  Tensor gw = p.w.grad();
  opt.zero_grad(false);
  REQUIRE(p.w.grad().defined());
  CHECK(p.w.grad().is_same(gw));  // zeroed in place, same tensor
  CHECK(p.w.grad().abs().sum().item<double>() == 0);
  opt.zero_grad();
  CHECK(!p.w.grad().defined());
  CHECK(!p.b.grad().defined());
  // Only b gets a gradient: w is untouched and gets no state.
  const auto w0 = p.w.to_vector<double>();
  p.b.set_grad(kiln::ones({5}, kiln::kFloat64));
  const auto b0 = p.b.to_vector<double>();
  opt.step();
  CHECK(p.w.to_vector<double>() == w0);
  CHECK(opt.state(p.w) == nullptr);
  REQUIRE(opt.state(p.b) != nullptr);
  CHECK(opt.state(p.b)->step == 1);
  CHECK(p.b.to_vector<double>()[0] == doctest::Approx(b0[0] - 0.1));
  // The update is not recorded and bumps the version counter (saved-tensor checks see it).
  CHECK(p.b.is_leaf());
  CHECK(p.b.requires_grad());
  const auto v = p.b.version();
  opt.step();
  CHECK(p.b.version() > v);
}

TEST_CASE("optim gradient accumulation over several backward passes before one step") {
  // Three micro-batches of a least-squares problem, accumulated, equal the full batch.
  kiln::Generator gen(7);
  Tensor X = kiln::randn({12, 4}, kiln::kFloat64, &gen), y = kiln::randn({12, 1}, kiln::kFloat64, &gen);
  Tensor w1 = kiln::randn({4, 1}, kiln::kFloat64, &gen).requires_grad_();
  Tensor w2 = w1.detach().clone().requires_grad_();
  optim::Adam acc({w1}, optim::AdamOptions(0.1));
  optim::Adam full({w2}, optim::AdamOptions(0.1));
  for (int step = 0; step < 3; ++step) {
    acc.zero_grad();
    for (int m = 0; m < 3; ++m) {
      Tensor xb = X.narrow(0, 4 * m, 4), yb = y.narrow(0, 4 * m, 4);
      (kiln::square(kiln::matmul(xb, w1) - yb).sum()).backward();
    }
    full.zero_grad();
    (kiln::square(kiln::matmul(X, w2) - y).sum()).backward();
    CHECK(closeness(w1.grad(), w2.grad(), 1e-12, 1e-14) <= 1.0);
    acc.step();
    full.step();
    CHECK(closeness(w1, w2, 1e-12, 1e-14) <= 1.0);
  }
}

TEST_CASE("optim state_dict round trip resumes bitwise for every optimizer") {
  for (const auto& m : makers()) {
    INFO("optimizer " << m.name);
    // Straight through: 10 steps.
    Problem ref = small_problem();
    Problem start = copy_of(ref);
    auto a = m.make({ref.w, ref.b});
    train(*a, ref, 10);
    // 4 steps, snapshot, then a fresh optimizer (other options) over copies continues for 6.
    auto b = m.make({start.w, start.b});
    train(*b, start, 4);
    kiln::StateDict sd = b->state_dict();
    Problem resumed = copy_of(start);
    train(*b, start, 3);  // keeps going: the snapshot must not alias live state
    auto c = m.make_other({resumed.w, resumed.b});
    c->load_state_dict(sd);
    CHECK(c->lr() == b->lr());
    train(*c, resumed, 6);
    CHECK(same_bits(resumed.w, ref.w));
    CHECK(same_bits(resumed.b, ref.b));
    CHECK(c->state(resumed.w)->step == 10);
    // Its state dict has the same entries as the straight-through optimizer's, with equal values.
    kiln::StateDict sa = a->state_dict(), sc = c->state_dict();
    CHECK(sa.scalars == sc.scalars);
    REQUIRE(sa.size() == sc.size());
    for (const auto& [k, t] : sa) {
      INFO("state tensor " << k);
      REQUIRE(sc.contains(k));
      CHECK(same_bits(sc.at(k), t));
    }
  }
}

TEST_CASE("optim state_dict names options buffers and steps") {
  Problem p = small_problem();
  optim::Adam opt({optim::ParamGroup({p.w}), optim::ParamGroup({p.b}, optim::AdamOptions(0.5).amsgrad(true))},
                  optim::AdamOptions(0.01));
  kiln::StateDict before = opt.state_dict();
  CHECK(before.empty());
  CHECK(before.scalars.at("group.0.lr") == 0.01);
  CHECK(before.scalars.at("group.1.amsgrad") == 1);
  CHECK(before.scalars.at("group.1.num_params") == 1);
  train(opt, p, 2);
  kiln::StateDict sd = opt.state_dict();
  CHECK(sd.scalars.at("state.0.step") == 2);
  CHECK(sd.scalars.at("state.1.step") == 2);
  CHECK(sd.contains("state.0.exp_avg"));
  CHECK(sd.contains("state.0.exp_avg_sq"));
  CHECK(!sd.contains("state.0.max_exp_avg_sq"));  // group 0 has no amsgrad
  CHECK(sd.contains("state.1.max_exp_avg_sq"));
  CHECK(sd.at("state.1.exp_avg").shape() == kiln::Shape{5});
  // Loading a state without entries for a parameter clears that parameter's state.
  opt.load_state_dict(before);
  CHECK(opt.state(p.w) == nullptr);
}

TEST_CASE("optim load_state_dict checks every entry and leaves the optimizer untouched on error") {
  Problem p = small_problem();
  optim::SGD opt({p.w, p.b}, optim::SGDOptions(0.1).momentum(0.9));
  train(opt, p, 2);
  const kiln::StateDict good = opt.state_dict();
  const auto buf = opt.state(p.w)->buffers[0].to_vector<double>();
  kt::check_bad_states(
      good, [&](const kiln::StateDict& s) { opt.load_state_dict(s); },
      {{kt::erase_scalar("group.0.momentum"), "[SGD] load_state_dict: missing scalar 'group.0.momentum'"},
       {kt::set_scalar("group.0.num_params", 3),
        "[SGD] load_state_dict: group 0 has 2 parameters here but 3 in the state dict"},
       {kt::set_tensor("state.1.momentum_buffer", kiln::zeros({4}, kiln::kFloat64)),
        "[SGD] load_state_dict: 'state.1.momentum_buffer' has shape (4,) but parameter 1 has shape (5,)"},
       {kt::set_tensor("state.7.momentum_buffer", kiln::zeros({4}, kiln::kFloat64)),
        "[SGD] load_state_dict: unexpected tensor 'state.7.momentum_buffer'"},
       {kt::set_scalar("group.1.lr", 0.1), "[SGD] load_state_dict: unexpected scalar 'group.1.lr'"},
       {kt::set_scalar("group.0.lr", -3), "[SGD] invalid learning rate: -3"},
       {kt::set_scalar("state.0.step", 2.5), "[SGD] load_state_dict: 'state.0.step' is 2.5, not a step count"},
       {kt::set_tensor("state.0.momentum_buffer", kiln::zeros({3, 4}, kiln::kInt64)),
        "[SGD] load_state_dict: 'state.0.momentum_buffer' is not a float tensor"}});
  CHECK(opt.state(p.w)->buffers[0].to_vector<double>() == buf);
  CHECK(opt.lr() == 0.1);
  // Another optimizer's state does not fit.
  optim::Adam adam({p.w, p.b});
  CHECK_KILN_ERROR(adam.load_state_dict(good), "[Adam] load_state_dict: missing scalar 'group.0.beta1'");
  // float32 state loads into float64 parameters by conversion.
  auto bad = good;
  bad.insert("state.0.momentum_buffer", good.at("state.0.momentum_buffer").to(kiln::kFloat32));
  opt.load_state_dict(bad);
  CHECK(opt.state(p.w)->buffers[0].dtype() == kiln::kFloat64);
}

TEST_CASE("optim bad options and parameters raise kiln errors naming the optimizer") {
  using namespace kiln::optim;
  Tensor w = kiln::ones({3}).requires_grad_();
  CHECK_KILN_ERROR(SGD({w}, SGDOptions(-0.1)), "[SGD] invalid learning rate: -0.1 (must be >= 0)");
  CHECK_KILN_ERROR(SGD({w}, SGDOptions(0.1).momentum(-1)), "[SGD] invalid momentum: -1");
  CHECK_KILN_ERROR(SGD({w}, SGDOptions(0.1).nesterov(true)),
                   "[SGD] invalid momentum for nesterov: 0 (Nesterov momentum needs momentum > 0)");
  CHECK_KILN_ERROR(SGD({w}, SGDOptions(0.1).momentum(0.9).dampening(0.1).nesterov(true)),
                   "[SGD] invalid dampening for nesterov: 0.1");
  CHECK_KILN_ERROR(SGD({w}, SGDOptions(0.1).weight_decay(-1e-4)), "[SGD] invalid weight_decay: -0.0001");
  CHECK_KILN_ERROR(Adam({w}, AdamOptions(0.1).betas({1.0, 0.999})), "[Adam] invalid beta1: 1 (must be in [0, 1))");
  CHECK_KILN_ERROR(Adam({w}, AdamOptions(0.1).betas({0.9, -0.1})), "[Adam] invalid beta2: -0.1 (must be in [0, 1))");
  CHECK_KILN_ERROR(Adam({w}, AdamOptions(0.1).eps(-1)), "[Adam] invalid eps: -1");
  CHECK_KILN_ERROR(Adam({w}, AdamOptions(NAN)), "[Adam] invalid learning rate: nan");
  CHECK_KILN_ERROR(AdamW({w}, AdamWOptions(0.1).weight_decay(-0.1)), "[AdamW] invalid weight_decay: -0.1");
  CHECK_KILN_ERROR(RMSprop({w}, RMSpropOptions(0.1).alpha(1.5)), "[RMSprop] invalid alpha: 1.5 (must be in [0, 1])");
  CHECK_KILN_ERROR(RMSprop({w}, RMSpropOptions(0.1).momentum(-0.5)), "[RMSprop] invalid momentum: -0.5");
  CHECK_KILN_ERROR(Adagrad({w}, AdagradOptions(0.1).lr_decay(-1)), "[Adagrad] invalid lr_decay: -1");
  CHECK_KILN_ERROR(Adagrad({w}, AdagradOptions(0.1).initial_accumulator_value(-1)),
                   "[Adagrad] invalid initial_accumulator_value: -1");
  CHECK_KILN_ERROR(Lion({w}, LionOptions(0.1).betas({0.9, 1.5})), "[Lion] invalid beta2: 1.5 (must be in [0, 1])");

  CHECK_KILN_ERROR(SGD(std::vector<Tensor>{}, SGDOptions(0.1)), "[SGD] got an empty parameter list");
  CHECK_KILN_ERROR(SGD({w, Tensor()}, SGDOptions(0.1)), "[SGD] parameter 1 of group 0 is an undefined tensor");
  CHECK_KILN_ERROR(Adam({kiln::ones({2}, kiln::kInt64)}),
                   "[Adam] parameter 0 of group 0 has dtype int64; only floating point tensors can be optimized");
  Tensor nonleaf = w * 2.0;
  CHECK_KILN_ERROR(Adam({w, nonleaf}), "[Adam] parameter 1 of group 0 (shape (3,)) is not a leaf tensor");
  CHECK_KILN_ERROR(
      Adam({w, w}),
      "[Adam] parameter 1 of group 0 (shape (3,)) appears more than once: it is also parameter 0 of group 0");
  CHECK_KILN_ERROR(
      Adam({ParamGroup({w}), ParamGroup({w})}),
      "[Adam] parameter 0 of group 1 (shape (3,)) appears more than once: it is also parameter 0 of group 0");
  CHECK_KILN_ERROR(Adam({ParamGroup({w}, SGDOptions(0.1))}),
                   "[Adam] param group options are SGDOptions, expected AdamOptions");
  Adam opt({w});
  CHECK_KILN_ERROR(opt.add_param_group(ParamGroup({w})), "appears more than once");
  CHECK_KILN_ERROR(opt.add_param_group(ParamGroup({kiln::ones({2}).requires_grad_()}, AdamOptions(-1))),
                   "[Adam] invalid learning rate: -1");
  CHECK(opt.param_groups().size() == 1);  // failed adds leave the groups alone
  // Options edited in place are checked when stepping.
  w.set_grad(kiln::ones({3}));
  opt.param_groups()[0].options().set_lr(-2);
  CHECK_KILN_ERROR(opt.step(), "[Adam] invalid learning rate: -2");
}

TEST_CASE("optim steady-state steps allocate nothing") {
  for (std::int64_t n : {std::int64_t{7}, std::int64_t{200000}}) {  // serial and multi-threaded kernels
    for (const auto& m : makers()) {
      INFO("optimizer " << m.name << ", " << n << " elements");
      Tensor a = kiln::randn({n}).requires_grad_(), b = kiln::randn({3, 5}, kiln::kFloat64).requires_grad_();
      a.set_grad(kiln::randn({n}));
      b.set_grad(kiln::randn({3, 5}, kiln::kFloat64));
      auto opt = m.make({a, b});
      opt->step();  // creates the state
      const auto s0 = kiln::cpu_allocator_stats();
      for (int i = 0; i < 5; ++i) opt->step();
      opt->zero_grad(false);
      const auto s1 = kiln::cpu_allocator_stats();
      CHECK(s1.os_allocs == s0.os_allocs);
      CHECK(s1.cache_hits == s0.cache_hits);
      CHECK(s1.in_use_bytes == s0.in_use_bytes);
    }
  }
}

TEST_CASE("optim updates do not depend on the thread count") {
  const int threads = kiln::get_num_threads();
  for (const auto& m : makers()) {
    INFO("optimizer " << m.name);
    std::vector<Tensor> results;
    for (int t : {1, 2}) {
      kiln::set_num_threads(t);
      kiln::Generator gen(9);
      Tensor a = kiln::randn({150000}, kiln::kFloat32, &gen).requires_grad_();
      auto opt = m.make({a});
      for (int i = 0; i < 3; ++i) {
        a.set_grad(kiln::randn({150000}, kiln::kFloat32, &gen));
        opt->step();
      }
      results.push_back(a.detach());
    }
    CHECK(same_bits(results[0], results[1]));
  }
  kiln::set_num_threads(threads);
}

TEST_CASE("optim every optimizer fits a least-squares problem") {
  kiln::Generator gen(21);
  Tensor X = kiln::randn({64, 8}, kiln::kFloat64, &gen);
  Tensor w_true = kiln::randn({8, 1}, kiln::kFloat64, &gen);
  Tensor y = kiln::matmul(X, w_true);
  using namespace kiln::optim;
  const std::vector<std::pair<std::string, std::function<std::unique_ptr<Optimizer>(Tensor)>>> opts = {
      {"SGD", [](Tensor w) { return std::make_unique<SGD>(std::vector<Tensor>{w}, SGDOptions(0.05).momentum(0.9)); }},
      {"SGD nesterov",
       [](Tensor w) {
         return std::make_unique<SGD>(std::vector<Tensor>{w}, SGDOptions(0.05).momentum(0.9).nesterov(true));
       }},
      {"Adam", [](Tensor w) { return std::make_unique<Adam>(std::vector<Tensor>{w}, AdamOptions(0.05)); }},
      {"Adam amsgrad",
       [](Tensor w) { return std::make_unique<Adam>(std::vector<Tensor>{w}, AdamOptions(0.05).amsgrad(true)); }},
      {"AdamW",
       [](Tensor w) { return std::make_unique<AdamW>(std::vector<Tensor>{w}, AdamWOptions(0.05).weight_decay(1e-4)); }},
      {"RMSprop",
       [](Tensor w) { return std::make_unique<RMSprop>(std::vector<Tensor>{w}, RMSpropOptions(0.01).centered(true)); }},
      {"Adagrad", [](Tensor w) { return std::make_unique<Adagrad>(std::vector<Tensor>{w}, AdagradOptions(0.5)); }},
      {"Lion", [](Tensor w) { return std::make_unique<Lion>(std::vector<Tensor>{w}, LionOptions(0.03)); }},
  };
  for (const auto& [name, make] : opts) {
    INFO("optimizer " << name);
    Tensor w = kiln::zeros({8, 1}, kiln::kFloat64).requires_grad_();
    auto opt = make(w);
    // Lion's fixed-size sign steps only settle with a decaying rate.
    std::unique_ptr<CosineAnnealingLR> sched;
    if (name == "Lion") sched = std::make_unique<CosineAnnealingLR>(*opt, 400);
    double first = 0, last = 0;
    for (int i = 0; i < 400; ++i) {
      opt->zero_grad();
      Tensor loss = kiln::mse_loss(kiln::matmul(X, w), y);
      loss.backward();
      opt->step();
      if (sched) sched->step();
      (i == 0 ? first : last) = loss.item<double>();
    }
    INFO("loss " << first << " -> " << last);
    CHECK(last < 1e-3 * first);
    CHECK(kiln::amax(kiln::abs(w - w_true)).item<double>() < 0.05);
  }
}
