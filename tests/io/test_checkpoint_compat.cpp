// Checkpoints across versions and spellings: optimizer state dicts written before the io/ layer
// and the shared StateDict still load (and match today's trajectories to 2 ulps); the model
// may be given as a holder, a pointer, a reference or a shared_ptr; TrainingState takes
// designated initializers naming any subset of its parts without warnings.
#include <kiln/io/io.hpp>
#include <kiln/optim/optim.hpp>
#include <limits>

#include "st_test_util.hpp"

using namespace kiln;

namespace {

// The parameters and optimizers tests/data/optim/state_dicts_v1.safetensors was written from
// (kiln before the io/ layer): six 2x3 float64 parameters, two steps with g = p * p - 0.5 * step.
struct SixOptimizers {
  std::vector<Tensor> ps;
  optim::SGD sgd;
  optim::Adam adam;
  optim::AdamW adamw;
  optim::RMSprop rms;
  optim::Adagrad ada;
  optim::Lion lion;

  static Tensor param(double s) {
    std::vector<double> v(6);
    for (int i = 0; i < 6; ++i) v[i] = s * (i - 2.5) / 3.0;
    return kiln::tensor(v, {2, 3}).requires_grad_();
  }
  SixOptimizers()
      : ps{param(1), param(2), param(3), param(4), param(5), param(6)},
        sgd({ps[0]}, optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(0.01)),
        adam({ps[1]}, optim::AdamOptions(0.05).amsgrad(true).weight_decay(0.01)),
        adamw({ps[2]}, optim::AdamWOptions(0.05).betas({0.9, 0.95}).amsgrad(true)),
        rms({ps[3]}, optim::RMSpropOptions(0.01).momentum(0.5).centered(true)),
        ada({ps[4]}, optim::AdagradOptions(0.1).lr_decay(0.01).initial_accumulator_value(0.1)),
        lion({ps[5]}, optim::LionOptions(0.01).weight_decay(0.1)) {}
  std::vector<optim::Optimizer*> all() { return {&sgd, &adam, &adamw, &rms, &ada, &lion}; }
  void train(int steps) {
    for (int step = 0; step < steps; ++step)
      for (std::size_t i = 0; i < ps.size(); ++i) {
        ps[i].set_grad((ps[i].detach() * ps[i].detach() - 0.5 * step).detach());
        all()[i]->step();
      }
  }
  io::TrainingState state() {
    return {
        .extras = {{"sgd", sgd}, {"adam", adam}, {"adamw", adamw}, {"rmsprop", rms}, {"adagrad", ada}, {"lion", lion}}};
  }
};

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// The file was written on another CPU. There the update loop's vector body and its scalar tail
// rounded a fused multiply-add differently (the last two of six elements differ in the last bit
// against an AVX-512 machine, where all six take one path), so the values are held to 2 ulps; the
// layout, keys and step counts still have to match exactly.
bool within_ulps(const Tensor& a, const Tensor& b, int ulps) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (std::size_t i = 0; i < va.size(); ++i)
    if (std::abs(va[i] - vb[i]) > ulps * std::numeric_limits<double>::epsilon() * std::abs(vb[i])) return false;
  return true;
}

struct TinyNetImpl : nn::Module {
  TinyNetImpl() : fc(register_module("fc", nn::Linear(2, 3))) {}
  Tensor forward(const Tensor& x) { return fc(x); }
  nn::Linear fc;
};
KILN_MODULE(TinyNet);

}  // namespace

TEST_CASE("optimizer state dicts written before the io/ layer load and match today's steps") {
  SixOptimizers today;
  today.train(2);
  SixOptimizers loaded;
  const auto info =
      io::load_checkpoint(std::string(KILN_TEST_DATA) + "/optim/state_dicts_v1.safetensors", loaded.state());
  CHECK(info.step == 2);
  for (std::size_t i = 0; i < 6; ++i) {
    const optim::Optimizer& a = *today.all()[i];
    const optim::Optimizer& b = *loaded.all()[i];
    INFO(a.name());
    const StateDict sa = a.state_dict(), sb = b.state_dict();
    REQUIRE(sa.scalars.size() == sb.scalars.size());
    for (const auto& [k, v] : sa.scalars) CHECK_MESSAGE(same_bits(v, sb.scalars.at(k)), k);
    REQUIRE(sa.size() == sb.size());
    for (const auto& [k, t] : sa) CHECK_MESSAGE(within_ulps(t, sb.at(k), 2), k);
  }
  // AdamW's defaults and options kind are those it had as a class of its own.
  CHECK(optim::AdamWOptions().weight_decay() == 1e-2);
  CHECK(std::string(optim::AdamWOptions().kind()) == "AdamWOptions");
  CHECK(std::string(optim::AdamOptions().kind()) == "AdamOptions");
  CHECK_KILN_ERROR(optim::AdamW({SixOptimizers::param(1)}, optim::AdamWOptions(-1)),
                   "[AdamW] invalid learning rate: -1");
}

TEST_CASE("TrainingState takes the model as a holder, a pointer, a reference or a shared_ptr") {
  const auto dir = ckt::temp_dir("ckpt_holders");
  const std::string path = (dir / "m.safetensors").string();
  TinyNet a;
  io::save_checkpoint(path, {.model = a}, 1);
  auto check_loads = [&](io::TrainingState st, const TinyNet& into) {
    io::load_checkpoint(path, st);
    for (const auto& [k, t] : a->state_dict()) CHECK(ckt::bitwise_equal(into->state_dict()[k], t));
  };
  TinyNet b, c, d, e;
  check_loads({.model = b}, b);
  check_loads({.model = c.get()}, c);
  check_loads({.model = *d}, d);
  check_loads({.model = e.ptr()}, e);
  TinyNet empty{nullptr};
  CHECK_FALSE(io::ModuleRef(empty));
  CHECK_FALSE(io::ModuleRef(nullptr));
  std::filesystem::remove_all(dir);
}

// Designated initializers may leave any part out: compiled with the warning as an error.
#pragma GCC diagnostic push
#pragma GCC diagnostic error "-Wmissing-field-initializers"
TEST_CASE("TrainingState designated initializers need not name every part") {
  TinyNet net;
  optim::SGD opt(net->parameters(), optim::SGDOptions(0.1));
  Generator gen(7);
  io::TrainingState st{.model = net, .optimizer = opt, .generators = {{"gen", &gen}}};
  CHECK(st.model.get() == net.get());
  CHECK_FALSE(st.scheduler);
  CHECK(st.extras.empty());
}
#pragma GCC diagnostic pop
