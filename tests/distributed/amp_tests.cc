// amp::GradScaler across ranks (part of kiln_ddp_tests: mpirun -np 2, -np 3 and one process).
// float16 autocast + DDP + ZeRO-1 (or a plain AdamW) + GradScaler trains as one process with a
// GradScaler does on the same global batches; an inf/NaN on one rank only makes every rank skip
// and back off; the scaler's state resumes from a ZeRO checkpoint; misuse (the ZeRO shard passed
// to the scaler, scalers that differ across ranks, a rank failing in unscale_) is a kiln::Error on
// every rank, never a hang or replicas that drift apart.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <kiln/kiln.hpp>
#include <limits>
#include <string>
#include <vector>

#include "../test_util.hpp"

namespace dist = kiln::distributed;
namespace nn = kiln::nn;
namespace optim = kiln::optim;
namespace amp = kiln::amp;
using kiln::Tensor;

namespace {

struct AmpNetImpl : nn::Module {
  AmpNetImpl() {
    fc1 = register_module("fc1", nn::Linear(4, 16));
    fc2 = register_module("fc2", nn::Linear(16, 16));
    head = register_module("head", nn::Linear(16, 3));
  }
  Tensor forward(const Tensor& x) { return head(kiln::tanh(fc2(kiln::tanh(fc1(x))))); }
  nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
};
KILN_MODULE(AmpNet);

AmpNet make_net(std::uint64_t seed) {
  kiln::manual_seed(seed);
  return AmpNet();
}

std::unique_ptr<optim::Optimizer> adamw(std::vector<optim::ParamGroup> groups) {
  return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(1e-2).weight_decay(0.1));
}

// init_scale 2^17 overflows float16's backward at first (|dL/dpred| * S > 65504): the first
// steps are skipped and the scale backs off; growth_interval 2 makes it grow (and overflow)
// again within a few steps.
amp::GradScalerOptions scaler_options() { return amp::GradScalerOptions().init_scale(1 << 17).growth_interval(2); }

// Rank r's contiguous rows of a global batch of world * 3 rows.
struct Batch {
  Tensor x, y;
};
Batch global_batch(int s, int world) {
  kiln::Generator gen(500 + static_cast<std::uint64_t>(s));
  return {kiln::randn({world * 3, 4}, kiln::kFloat32, &gen), kiln::randn({world * 3, 3}, kiln::kFloat32, &gen)};
}
Batch rows_of(const Batch& b, int r) { return {b.x.narrow(0, 3 * r, 3), b.y.narrow(0, 3 * r, 3)}; }

// The rank's term of the global mean squared error (the ranks' average is the global mean),
// forward under float16 autocast.
Tensor rank_loss(AmpNet& net, const Batch& part) {
  auto mixed = kiln::autocast(kiln::kFloat16);
  return kiln::mse_loss(net(part.x), part.y, kiln::Reduction::Sum) * (1.0 / (3.0 * 3.0));
}

double max_rel_diff(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = a[i].to_vector<double>(), y = b[i].to_vector<double>();
    for (std::size_t k = 0; k < x.size(); ++k) {
      diff = std::max(diff, std::abs(x[k] - y[k]));
      scale = std::max(scale, std::abs(y[k]));
    }
  }
  return diff / scale;
}

std::vector<Tensor> snapshot(AmpNet& net) {
  std::vector<Tensor> out;
  for (const Tensor& p : net->parameters()) out.push_back(p.detach().clone());
  return out;
}

// Every rank holds rank 0's parameters, bit for bit.
bool replicas_equal(AmpNet& net) {
  bool same = true;
  for (Tensor p : net->parameters()) {
    Tensor mine = p.detach().clone();
    dist::broadcast(p, 0);
    same = same && max_rel_diff({mine}, {p}) == 0;
  }
  Tensor all = kiln::tensor(std::vector<std::int64_t>{same ? 0 : 1});
  dist::all_reduce(all, dist::ReduceOp::Max);
  return all.item<std::int64_t>() == 0;
}

