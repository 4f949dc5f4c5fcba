// amp::GradScaler stepping an amp::ShardedOptimizer, in one process: a stand-in whose exchange()
// answers for a scripted second rank, so the agreement logic runs without MPI (the real ranks:
// tests/distributed/amp_tests.cc under mpirun). A peer's inf/NaN skips the step here too, a peer
// whose scaler differs or that failed locally is an error, this rank's own failure reaches the
// peer, and the shard's local optimizer is refused for as long as the sharded one lives.
#include <functional>
#include <limits>
#include <memory>

#include "test_util.hpp"

using namespace kiln;
using amp::GradScaler;
using amp::GradScalerOptions;

namespace {

// Rank 0 of two: the local optimizer holds every parameter; `peer` edits what rank 1 sends
// (a copy of this rank's values: enabled, failed, found_inf, scale, tracker, growth, backoff,
// interval).
class TwoRanks : public amp::ShardedOptimizer {
 public:
  explicit TwoRanks(std::vector<Tensor> params) : params_(params), local_(std::move(params), optim::SGDOptions(0.5)) {
    set_local(local_);
  }
  const char* sharded_name() const override { return "TwoRanks"; }
  std::vector<Tensor> scaled_parameters() const override { return params_; }
  std::vector<double> exchange(const std::vector<double>& mine) override {
    ++exchanges;
    sent = mine;
    std::vector<double> theirs = mine;
    theirs[1] = 0;  // no failure, no inf/NaN unless the script says so
    theirs[2] = 0;
    if (peer) peer(theirs);
    std::vector<double> all = mine;
    if (wrong_size) all.pop_back();
    all.insert(all.end(), theirs.begin(), theirs.end());
    return all;
  }
  void step() override {
    ++steps;
    local_.step();
  }
  optim::SGD& local() { return local_; }

  std::function<void(std::vector<double>&)> peer;
  std::vector<double> sent;
  int exchanges = 0, steps = 0;
  bool wrong_size = false;

 private:
  std::vector<Tensor> params_;
  optim::SGD local_;
};

struct Fixture {
  Tensor w = tensor(std::vector<float>{1, 2, 3}).requires_grad_();
  Tensor x = tensor(std::vector<float>{0.5f, -1, 2});
  TwoRanks opt{{w}};
  Tensor loss() const { return sum(mul(w, x)); }  // gradient x
};

}  // namespace

TEST_CASE("GradScaler + ShardedOptimizer: the ranks' inf/NaN findings are combined") {
  Fixture f;
  GradScaler s(GradScalerOptions().init_scale(8));
  s.scale(f.loss()).backward();
  CHECK(s.step(f.opt));  // both clean: the step runs on the unscaled gradient
  CHECK(f.opt.exchanges == 1);
  CHECK(f.opt.steps == 1);
  CHECK(f.w.detach().to_vector<double>() == std::vector<double>{0.75, 2.5, 2});
  CHECK(f.opt.sent == std::vector<double>{1, 0, 0, 8, 0, 2, 0.5, 2000});
  s.update();
  // Only the peer found an inf/NaN (in its share): this rank skips as well and backs off.
  f.opt.peer = [](std::vector<double>& v) { v[2] = 1; };
  f.opt.local().zero_grad();
  s.scale(f.loss()).backward();
  s.unscale_(f.opt);
  CHECK(f.w.grad().to_vector<double>() == std::vector<double>{0.5, -1, 2});  // unscaled all the same
  CHECK_FALSE(s.step(f.opt));
  CHECK(f.opt.exchanges == 2);  // step() after unscale_() does not exchange again
  CHECK(f.opt.steps == 1);
  s.update();
  CHECK(s.get_scale() == 4);
  CHECK(s.growth_tracker() == 0);
  // This rank's own inf reaches the exchange.
  f.opt.peer = nullptr;
  f.opt.local().zero_grad();
  s.scale(f.loss()).backward();
  {
    NoGradGuard ng;
    f.w.grad().narrow(0, 1, 1).fill_(std::numeric_limits<double>::quiet_NaN());
  }
  CHECK_FALSE(s.step(f.opt));
  CHECK(f.opt.sent[2] == 1);
  s.update();
  CHECK(s.get_scale() == 2);
}

