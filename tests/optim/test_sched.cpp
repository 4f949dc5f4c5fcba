// Learning-rate schedules against PyTorch (tools/optim_goldens.py), state round trips, errors.
#include "optim/test_optim_util.hpp"

namespace {

using namespace ko;

// The goldens' optimizer: SGD with two groups at base lrs 0.1 and 0.02.
struct Fixture {
  Tensor w = kiln::zeros({2}).requires_grad_(), b = kiln::zeros({2}).requires_grad_();
  optim::SGD opt;
  explicit Fixture(const Golden& g)
      : opt(std::vector<optim::ParamGroup>{optim::ParamGroup({w}, optim::SGDOptions(g.num("base_lr.0")).momentum(0.9)),
                                           optim::ParamGroup({b}, optim::SGDOptions(g.num("base_lr.1")).momentum(0.9))},
            optim::SGDOptions(0.1)) {}
};

Tensor lrs_tensor(const std::vector<std::vector<double>>& rows) {
  std::vector<double> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return kiln::tensor(flat, {static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(rows[0].size())});
}

// get_last_lr() after construction and every step, checked against `<c>.lr`; also checks that
// the optimizer's own lrs follow.
void check_schedule(const Golden& g, const std::string& c, optim::LRScheduler& s, optim::Optimizer& opt) {
  const std::int64_t steps = g.inum(c + ".steps");
  std::vector<std::vector<double>> got{s.get_last_lr()};
  for (std::int64_t i = 0; i < steps; ++i) {
    s.step();
    got.push_back(s.get_last_lr());
    CHECK(opt.lr(0) == got.back()[0]);
    CHECK(opt.lr(1) == got.back()[1]);
  }
  INFO("schedule " << c);
  CHECK(s.last_epoch() == steps);
  CHECK(closeness(lrs_tensor(got), g.at(c + ".lr"), 1e-10, 1e-15) <= 1.0);
}

std::vector<std::int64_t> milestones(const Golden& g, const std::string& c) {
  std::vector<std::int64_t> m;
  for (std::int64_t i = 0; i < g.inum(c + ".num_milestones"); ++i)
    m.push_back(g.inum(fmt::format("{}.milestone.{}", c, i)));
  std::reverse(m.begin(), m.end());  // the scheduler sorts them
  return m;
}

}  // namespace

TEST_CASE("sched StepLR MultiStepLR ExponentialLR match PyTorch") {
  Golden g = load_golden("schedulers.txt");
  {
    Fixture f(g);
    optim::StepLR s(f.opt, g.inum("step.step_size"), g.num("step.gamma"));
    check_schedule(g, "step", s, f.opt);
  }
  {
    Fixture f(g);
    optim::MultiStepLR s(f.opt, milestones(g, "multistep"), g.num("multistep.gamma"));
    check_schedule(g, "multistep", s, f.opt);
  }
  {
    Fixture f(g);
    optim::ExponentialLR s(f.opt, g.num("exponential.gamma"));
    check_schedule(g, "exponential", s, f.opt);
  }
}

TEST_CASE("sched CosineAnnealingLR matches PyTorch including past T_max") {
  Golden g = load_golden("schedulers.txt");
  for (const char* c : {"cosine", "cosine_nomin"}) {
    Fixture f(g);
    const std::string n = c;
    optim::CosineAnnealingLR s(f.opt, g.inum(n + ".T_max"), g.num(n + ".eta_min"));
    check_schedule(g, n, s, f.opt);
  }
}

TEST_CASE("sched LinearWarmup composes with cosine and step like PyTorch SequentialLR") {
  Golden g = load_golden("schedulers.txt");
  {
    Fixture f(g);
    const std::int64_t W = g.inum("warmup_cosine.warmup_steps"), T = g.inum("warmup_cosine.total_steps");
    optim::LinearWarmup s(f.opt, W, g.num("warmup_cosine.start_factor"),
                          std::make_unique<optim::CosineAnnealingLR>(f.opt, T - W, g.num("warmup_cosine.eta_min")));
    check_schedule(g, "warmup_cosine", s, f.opt);
  }
  {
    Fixture f(g);
    optim::WarmupCosineLR s(f.opt, g.inum("warmup_cosine.warmup_steps"), g.inum("warmup_cosine.total_steps"),
                            g.num("warmup_cosine.start_factor"), g.num("warmup_cosine.eta_min"));
    check_schedule(g, "warmup_cosine", s, f.opt);
  }
  {
    Fixture f(g);
    optim::LinearWarmup s(f.opt, g.inum("warmup_step.warmup_steps"), g.num("warmup_step.start_factor"),
                          std::make_unique<optim::StepLR>(f.opt, g.inum("warmup_step.step_size"),
                                                          g.num("warmup_step.gamma")));
    check_schedule(g, "warmup_step", s, f.opt);
  }
  {
    Fixture f(g);
    optim::LinearWarmup s(f.opt, g.inum("warmup_only.warmup_steps"), g.num("warmup_only.start_factor"));
    check_schedule(g, "warmup_only", s, f.opt);
  }
}