// A rank whose scaler disagrees: the same message on every rank.
void check_every_rank_fails(const std::string& err, const std::string& expect) {
  CHECK_MESSAGE(err.find(expect) != std::string::npos, err);
  Tensor t = kiln::ones({1});
  dist::all_reduce(t);  // still in step afterwards
  CHECK(t.item<double>() == dist::world_size());
}

}  // namespace

TEST_CASE("amp: float16 + DDP + ZeRO-1 (or AdamW) + GradScaler = one process on the global batches") {
  const int world = dist::world_size(), me = dist::rank();
  for (bool zero : {true, false}) {
    CAPTURE(zero);
    AmpNet model = make_net(10 + static_cast<std::uint64_t>(me));  // rank 0's weights come by DDP
    AmpNet ref = make_net(10);
    dist::DistributedDataParallel ddp(*model);
    std::unique_ptr<dist::ZeroRedundancyOptimizer> zopt;
    std::unique_ptr<optim::Optimizer> plain;
    if (zero) zopt = std::make_unique<dist::ZeroRedundancyOptimizer>(model->parameters(), adamw);
    else plain = adamw({optim::ParamGroup(model->parameters())});
    auto ref_opt = adamw({optim::ParamGroup(ref->parameters())});
    amp::GradScaler scaler(scaler_options()), ref_scaler(scaler_options());
    int skipped = 0, grown = 0;
    for (int s = 0; s < 10; ++s) {
      const Batch b = global_batch(s, world);
      // The reference: one process, the global batch as `world` micro-batches (the ranks' own
      // float16 products), gradients accumulated, then averaged as DDP does (sum, / world).
      ref_opt->zero_grad();
      for (int r = 0; r < world; ++r) ref_scaler.scale(rank_loss(ref, rows_of(b, r))).backward();
      {
        kiln::NoGradGuard ng;
        for (Tensor p : ref->parameters()) p.grad().div_(static_cast<double>(world));
      }
      const bool ref_stepped = ref_scaler.step(*ref_opt);
      const double before = ref_scaler.get_scale();
      ref_scaler.update();
      skipped += ref_stepped ? 0 : 1;
      grown += ref_scaler.get_scale() > before ? 1 : 0;

      zero ? zopt->zero_grad() : plain->zero_grad();
      scaler.scale(rank_loss(model, rows_of(b, me))).backward();
      if (zero) scaler.unscale_(*zopt);  // as before clipping; step() then does not unscale again
      const bool stepped = zero ? scaler.step(*zopt) : scaler.step(*plain);
      scaler.update();
      CHECK(stepped == ref_stepped);
      CHECK(scaler.get_scale() == ref_scaler.get_scale());
      CHECK(scaler.growth_tracker() == ref_scaler.growth_tracker());
    }
    CHECK(skipped >= 1);  // the run saw both overflows and growth
    CHECK(grown >= 1);
    // Exact up to the order of the average's sum: with 3 ranks MPI may add in another order.
    const double diff = max_rel_diff(model->parameters(), ref->parameters());
    if (world <= 2) CHECK(diff == 0);
    else CHECK(diff <= 1e-5);
    CHECK(replicas_equal(model));
  }
}

