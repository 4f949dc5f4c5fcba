// Optimizer trajectories against PyTorch (tools/optim_goldens.py): every optimizer and option
// combination, float64 at rtol 1e-5, plus float32 and non-contiguous parameters.
#include "optim/test_optim_util.hpp"

namespace {

using namespace ko;

// Codes of `meta <case>.optimizer` (OPTIMIZERS in the script).
std::unique_ptr<optim::OptimizerOptions> default_options(std::int64_t kind) {
  switch (kind) {
    case 0: return std::make_unique<optim::SGDOptions>();
    case 1: return std::make_unique<optim::AdamOptions>();
    case 2: return std::make_unique<optim::AdamWOptions>();
    case 3: return std::make_unique<optim::RMSpropOptions>();
    case 4: return std::make_unique<optim::AdagradOptions>();
    case 5: return std::make_unique<optim::LionOptions>();
  }
  FAIL("unknown optimizer code " << kind);
  return nullptr;
}

// Every option comes from the file, through the options' generic field list.
std::unique_ptr<optim::OptimizerOptions> options_from(const Golden& g, const std::string& prefix, std::int64_t kind) {
  auto o = default_options(kind);
  int n = 0;
  o->fields([&](const char* name, double& v) {
    v = g.num(prefix + "." + name);
    ++n;
  });
  int in_file = 0;
  for (const auto& [k, v] : g.meta) in_file += k.rfind(prefix + ".", 0) == 0;
  CHECK(n == in_file);  // the file and kiln know the same options
  return o;
}

std::unique_ptr<optim::Optimizer> make_optimizer(std::int64_t kind, std::vector<optim::ParamGroup> groups,
                                                 const optim::OptimizerOptions& d) {
  switch (kind) {
    case 0: return std::make_unique<optim::SGD>(std::move(groups), dynamic_cast<const optim::SGDOptions&>(d));
    case 1: return std::make_unique<optim::Adam>(std::move(groups), dynamic_cast<const optim::AdamOptions&>(d));
    case 2: return std::make_unique<optim::AdamW>(std::move(groups), dynamic_cast<const optim::AdamWOptions&>(d));
    case 3: return std::make_unique<optim::RMSprop>(std::move(groups), dynamic_cast<const optim::RMSpropOptions&>(d));
    case 4: return std::make_unique<optim::Adagrad>(std::move(groups), dynamic_cast<const optim::AdagradOptions&>(d));
    case 5: return std::make_unique<optim::Lion>(std::move(groups), dynamic_cast<const optim::LionOptions&>(d));
  }
  FAIL("unknown optimizer code " << kind);
  return nullptr;
}

std::unique_ptr<optim::Optimizer> optimizer_for(const Golden& g, const std::string& c, const Problem& p) {
  const std::int64_t kind = g.inum(c + ".optimizer");
  auto o0 = options_from(g, c + ".g0", kind);
  std::vector<optim::ParamGroup> groups;
  if (g.inum(c + ".groups") == 1) {
    groups.emplace_back(std::vector<Tensor>{p.w, p.b}, *o0);
  } else {
    groups.emplace_back(std::vector<Tensor>{p.w}, *o0);
    groups.emplace_back(std::vector<Tensor>{p.b}, *options_from(g, c + ".g1", kind));
  }
  return make_optimizer(kind, std::move(groups), *o0);
}

// Runs a case from (w, b) and compares after every step; returns the worst closeness.
double run_case(const Golden& g, const std::string& c, const Problem& p, double rtol, double atol) {
  auto opt = optimizer_for(g, c, p);
  const Tensor& W = g.at(c + ".w");
  const Tensor& B = g.at(c + ".b");
  double worst = 0;
  for (std::int64_t s = 0; s < W.size(0); ++s) {
    opt->zero_grad();
    p.backward();
    opt->step();
    worst = std::max({worst, closeness(p.w, W.select(0, s), rtol, atol), closeness(p.b, B.select(0, s), rtol, atol)});
  }
  return worst;
}

void check_file(const std::string& file) {
  Golden g = load_golden(file);
  auto cases = g.cases("w");
  REQUIRE(cases.size() >= 3);
  for (const auto& c : cases) {
    INFO("case " << c);
    Problem p = make_problem(g);
    CHECK(run_case(g, c, p, 1e-5, 1e-12) <= 1.0);
  }
}

}  // namespace

TEST_CASE("optim golden SGD trajectories match PyTorch") { check_file("sgd.txt"); }
TEST_CASE("optim golden Adam trajectories match PyTorch") { check_file("adam.txt"); }
TEST_CASE("optim golden AdamW trajectories match PyTorch") { check_file("adamw.txt"); }
TEST_CASE("optim golden RMSprop trajectories match PyTorch") { check_file("rmsprop.txt"); }
TEST_CASE("optim golden Adagrad trajectories match PyTorch") { check_file("adagrad.txt"); }
TEST_CASE("optim golden Lion trajectories match the reference") { check_file("lion.txt"); }

TEST_CASE("optim golden float32 parameters follow the float64 trajectories") {
  // Lion's sign update can flip on float32 rounding near 0, so it is checked in float64 only.
  for (const char* file : {"sgd.txt", "adam.txt", "adamw.txt", "rmsprop.txt", "adagrad.txt"}) {
    Golden g = load_golden(file);
    for (const auto& c : g.cases("w")) {
      INFO(file << " case " << c);
      Problem p = make_problem(g, kiln::kFloat32);
      CHECK(p.w.dtype() == kiln::kFloat32);
      CHECK(run_case(g, c, p, 1e-3, 1e-4) <= 1.0);
    }
  }
}

TEST_CASE("optim golden non-contiguous parameters and gradients") {
  for (const char* file : {"sgd.txt", "adam.txt", "rmsprop.txt", "lion.txt"}) {
    Golden g = load_golden(file);
    for (const auto& c : g.cases("w")) {
      INFO(file << " case " << c);
      Problem p = make_problem(g);
      // w as a transposed view of a (4, 3) buffer: a leaf whose memory is not in row order.
      Tensor buf = p.w.detach().t().contiguous();
      Tensor w = buf.t();
      REQUIRE(!w.is_contiguous());
      w.requires_grad_();
      REQUIRE(w.is_leaf());
      p.w = w;
      auto opt = optimizer_for(g, c, p);
      const Tensor& W = g.at(c + ".w");
      const Tensor& B = g.at(c + ".b");
      double worst = 0;
      for (std::int64_t s = 0; s < W.size(0); ++s) {
        opt->zero_grad();
        p.backward();
        // b's gradient as a strided view too
        Tensor gb = kiln::zeros({5, 2}, kiln::kFloat64).select(1, 0);
        gb.copy_(p.b.grad());
        p.b.set_grad(gb);
        opt->step();
        worst = std::max({worst, closeness(p.w, W.select(0, s)), closeness(p.b, B.select(0, s))});
      }
      CHECK(worst <= 1.0);
      CHECK(closeness(buf.t(), W.select(0, W.size(0) - 1)) <= 1.0);  // written through the view
    }
  }
}