TEST_CASE("sched OneCycleLR cos linear and three-phase match PyTorch") {
  Golden g = load_golden("schedulers.txt");
  for (const char* c : {"onecycle_cos", "onecycle_linear", "onecycle_three"}) {
    const std::string n = c;
    Fixture f(g);
    optim::OneCycleLR s(f.opt, {g.num(n + ".max_lr.0"), g.num(n + ".max_lr.1")}, g.inum(n + ".total_steps"),
                        g.num(n + ".pct_start"),
                        g.flag(n + ".anneal_cos") ? optim::AnnealStrategy::Cos : optim::AnnealStrategy::Linear,
                        g.num(n + ".div_factor"), g.num(n + ".final_div_factor"), g.flag(n + ".three_phase"));
    check_schedule(g, n, s, f.opt);
    CHECK_KILN_ERROR(s.step(), "[OneCycleLR] stepped 21 times but total_steps is 20");
  }
}

TEST_CASE("sched ReduceLROnPlateau matches PyTorch on metric sequences") {
  Golden g = load_golden("schedulers.txt");
  for (const char* c : {"plateau_min_rel", "plateau_max_abs", "plateau_min_abs_cool"}) {
    const std::string n = c;
    INFO("case " << n);
    Fixture f(g);
    optim::ReduceLROnPlateau s(f.opt, g.flag(n + ".mode_max") ? optim::PlateauMode::Max : optim::PlateauMode::Min,
                               g.num(n + ".factor"), g.inum(n + ".patience"), g.num(n + ".threshold"),
                               g.flag(n + ".threshold_abs") ? optim::ThresholdMode::Abs : optim::ThresholdMode::Rel,
                               g.inum(n + ".cooldown"),
                               std::vector<double>{g.num(n + ".min_lr.0"), g.num(n + ".min_lr.1")});
    std::vector<std::vector<double>> got;
    for (double m : g.at(n + ".metrics").to_vector<double>()) {
      s.step(m);
      got.push_back(s.get_last_lr());
      CHECK(f.opt.lr(0) == got.back()[0]);
    }
    const Tensor& want = g.at(n + ".lr");
    CHECK(closeness(lrs_tensor(got), want, 1e-12, 1e-15) <= 1.0);
    // The case is only worth its name if the rate actually moved.
    CHECK(want.to_vector<double>().back() < g.num("base_lr.1"));
  }
}