TEST_CASE("amp: an inf/NaN on one rank only makes every rank skip the step and back off") {
  const int world = dist::world_size(), me = dist::rank();
  AmpNet model = make_net(20);
  dist::DistributedDataParallel ddp(*model);
  dist::ZeroRedundancyOptimizer zopt(model->parameters(), adamw);
  amp::GradScaler scaler(amp::GradScalerOptions().init_scale(1024));
  // The last rank poisons a gradient that rank 0 does not own: rank 0's shard is clean.
  std::size_t victim = 0;
  while (world > 1 && zopt.owners()[victim] == 0) ++victim;
  for (bool explicit_unscale : {false, true}) {
    CAPTURE(explicit_unscale);
    const std::vector<Tensor> before = snapshot(model);
    const double scale = scaler.get_scale();
    zopt.zero_grad();
    scaler.scale(rank_loss(model, rows_of(global_batch(0, world), me))).backward();
    if (me == world - 1) {
      kiln::NoGradGuard ng;
      zopt.parameters()[victim].grad().view({-1}).narrow(0, 0, 1).fill_(std::numeric_limits<double>::infinity());
    }
    if (explicit_unscale) {
      scaler.unscale_(zopt);
      optim::clip_grad_norm_(model->parameters(), 1.0);
    }
    CHECK_FALSE(scaler.step(zopt));
    scaler.update();
    CHECK(scaler.get_scale() == scale / 2);
    CHECK(max_rel_diff(model->parameters(), before) == 0);  // no rank stepped
  }
  // A clean step afterwards runs everywhere, and the replicas stay equal.
  const std::vector<Tensor> before = snapshot(model);
  zopt.zero_grad();
  scaler.scale(rank_loss(model, rows_of(global_batch(1, world), me))).backward();
  CHECK(scaler.step(zopt));
  scaler.update();
  CHECK(max_rel_diff(model->parameters(), before) > 0);
  CHECK(replicas_equal(model));
}

TEST_CASE("amp: DDP with a plain optimizer: an overflow in one rank's backward reaches every rank") {
  const int world = dist::world_size(), me = dist::rank();
  AmpNet model = make_net(30);
  dist::DistributedDataParallel ddp(*model);
  auto opt = adamw({optim::ParamGroup(model->parameters())});
  amp::GradScaler scaler(amp::GradScalerOptions().init_scale(1024));
  const std::vector<Tensor> before = snapshot(model);
  Batch part = rows_of(global_batch(0, world), me);
  if (me == world - 1) part.x = part.x * 1e30;  // float16 inf in this rank's forward and backward
  opt->zero_grad();
  scaler.scale(rank_loss(model, part)).backward();
  CHECK_FALSE(scaler.step(*opt));  // the averaged gradients are inf/NaN on every rank
  scaler.update();
  CHECK(scaler.get_scale() == 512);
  CHECK(max_rel_diff(model->parameters(), before) == 0);
}

TEST_CASE("amp: the scaler's state resumes with a consolidated ZeRO checkpoint") {
  const int world = dist::world_size(), me = dist::rank();
  AmpNet model = make_net(40);
  dist::DistributedDataParallel ddp(*model);
  dist::ZeroRedundancyOptimizer zopt(model->parameters(), adamw);
  amp::GradScaler scaler(scaler_options());
  auto train = [&](AmpNet& net, dist::ZeroRedundancyOptimizer& opt, amp::GradScaler& sc, int s) {
    opt.zero_grad();
    sc.scale(rank_loss(net, rows_of(global_batch(s, world), me))).backward();
    sc.step(opt);
    sc.update();
  };
  for (int s = 0; s < 5; ++s) train(model, zopt, scaler, s);
  CHECK(scaler.get_scale() < (1 << 17));  // the state to restore is not the initial one
  std::int64_t id = me == 0 ? static_cast<std::int64_t>(getpid()) : 0;
  Tensor idt = kiln::tensor(std::vector<std::int64_t>{id});
  dist::broadcast(idt, 0);
  const std::string path = "/tmp/kiln_amp_test_" + std::to_string(idt.item<std::int64_t>()) + ".safetensors";
  zopt.consolidate_state_dict(0);
  if (me == 0)
    kiln::io::save_checkpoint(
        path, kiln::io::TrainingState{.model = model, .optimizer = zopt, .extras = {{"scaler", scaler}}}, 5);
  dist::barrier();
  AmpNet resumed = make_net(41);
  dist::DistributedDataParallel ddp2(*resumed);
  dist::ZeroRedundancyOptimizer zopt2(resumed->parameters(), adamw);
  amp::GradScaler scaler2(scaler_options());
  kiln::io::load_checkpoint(path, kiln::io::TrainingState{.model = resumed,
                                                          .optimizer = zopt2,
                                                          .extras = {{"scaler", scaler2}}});
  CHECK(scaler2.get_scale() == scaler.get_scale());
  CHECK(scaler2.growth_tracker() == scaler.growth_tracker());
  for (int s = 5; s < 9; ++s) {
    train(model, zopt, scaler, s);
    train(resumed, zopt2, scaler2, s);
    CHECK(scaler2.get_scale() == scaler.get_scale());
  }
  CHECK(max_rel_diff(resumed->parameters(), model->parameters()) == 0);
  dist::barrier();
  if (me == 0) std::remove(path.c_str());
}