TEST_CASE("GradScaler + ShardedOptimizer: scalers that differ across the ranks are an error") {
  const std::string head = "[GradScaler] unscale_()/step() on a TwoRanks: the ranks' scalers differ: rank 0: ";
  struct Case {
    std::function<void(std::vector<double>&)> peer;
    std::string ranks;
  };
  const Case cases[] = {
      {[](auto& v) { v[0] = 0; },
       "scale 65536, growth tracker 0, growth_factor 2, backoff_factor 0.5, growth_interval 2000; rank 1: disabled"},
      {[](auto& v) { v[3] = 1024; }, "rank 1: scale 1024, growth tracker 0"},
      {[](auto& v) { v[4] = 3; }, "rank 1: scale 65536, growth tracker 3"},
      {[](auto& v) { v[7] = 100; }, "backoff_factor 0.5, growth_interval 100."},
  };
  for (const Case& c : cases) {
    Fixture f;
    GradScaler s;
    f.opt.peer = c.peer;
    s.scale(f.loss()).backward();
    const std::string err = kt::error_of([&] { s.step(f.opt); });
    CHECK_MESSAGE(err.find(head) == 0, err);
    CHECK_MESSAGE(err.find(c.ranks) != std::string::npos, err);
    CHECK(f.opt.steps == 0);
    // The iteration is void: no stage is left for update(), and a fresh one runs.
    CHECK(kt::error_of([&] { s.update(); }).find("no unscale_() or step() since the last update()") !=
          std::string::npos);
    f.opt.peer = nullptr;
    f.opt.local().zero_grad();
    s.scale(f.loss()).backward();
    CHECK(s.step(f.opt));
    s.update();
  }
  // A disabled scaler still takes part, so a rank whose scaler is enabled is found out.
  Fixture f;
  GradScaler off(GradScalerOptions().enabled(false));
  f.loss().backward();
  off.unscale_(f.opt);  // passes through, no exchange
  CHECK(f.opt.exchanges == 0);
  CHECK(off.step(f.opt));
  CHECK(f.opt.exchanges == 1);
  CHECK(f.opt.sent[0] == 0);
  f.opt.peer = [](auto& v) { v[0] = 1; };
  CHECK(kt::error_of([&] { off.step(f.opt); }).find("rank 0: disabled; rank 1: scale 65536") != std::string::npos);
  CHECK(f.opt.steps == 1);
}

TEST_CASE("GradScaler + ShardedOptimizer: a failure on one rank stops every rank") {
  Fixture f;
  GradScaler s;
  // The peer failed before the exchange (say it called no scale()).
  f.opt.peer = [](auto& v) { v[1] = 1; };
  s.scale(f.loss()).backward();
  CHECK(kt::error_of([&] { s.step(f.opt); }) ==
        "[GradScaler] unscale_()/step() on a TwoRanks: rank 1 failed before the ranks could agree (its error is in "
        "its own output); no rank steps");
  // This rank failed: it still exchanges (the peer learns of it), then raises its own error.
  f.opt.peer = nullptr;
  f.opt.local().zero_grad();
  f.loss().backward();
  s.update(16.0);  // a new iteration without scale()
  const int before = f.opt.exchanges;
  CHECK(kt::error_of([&] { s.step(f.opt); }).find("no scale() since the last update()") != std::string::npos);
  CHECK(f.opt.exchanges == before + 1);
  CHECK(f.opt.sent[1] == 1);
  CHECK(f.opt.steps == 0);
  // unscale_ twice: the second is this rank's failure, exchanged as well; the first one's stage
  // stays (its gradients are unscaled: step() must not divide them again).
  f.opt.local().zero_grad();
  s.scale(f.loss()).backward();
  s.unscale_(f.opt);
  CHECK(kt::error_of([&] { s.unscale_(f.opt); }).find("unscale_() has already been called on this TwoRanks") !=
        std::string::npos);
  CHECK(s.step(f.opt));
  CHECK(f.w.grad().to_vector<double>() == std::vector<double>{0.5, -1, 2});
  // An exchange that returns a ragged answer.
  Fixture g;
  GradScaler t;
  g.opt.wrong_size = true;
  t.scale(g.loss()).backward();
  CHECK(kt::error_of([&] { t.step(g.opt); }) == "[GradScaler] TwoRanks::exchange returned 15 values for 8 per rank");
}

TEST_CASE("GradScaler refuses the local optimizer of a ShardedOptimizer while that one lives") {
  Tensor w = tensor(std::vector<float>{1, 2}).requires_grad_();
  auto sharded = std::make_unique<TwoRanks>(std::vector<Tensor>{w});
  optim::SGD& local = sharded->local();
  for (bool enabled : {true, false}) {
    GradScaler s(GradScalerOptions().enabled(enabled));
    s.scale(sum(w)).backward();
    CHECK(kt::error_of([&] { s.step(local); }) ==
          "[GradScaler] step(): this SGD optimizer is the local shard of a TwoRanks; pass the TwoRanks itself "
          "(scaler.step(zero)): with its shard only, each rank would check only its own gradients (the ranks could "
          "disagree on skipping) and no parameter would be gathered");
    if (enabled)
      CHECK(kt::error_of([&] {
              s.unscale_(local);
            }).rfind("[GradScaler] unscale_(): this SGD optimizer is the local shard of a TwoRanks", 0) == 0);
  }
  CHECK(sharded->steps == 0);
  // Another optimizer over the same parameters is not affected.
  optim::SGD other(std::vector<Tensor>{w}, optim::SGDOptions(0.1));
  GradScaler s;
  other.zero_grad();
  s.scale(sum(w)).backward();
  CHECK(s.step(other));
  s.update();
}