TEST_CASE("sched state_dict round trip resumes every schedule exactly") {
  Golden g = load_golden("schedulers.txt");
  using Make = std::function<std::unique_ptr<optim::LRScheduler>(optim::Optimizer&)>;
  const std::vector<std::pair<std::string, Make>> makers = {
      {"StepLR", [](optim::Optimizer& o) { return std::make_unique<optim::StepLR>(o, 3, 0.5); }},
      {"MultiStepLR",
       [](optim::Optimizer& o) {
         return std::make_unique<optim::MultiStepLR>(o, std::vector<std::int64_t>{2, 5, 9}, 0.3);
       }},
      {"ExponentialLR", [](optim::Optimizer& o) { return std::make_unique<optim::ExponentialLR>(o, 0.9); }},
      {"CosineAnnealingLR", [](optim::Optimizer& o) { return std::make_unique<optim::CosineAnnealingLR>(o, 7, 1e-3); }},
      {"LinearWarmup",
       [](optim::Optimizer& o) {
         return std::make_unique<optim::LinearWarmup>(o, 4, 0.1, std::make_unique<optim::CosineAnnealingLR>(o, 8));
       }},
      {"WarmupCosineLR",
       [](optim::Optimizer& o) { return std::make_unique<optim::WarmupCosineLR>(o, 3, 12, 0.0, 1e-4); }},
      {"OneCycleLR", [](optim::Optimizer& o) { return std::make_unique<optim::OneCycleLR>(o, 0.5, 14); }},
  };
  for (const auto& [name, make] : makers) {
    INFO("scheduler " << name);
    Fixture a(g), b(g);
    auto sa = make(a.opt);
    for (int i = 0; i < 5; ++i) sa->step();
    kiln::StateDict sd = sa->state_dict();
    CHECK(sd.scalars.at("last_epoch") == 5);
    // A fresh scheduler built with other arguments takes everything from the state.
    auto sb = make(b.opt);
    sb->load_state_dict(sd);
    CHECK(sb->last_epoch() == 5);
    CHECK(sb->get_last_lr() == sa->get_last_lr());
    for (int i = 0; i < 8; ++i) {
      sa->step();
      sb->step();
      CHECK(sb->get_last_lr() == sa->get_last_lr());  // bitwise
    }
  }
  // With ResumePlan::Saved the hyper-parameters travel too: a StepLR built with other arguments
  // follows the saved one (the default keeps its own: tests/optim/test_sched_resume.cpp).
  Fixture a(g), b(g);
  optim::StepLR sa(a.opt, 3, 0.5);
  optim::StepLR sb(b.opt, 10, 0.9);
  sa.step();
  sb.set_resume_plan(optim::ResumePlan::Saved);
  sb.set_plan_warning([](const std::string&) {});
  sb.load_state_dict(sa.state_dict());
  for (int i = 0; i < 6; ++i) {
    sa.step();
    sb.step();
  }
  CHECK(sb.get_last_lr() == sa.get_last_lr());
}

TEST_CASE("sched ReduceLROnPlateau state_dict round trip") {
  Golden g = load_golden("schedulers.txt");
  Fixture a(g), b(g);
  optim::ReduceLROnPlateau sa(a.opt, optim::PlateauMode::Min, 0.5, 1, 1e-4, optim::ThresholdMode::Rel, 1);
  optim::ReduceLROnPlateau sb(b.opt, optim::PlateauMode::Max, 0.9, 7);
  const std::vector<double> metrics = {1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8, 0.9};
  for (int i = 0; i < 4; ++i) sa.step(metrics[i]);
  b.opt.load_state_dict(a.opt.state_dict());  // the rates live in the optimizer
  sb.load_state_dict(sa.state_dict());
  CHECK(sb.best() == sa.best());
  CHECK(sb.num_bad_epochs() == sa.num_bad_epochs());
  for (std::size_t i = 4; i < metrics.size(); ++i) {
    sa.step(metrics[i]);
    sb.step(metrics[i]);
    CHECK(sb.get_last_lr() == sa.get_last_lr());
  }
  CHECK(sa.get_last_lr()[0] < 0.1);
}

