// Resuming a schedule with another plan (a run continued with more steps): by default the
// scheduler keeps the plan it was built with from the saved epoch, sets the optimizer's rates
// from it and reports the difference in one line; ResumePlan::Saved continues the state's plan
// (PyTorch's behaviour). Closed-form references; the checkpoint path through io too.
#include <cmath>
#include <filesystem>
#include <kiln/io/checkpoint.hpp>
#include <kiln/optim/optim.hpp>
#include <numbers>

#include "process_util.hpp"
#include "test_util.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

struct Run {
  Tensor w = zeros({2}).requires_grad_();
  optim::SGD opt{{w}, optim::SGDOptions(0.1)};
};

double cosine(double base, double eta_min, std::int64_t epoch, std::int64_t T_max) {
  return eta_min + (base - eta_min) * (1 + std::cos(std::numbers::pi * double(epoch) / double(T_max))) / 2;
}

}  // namespace

TEST_CASE("sched resume: a longer T_max is followed from the saved epoch, the rate never climbs back") {
  Run a, b;
  optim::CosineAnnealingLR old_plan(a.opt, /*T_max=*/10, /*eta_min=*/1e-3);
  for (int i = 0; i < 8; ++i) old_plan.step();
  optim::CosineAnnealingLR longer(b.opt, /*T_max=*/20, 1e-3);
  std::vector<std::string> lines;
  longer.set_plan_warning([&](const std::string& l) { lines.push_back(l); });
  longer.load_state_dict(old_plan.state_dict());
  CHECK(longer.last_epoch() == 8);
  CHECK(longer.get_last_lr()[0] == doctest::Approx(cosine(0.1, 1e-3, 8, 20)).epsilon(1e-12));
  CHECK(b.opt.lr(0) == longer.get_last_lr()[0]);  // the optimizer runs the next step at the new plan's rate
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == fmt::format("[CosineAnnealingLR] resuming with another schedule (T_max 10 in the state, 20 here): "
                                "following this one from epoch 8 (lr {} -> {})",
                                old_plan.get_last_lr()[0], longer.get_last_lr()[0]));
  double prev = longer.get_last_lr()[0];
  for (std::int64_t e = 9; e <= 20; ++e) {
    longer.step();
    CHECK(longer.get_last_lr()[0] <= prev);
    CHECK(longer.get_last_lr()[0] == doctest::Approx(cosine(0.1, 1e-3, e, 20)).epsilon(1e-12));
    prev = longer.get_last_lr()[0];
  }
  CHECK(prev == doctest::Approx(1e-3));
}

TEST_CASE("sched resume: ResumePlan::Saved continues the state's plan, as PyTorch") {
  Run a, b;
  optim::CosineAnnealingLR old_plan(a.opt, 10, 1e-3);
  for (int i = 0; i < 8; ++i) old_plan.step();
  optim::CosineAnnealingLR s(b.opt, 20, 1e-3);
  s.set_resume_plan(optim::ResumePlan::Saved);
  const std::string err = kt::stderr_of([&] { s.load_state_dict(old_plan.state_dict()); });
  CHECK(err ==
        "[CosineAnnealingLR] resuming with another schedule (T_max 10 in the state, 20 here): continuing the state's "
        "(ResumePlan::Saved) from epoch 8\n");
  for (int i = 0; i < 7; ++i) {
    old_plan.step();
    s.step();
    CHECK(s.get_last_lr() == old_plan.get_last_lr());
  }
  CHECK(s.get_last_lr()[0] > cosine(0.1, 1e-3, 10, 10));  // past the old T_max the cosine climbs back
}

TEST_CASE("sched resume: the same plan resumes exactly and says nothing") {
  Run a, b;
  optim::WarmupCosineLR sa(a.opt, 3, 12, 0.0, 1e-4), sb(b.opt, 3, 12, 0.0, 1e-4);
  for (int i = 0; i < 5; ++i) sa.step();
  const double before = b.opt.lr(0);
  const std::string err = kt::stderr_of([&] { sb.load_state_dict(sa.state_dict()); });
  CHECK(err.empty());
  CHECK(b.opt.lr(0) == before);  // the optimizer's own state carries the rate
  CHECK(sb.get_last_lr() == sa.get_last_lr());
}

TEST_CASE("sched resume: a bad state is still refused whatever the plan kept") {
  Run a, b;
  optim::CosineAnnealingLR sa(a.opt, 10), sb(b.opt, 20);
  kiln::StateDict sd = sa.state_dict();
  sd.scalars["T_max"] = 0;
  CHECK_KILN_ERROR(sb.load_state_dict(sd), "[CosineAnnealingLR] T_max must be >= 1, got 0");
  CHECK(sb.last_epoch() == 0);
  sb.step();
  CHECK(sb.get_last_lr()[0] == doctest::Approx(cosine(0.1, 0, 1, 20)).epsilon(1e-12));
}

TEST_CASE("sched resume: a checkpoint of a shorter WarmupCosineLR run, resumed with more steps") {
  const fs::path dir = fs::temp_directory_path() / fmt::format("kiln_sched_resume_{}", getpid());
  fs::create_directories(dir);
  const std::string path = (dir / "run.ckpt").string();
  {
    Run a;
    optim::WarmupCosineLR s(a.opt, /*warmup=*/4, /*total=*/40, 0.0, 1e-4);
    for (int i = 0; i < 30; ++i) s.step();
    io::save_checkpoint(path, io::TrainingState{.optimizer = a.opt, .scheduler = s}, 30);
  }
  Run b, ref;
  optim::WarmupCosineLR s(b.opt, /*warmup=*/8, /*total=*/80, 0.0, 1e-4);
  std::vector<std::string> lines;
  s.set_plan_warning([&](const std::string& l) { lines.push_back(l); });
  io::load_checkpoint(path, io::TrainingState{.optimizer = b.opt, .scheduler = s});
  REQUIRE(lines.size() == 1);  // one line for the warm-up and the cosine after it
  CHECK(lines[0].find("[LinearWarmup] resuming with another schedule (warmup_steps 4 in the state, 8 here, "
                      "after.T_max 36 in the state, 72 here): following this one from epoch 30") == 0);
  // The same rates as a run planned for 80 steps from the start (what charlm did by hand).
  optim::WarmupCosineLR planned(ref.opt, 8, 80, 0.0, 1e-4);
  for (int i = 0; i < 30; ++i) planned.step();
  CHECK(s.get_last_lr() == planned.get_last_lr());
  CHECK(b.opt.lr(0) == planned.get_last_lr()[0]);
  for (int i = 30; i < 80; ++i) {
    s.step();
    planned.step();
    CHECK(s.get_last_lr() == planned.get_last_lr());
  }
  fs::remove_all(dir);
}