TEST_CASE("amp: misuse with ZeRO is a kiln::Error on every rank") {
  const int world = dist::world_size(), me = dist::rank();
  AmpNet model = make_net(50);
  dist::DistributedDataParallel ddp(*model);
  dist::ZeroRedundancyOptimizer zopt(model->parameters(), adamw);
  const Batch part = rows_of(global_batch(0, world), me);
  auto backward = [&](amp::GradScaler& sc, bool scaled) {
    zopt.zero_grad();
    Tensor loss = rank_loss(model, part);
    (scaled ? sc.scale(loss) : loss).backward();
  };
  const std::vector<Tensor> before = snapshot(model);

  // The local shard instead of the ZeRO optimizer (any world size, enabled or not).
  for (bool enabled : {true, false}) {
    amp::GradScaler sc(amp::GradScalerOptions().enabled(enabled));
    backward(sc, true);
    const std::string err = kt::error_of([&] { sc.step(zopt.local()); });
    CHECK(err.find("[GradScaler] step(): this AdamW optimizer is the local shard of a ZeroRedundancyOptimizer; pass "
                   "the ZeroRedundancyOptimizer itself") != std::string::npos);
    if (enabled)
      CHECK(kt::error_of([&] { sc.unscale_(zopt.local()); }).find("unscale_(): this AdamW optimizer is the local") !=
            std::string::npos);
  }
  CHECK(max_rel_diff(model->parameters(), before) == 0);
  if (world < 2) return;

  // A scaler enabled on rank 0 only.
  {
    amp::GradScaler sc(amp::GradScalerOptions().enabled(me == 0));
    backward(sc, true);
    check_every_rank_fails(
        kt::error_of([&] { sc.step(zopt); }),
        "[GradScaler] unscale_()/step() on a ZeroRedundancyOptimizer: the ranks' scalers differ: rank 0: "
        "scale 65536, growth tracker 0, growth_factor 2, backoff_factor 0.5, growth_interval 2000; "
        "rank 1: disabled");
  }
  // Another scale on the last rank (say it did not restore the checkpoint's scaler).
  {
    amp::GradScaler sc;
    if (me == world - 1) sc.update(1024.0);
    backward(sc, true);
    check_every_rank_fails(kt::error_of([&] { sc.unscale_(zopt); }),
                           fmt::format("the ranks' scalers differ: rank 0: scale 65536, growth tracker 0, "
                                       "growth_factor 2, backoff_factor 0.5, growth_interval 2000; rank {}: scale 1024",
                                       world - 1));
  }
  // The last rank fails locally (no scale() before backward): the others stop too.
  {
    amp::GradScaler sc;
    backward(sc, me != world - 1);
    const std::string err = kt::error_of([&] { sc.step(zopt); });
    if (me == world - 1) check_every_rank_fails(err, "unscale_()/step(): no scale() since the last update()");
    else
      check_every_rank_fails(err,
                             fmt::format("[GradScaler] unscale_()/step() on a ZeroRedundancyOptimizer: rank {} failed "
                                         "before the ranks could agree",
                                         world - 1));
    // The iteration is void; the next one runs on every rank.
    backward(sc, true);
    CHECK(sc.step(zopt));
    sc.update();
  }
  CHECK(max_rel_diff(model->parameters(), before) > 0);
  CHECK(replicas_equal(model));
}