TEST_CASE("sched bad arguments and bad state dicts raise kiln errors") {
  Golden g = load_golden("schedulers.txt");
  Fixture f(g);
  CHECK_KILN_ERROR(optim::StepLR(f.opt, 0), "[StepLR] step_size must be >= 1, got 0");
  CHECK_KILN_ERROR(optim::StepLR(f.opt, 2, -0.5), "[StepLR] gamma must be finite and >= 0, got -0.5");
  CHECK_KILN_ERROR(optim::MultiStepLR(f.opt, {3, -1}), "[MultiStepLR] milestones must be >= 0, got -1");
  CHECK_KILN_ERROR(optim::ExponentialLR(f.opt, NAN), "[ExponentialLR] gamma must be finite");
  CHECK_KILN_ERROR(optim::CosineAnnealingLR(f.opt, 0), "[CosineAnnealingLR] T_max must be >= 1, got 0");
  CHECK_KILN_ERROR(optim::CosineAnnealingLR(f.opt, 5, -1.0),
                   "[CosineAnnealingLR] eta_min must be finite and >= 0, got -1");
  CHECK_KILN_ERROR(optim::LinearWarmup(f.opt, 5, 1.5), "[LinearWarmup] start_factor must be in [0, 1], got 1.5");
  CHECK_KILN_ERROR(optim::LinearWarmup(f.opt, -2), "[LinearWarmup] warmup_steps must be >= 0, got -2");
  CHECK_KILN_ERROR(optim::WarmupCosineLR(f.opt, 10, 10),
                   "[WarmupCosineLR] total_steps (10) must exceed warmup_steps (10)");
  CHECK_KILN_ERROR(optim::OneCycleLR(f.opt, 0.1, 0), "[OneCycleLR] total_steps must be >= 1, got 0");
  CHECK_KILN_ERROR(optim::OneCycleLR(f.opt, 0.1, 10, 1.5), "[OneCycleLR] pct_start must be in [0, 1], got 1.5");
  CHECK_KILN_ERROR(optim::OneCycleLR(f.opt, 0.1, 3, 0.3),
                   "[OneCycleLR] pct_start 0.3 with total_steps 3 leaves a phase");
  CHECK_KILN_ERROR(optim::OneCycleLR(f.opt, std::vector<double>{0.1}, 10),
                   "[OneCycleLR] got 1 max_lr values for 2 param groups");
  CHECK_KILN_ERROR(optim::OneCycleLR(f.opt, 0.1, 10, 0.3, optim::AnnealStrategy::Cos, 0.0),
                   "[OneCycleLR] div_factor must be finite and > 0, got 0");
  CHECK_KILN_ERROR(optim::ReduceLROnPlateau(f.opt, optim::PlateauMode::Min, 1.0),
                   "[ReduceLROnPlateau] factor must be in [0, 1), got 1");
  CHECK_KILN_ERROR(optim::ReduceLROnPlateau(f.opt, optim::PlateauMode::Min, 0.1, -1),
                   "[ReduceLROnPlateau] patience must be >= 0, got -1");
  CHECK_KILN_ERROR(optim::ReduceLROnPlateau(f.opt, optim::PlateauMode::Min, 0.1, 2, 1e-4, optim::ThresholdMode::Rel, 0,
                                            std::vector<double>{0.0}),
                   "[ReduceLROnPlateau] got 1 min_lr values for 2 param groups");
  {
    // A warm-up and its inner schedule must drive the same optimizer.
    Fixture other(g);
    CHECK_KILN_ERROR(optim::LinearWarmup(f.opt, 2, 0.1, std::make_unique<optim::StepLR>(other.opt, 2)),
                     "[LinearWarmup] the scheduler to run after warm-up drives a different optimizer");
  }

  optim::StepLR s(f.opt, 3, 0.5);
  s.step();
  kt::check_bad_states(
      s.state_dict(), [&](const kiln::StateDict& sd) { s.load_state_dict(sd); },
      {{kt::erase_scalar("gamma"), "[StepLR] load_state_dict: missing scalar 'gamma'"},
       {kt::set_scalar("surprise", 1), "[StepLR] load_state_dict: unexpected scalar 'surprise'"},
       {kt::set_scalar("step_size", 0), "[StepLR] step_size must be >= 1, got 0"},
       {kt::set_scalar("num_groups", 3), "[StepLR] load_state_dict: the state has 3 param groups, this scheduler 2"},
       {kt::set_scalar("last_epoch", 1.5), "[StepLR] load_state_dict: last_epoch 1.5 is not an epoch"},
       // Past int64 (found by tests/fuzz/checkpoint_fuzz): the conversion was UB, and on x86 made
       // last_epoch or step_size INT64_MIN.
       {kt::set_scalar("last_epoch", 2.18446744073709551615e20),
        "[StepLR] load_state_dict: last_epoch 2.1844674407370955e+20 is not an epoch (an integer in [0, 2^53])"},
       {kt::set_scalar("step_size", 1e30),
        "[LRScheduler] load_state_dict: 'step_size' is 1e+30, not an integer within +-2^53"},
       {kt::set_scalar("step_size", std::nan("")),
        "[LRScheduler] load_state_dict: 'step_size' is nan, not an integer within +-2^53"}});
  // A failed load changes nothing.
  s.step();
  CHECK(s.last_epoch() == 2);
  CHECK(s.get_last_lr()[0] == doctest::Approx(0.1));
  s.step();
  CHECK(s.get_last_lr()[0] == doctest::Approx(0.05));
  // A LinearWarmup's state names its inner schedule.
  optim::LinearWarmup w(f.opt, 2, 0.5, std::make_unique<optim::ExponentialLR>(f.opt, 0.9));
  auto wsd = w.state_dict();
  CHECK(wsd.scalars.count("after.gamma") == 1);
  optim::LinearWarmup plain(f.opt, 2, 0.5);
  CHECK_KILN_ERROR(plain.load_state_dict(wsd),
                   "[LinearWarmup] load_state_dict: the state has a schedule after warm-up");
}
