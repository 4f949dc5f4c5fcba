// DistributedDataParallel and ZeRO-1 under mpirun (tests/CMakeLists.txt runs this with -np 2 and
// -np 3, and once without mpirun as a world of one). The central check: N ranks training with DDP
// end with the parameters of one process training on the concatenated global batches (each rank
// computes that reference itself, from rank 0's initial weights). Also: no_sync accumulation,
// uneven last batches, unused parameters, ZeRO-1 and its checkpoints across world sizes, the
// replica check's error on every rank, the bucket timings.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <kiln/kiln.hpp>
#include <string>
#include <vector>

#include "../test_util.hpp"

namespace dist = kiln::distributed;
namespace nn = kiln::nn;
namespace optim = kiln::optim;
using kiln::DType;
using kiln::Tensor;

namespace {

struct NetImpl : nn::Module {
  explicit NetImpl(std::int64_t hidden = 16, bool extra_layer = false) {
    fc1 = register_module("fc1", nn::Linear(4, hidden));
    fc2 = register_module("fc2", nn::Linear(hidden, hidden));
    head = register_module("head", nn::Linear(hidden, 3));
    side = register_module("side", nn::Linear(hidden, 3));  // used on rank 0 only (unused test)
    never = register_module("never", nn::Linear(2, 2));     // used by no rank
    if (extra_layer) more = register_module("more", nn::Linear(3, 3));
    shift = register_buffer("shift", kiln::randn({3}) * 0.1);  // broadcast from rank 0 like the weights
  }
  Tensor forward(const Tensor& x, bool use_side = false) {
    Tensor h = kiln::tanh(fc2(kiln::tanh(fc1(x))));
    Tensor y = head(h) + shift;
    return use_side ? y + side(h) * 0.5 : y;
  }
  nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr}, side{nullptr}, never{nullptr}, more{nullptr};
  Tensor shift;
};
KILN_MODULE(Net);

Net make_net(DType dtype, std::uint64_t seed, std::int64_t hidden = 16, bool extra = false) {
  kiln::manual_seed(seed);
  Net net(hidden, extra);
  net->to(dtype);
  return net;
}

std::unique_ptr<optim::Optimizer> adamw(std::vector<optim::ParamGroup> groups) {
  return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(2e-2).weight_decay(0.1));
}

// Scale-sensitive (unlike Adam): a sum where a mean belongs shows at once.
std::unique_ptr<optim::Optimizer> sgd(std::vector<optim::ParamGroup> groups) {
  return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.01));
}

// Step s's global batch: the same on every rank.
std::pair<Tensor, Tensor> global_batch(int s, std::int64_t rows, DType dtype) {
  kiln::Generator gen(1000 + static_cast<std::uint64_t>(s));
  Tensor x = kiln::randn({rows, 4}, kiln::kFloat64, &gen).to(dtype);
  Tensor y = kiln::randn({rows, 3}, kiln::kFloat64, &gen).to(dtype);
  return {x, y};
}

// Rank r's contiguous share of `rows` (the first rows % world ranks get one more).
std::pair<std::int64_t, std::int64_t> share(std::int64_t rows, int world, int r) {
  const std::int64_t base = rows / world, extra = rows % world;
  return {r * base + std::min<std::int64_t>(r, extra), base + (r < extra ? 1 : 0)};
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

struct Run {
  DType dtype = kiln::kFloat64;
  int steps = 4;
  int micro = 1;          // micro-batches per step; all but the last under no_sync
  bool uneven = false;    // global batches whose rows do not divide by the ranks
  bool use_side = false;  // rank 0 alone uses the `side` layer
  bool zero = false;      // ZeRO-1 instead of a plain AdamW
  bool frozen = false;    // fc1 frozen on every rank: not reduced, not trained
  dist::DDPOptions ddp = dist::DDPOptions().bucket_cap_mb(0.001).first_bucket_cap_mb(0.0005);
};

std::int64_t rows_of(const Run& c, int s, int world) {
  if (!c.uneven) return static_cast<std::int64_t>(world) * c.micro * 2;
  return s == c.steps - 1 ? std::max(1, world - 1) : 3 * world + 2;  // last: a rank gets no row
}

// One rank's loss on its rows [start, start + n) of the global rows `total`: the global batch
// mean's share (sum / total * world), so the ranks' average is the global mean.
Tensor rank_loss(Net& net, const Tensor& x, const Tensor& y, std::int64_t total, int world, bool side, int micro) {
  Tensor pred = net->forward(x, side);
  const double scale = static_cast<double>(world) / (static_cast<double>(total) * 3.0 * micro);
  return kiln::mse_loss(pred, y, kiln::Reduction::Sum) * scale;
}

// Trains with DDP on this rank's shares and, alongside, the one-process reference on the whole
// global batches (from rank 0's initial weights); returns max relative parameter difference.
double train_and_compare(const Run& c) {
  const int world = dist::world_size(), me = dist::rank();
  Net model = make_net(c.dtype, 100 + static_cast<std::uint64_t>(me));  // different on every rank
  Net ref = make_net(c.dtype, 100);                                     // rank 0's init
  if (c.frozen)
    for (Net* n : {&model, &ref}) (*n)->fc1->weight.requires_grad_(false), (*n)->fc1->bias.requires_grad_(false);
  dist::DistributedDataParallel ddp(*model, c.ddp);
  CHECK(max_rel_diff(model->parameters(), ref->parameters()) == 0);  // rank 0's weights everywhere
  CHECK(max_rel_diff(model->buffers(), ref->buffers()) == 0);
  std::unique_ptr<optim::Optimizer> plain;
  std::unique_ptr<dist::ZeroRedundancyOptimizer> zero;
  if (c.zero) zero = std::make_unique<dist::ZeroRedundancyOptimizer>(model->parameters(), adamw);
  else plain = sgd({optim::ParamGroup(model->parameters())});
  auto ref_opt = c.zero ? adamw({optim::ParamGroup(ref->parameters())}) : sgd({optim::ParamGroup(ref->parameters())});

  for (int s = 0; s < c.steps; ++s) {
    const std::int64_t rows = rows_of(c, s, world);
    auto [x, y] = global_batch(s, rows, c.dtype);
    // The reference: every micro-batch's global rows, each rank's loss term (rank 0's with side).
    ref_opt->zero_grad();
    for (int m = 0; m < c.micro; ++m) {
      auto [m0, mn] = share(rows, c.micro, m);
      Tensor loss = kiln::zeros({}, c.dtype);
      for (int r = 0; r < world; ++r) {
        auto [r0, rn] = share(mn, world, r);
        loss = loss + rank_loss(ref, x.narrow(0, m0 + r0, rn), y.narrow(0, m0 + r0, rn), mn, world,
                                c.use_side && r == 0, c.micro) /
                          static_cast<double>(world);
      }
      loss.backward();
    }
    ref_opt->step();

    c.zero ? zero->zero_grad() : plain->zero_grad();
    for (int m = 0; m < c.micro; ++m) {
      auto [m0, mn] = share(rows, c.micro, m);
      auto [r0, rn] = share(mn, world, me);
      Tensor loss = rank_loss(model, x.narrow(0, m0 + r0, rn), y.narrow(0, m0 + r0, rn), mn, world,
                              c.use_side && me == 0, c.micro);
      if (m + 1 < c.micro) {
        auto ns = ddp.no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    // A parameter no rank used keeps no gradient, as in the reference.
    CHECK_FALSE(model->never->weight.grad().defined());
    CHECK(model->side->weight.grad().defined() == c.use_side);
    c.zero ? zero->step() : plain->step();
  }
  return max_rel_diff(model->parameters(), ref->parameters());
}

double tolerance(DType d) { return d == kiln::kFloat64 ? 1e-12 : 1e-5; }

}  // namespace

TEST_CASE("ddp: N ranks match one process on the concatenated global batches") {
  for (DType d : {kiln::kFloat64, kiln::kFloat32}) {
    Run c;
    c.dtype = d;
    CAPTURE(kiln::dtype_name(d));
    CHECK(train_and_compare(c) <= tolerance(d));
    c.ddp = dist::DDPOptions();  // default 25 MiB buckets: one bucket
    CHECK(train_and_compare(c) <= tolerance(d));
  }
}

TEST_CASE("ddp: no_sync gradient accumulation") {
  Run c;
  c.micro = 3;
  CHECK(train_and_compare(c) <= 1e-12);
}

TEST_CASE("ddp: uneven global batches (a rank with no row in the last step)") {
  Run c;
  c.uneven = true;
  CHECK(train_and_compare(c) <= 1e-12);
}

TEST_CASE("ddp: parameters unused on some ranks, or on all") {
  Run c;
  c.use_side = dist::world_size() > 1;
  CHECK(train_and_compare(c) <= 1e-12);
}

TEST_CASE("ddp: frozen parameters are not reduced; a model with none to reduce communicates nothing") {
  Run c;
  c.frozen = true;
  CHECK(train_and_compare(c) <= tolerance(c.dtype));
  // No parameters at all, or all frozen: backward runs as in one process, the ranks stay in step.
  nn::Tanh act;
  dist::DistributedDataParallel none(*act);
  CHECK(none.parameters().empty());
  CHECK(none.bucket_layout().empty());
  Net frozen = make_net(kiln::kFloat64, 5);
  for (Tensor p : frozen->parameters()) p.requires_grad_(false);
  dist::DistributedDataParallel all_frozen(*frozen);
  CHECK(all_frozen.parameters().empty());
  auto [x, y] = global_batch(0, 4, kiln::kFloat64);
  for (int pass = 0; pass < 2; ++pass) {
    Tensor xin = x.clone().requires_grad_();
    kiln::mse_loss(frozen->forward(act(xin)), y).backward();
    CHECK(xin.grad().defined());
    CHECK_FALSE(frozen->fc1->weight.grad().defined());
  }
  Tensor t = kiln::ones({1});
  dist::all_reduce(t);
  CHECK(t.item<double>() == dist::world_size());
}

TEST_CASE("ddp: gradients reduced in float32 for a float64 model") {
  Run c;
  c.ddp.reduce_dtype(kiln::kFloat32);
  CHECK(train_and_compare(c) <= 1e-5);
}

TEST_CASE("zero1: sharded AdamW state, same parameters as one process") {
  Run c;
  c.zero = true;
  CHECK(train_and_compare(c) <= 1e-12);
  c.micro = 2;
  c.use_side = dist::world_size() > 1;
  CHECK(train_and_compare(c) <= 1e-12);
}

TEST_CASE("zero1: state memory is sharded, checkpoints resume on any world size") {
  const int world = dist::world_size(), me = dist::rank();
  Net model = make_net(kiln::kFloat64, 7);
  Net ref = make_net(kiln::kFloat64, 7);
  dist::DistributedDataParallel ddp(model);  // the holder itself converts
  dist::ZeroRedundancyOptimizer zero(model->parameters(), adamw);
  auto ref_opt = adamw({optim::ParamGroup(ref->parameters())});
  auto train = [&](Net& net, auto& opt, int s, int ranks, int r) {
    auto [x, y] = global_batch(s, 6, kiln::kFloat64);
    auto [r0, rn] = share(6, ranks, r);
    opt.zero_grad();
    rank_loss(net, x.narrow(0, r0, rn), y.narrow(0, r0, rn), 6, ranks, false, 1).backward();
    opt.step();
  };
  for (int s = 0; s < 3; ++s) {
    train(model, zero, s, world, me);
    train(ref, *ref_opt, s, 1, 0);
  }
  // Each rank holds state only for what it owns; together exactly the whole.
  std::int64_t mine = 0, total = 0, largest = 0;
  for (std::size_t i = 0; i < zero.parameters().size(); ++i) {
    const std::int64_t n = zero.parameters()[i].numel();
    total += n, largest = std::max(largest, n);
    if (zero.owners()[i] == me) mine += n;
    // State where owned and stepped (the unused `side` and `never` layers get no gradient).
    const bool stepped = zero.parameters()[i].grad().defined();
    CHECK((zero.local().state(zero.parameters()[i]) != nullptr) == (zero.owners()[i] == me && stepped));
  }
  CHECK(mine <= total / world + largest);
  CHECK(static_cast<std::int64_t>(
            dist::all_gather(kiln::tensor(std::vector<std::int64_t>{mine})).sum().item<std::int64_t>()) == total);

  // The consolidated state is the unsharded optimizer's.
  zero.consolidate_state_dict(0);
  if (me == 0) {
    kiln::StateDict full = zero.state_dict(), want = ref_opt->state_dict();
    CHECK(full.size() == want.size());
    CHECK(full.scalars == want.scalars);
    for (const auto& [k, t] : want) {
      const Tensor* got = full.find(k);
      REQUIRE_MESSAGE(got != nullptr, k);
      CHECK(max_rel_diff({*got}, {t}) <= 1e-12);
    }
  } else {
    CHECK(kt::error_of([&] { (void)zero.state_dict(); }).find("consolidate_state_dict") != std::string::npos);
  }
  // Rank 0 writes a checkpoint; every rank resumes from it, first on this world size...
  std::int64_t id = me == 0 ? static_cast<std::int64_t>(getpid()) : 0;
  Tensor idt = kiln::tensor(std::vector<std::int64_t>{id});
  dist::broadcast(idt, 0);
  const std::string path = "/tmp/kiln_ddp_test_" + std::to_string(idt.item<std::int64_t>()) + ".safetensors";
  if (me == 0) kiln::io::save_checkpoint(path, kiln::io::TrainingState{.model = model, .optimizer = zero}, 3);
  dist::barrier();
  {
    Net m2 = make_net(kiln::kFloat64, 55);
    dist::DistributedDataParallel ddp2(*m2);
    dist::ZeroRedundancyOptimizer z2(m2->parameters(), adamw);
    kiln::io::load_checkpoint(path, kiln::io::TrainingState{.model = m2, .optimizer = z2});
    Net r2 = make_net(kiln::kFloat64, 7);
    r2->load_state_dict(ref->state_dict());
    auto r2_opt = adamw({optim::ParamGroup(r2->parameters())});
    r2_opt->load_state_dict(ref_opt->state_dict());
    for (int s = 3; s < 5; ++s) {
      train(m2, z2, s, world, me);
      train(r2, *r2_opt, s, 1, 0);
    }
    CHECK(max_rel_diff(m2->parameters(), r2->parameters()) <= 1e-12);
  }
  // ... then on rank 0 alone (a group of one), with ZeRO and with a plain optimizer.
  dist::Group solo = dist::new_group({0});
  if (me == 0) {
    Net m3 = make_net(kiln::kFloat64, 56);
    dist::DistributedDataParallel ddp3(*m3, dist::DDPOptions().group(solo));
    dist::ZeroRedundancyOptimizer z3(m3->parameters(), adamw, solo);
    auto plain = adamw({optim::ParamGroup(m3->parameters())});
    kiln::io::load_checkpoint(path, kiln::io::TrainingState{.model = m3, .optimizer = z3});
    kiln::io::load_checkpoint(path, kiln::io::TrainingState{.model = m3, .optimizer = *plain});
    for (int s = 3; s < 5; ++s) {
      train(m3, z3, s, 1, 0);
      train(ref, *ref_opt, s, 1, 0);
    }
    CHECK(max_rel_diff(m3->parameters(), ref->parameters()) <= 1e-12);
    std::remove(path.c_str());
  }
  dist::barrier();
}

TEST_CASE("ddp: models that differ across ranks give the same error on every rank") {
  const int world = dist::world_size(), me = dist::rank();
  if (world < 2) return;
  // A different shape on the last rank.
  Net a = make_net(kiln::kFloat64, 1, me == world - 1 ? 17 : 16);
  std::string err = kt::error_of([&] { dist::DistributedDataParallel ddp(*a); });
  CHECK(err.find("[DistributedDataParallel] the ranks' models differ at entry 0: rank 0 has parameter 'fc1.weight' "
                 "float64 (16, 4)") != std::string::npos);
  CHECK(err.find(fmt::format("rank {} has parameter 'fc1.weight' float64 (17, 4)", world - 1)) != std::string::npos);
  // A layer only rank 0 has (the counts differ).
  Net b = make_net(kiln::kFloat64, 1, 16, me == 0);
  err = kt::error_of([&] { dist::DistributedDataParallel ddp(*b); });
  CHECK(err.find("differ at entry 10: rank 0 has parameter 'more.weight' float64 (3, 3); rank 1 has buffer 'shift' "
                 "float64") != std::string::npos);
  // Another dtype.
  Net c = make_net(me == 0 ? kiln::kFloat64 : kiln::kFloat32, 1);
  err = kt::error_of([&] { dist::ZeroRedundancyOptimizer z(c->parameters(), adamw); });
  CHECK(err.find("[ZeroRedundancyOptimizer] the ranks' models differ at entry 0") != std::string::npos);
  // Fewer parameters on the other ranks.
  Net d = make_net(kiln::kFloat64, 1);
  std::vector<Tensor> ps = d->parameters();
  if (me != 0) ps.pop_back();
  err = kt::error_of([&] { dist::ZeroRedundancyOptimizer z(ps, adamw); });
  CHECK(err.find("differ at entry 9: rank 0 has parameter '9 of group 0' float64 (2,); rank 1 has no entry (it has 9 "
                 "in all)") != std::string::npos);
  // A parameter frozen on one rank only: the ranks would reduce different buckets.
  Net f = make_net(kiln::kFloat64, 1);
  if (me == world - 1) f->fc2->weight.requires_grad_(false);
  err = kt::error_of([&] { dist::DistributedDataParallel ddp(*f); });
  CHECK(err.find("differ at entry 2: rank 0 has parameter 'fc2.weight' float64 (16, 16)") != std::string::npos);
  CHECK(err.find(fmt::format("rank {} has frozen parameter 'fc2.weight' float64 (16, 16)", world - 1)) !=
        std::string::npos);
  // ZeRO's consolidation with different destinations (each would wait in recv), or one out of range.
  Net z = make_net(kiln::kFloat64, 1);
  dist::ZeroRedundancyOptimizer zo(z->parameters(), adamw);
  err = kt::error_of([&] { zo.consolidate_state_dict(me == 0 ? 0 : 1); });
  CHECK(err ==
        "[ZeroRedundancyOptimizer] consolidate_state_dict: the ranks name different destinations: rank 0 gives 0, "
        "rank 1 gives 1");
  err = kt::error_of([&] { zo.consolidate_state_dict(world); });
  CHECK(err == fmt::format("[ZeroRedundancyOptimizer] consolidate_state_dict: rank {} is not in the group of {} ranks",
                           world, world));
  // The ranks are still in step afterwards.
  Tensor t = kiln::ones({2});
  dist::all_reduce(t);
  CHECK(t.to_vector<double>() == std::vector<double>{double(world), double(world)});
}

TEST_CASE("ddp: buckets start in order during backward, timings, buffers, bad options") {
  Net model = make_net(kiln::kFloat32, 3, 64);
  dist::DistributedDataParallel ddp(*model, dist::DDPOptions().bucket_cap_mb(0.01).first_bucket_cap_mb(0.001));
  {
    kiln::NoGradGuard ng;
    model->shift.fill_(static_cast<double>(dist::rank()));
  }
  ddp.sync_buffers();
  CHECK(model->shift.to_vector<double>() == std::vector<double>{0, 0, 0});
  const auto layout = ddp.bucket_layout();
  REQUIRE(layout.size() >= 3);
  CHECK(layout.front().front() == ddp.parameters().size() - 1);  // the last registered first
  auto [x, y] = global_batch(0, 8, kiln::kFloat32);
  kiln::mse_loss(model(x), y).backward();
  // Rebuilt in the order the gradients came: the unused `side` and `never` layers last, fc1 before.
  const auto rebuilt = ddp.bucket_layout();
  std::vector<std::string> tail;
  for (auto it = rebuilt.rbegin(); it != rebuilt.rend() && tail.size() < 4; ++it)
    for (auto p = it->rbegin(); p != it->rend() && tail.size() < 4; ++p) tail.push_back(ddp.parameter_names()[*p]);
  std::sort(tail.begin(), tail.end());
  CHECK(tail == std::vector<std::string>{"never.bias", "never.weight", "side.bias", "side.weight"});
  CHECK(ddp.parameter_names()[rebuilt.front().front()].rfind("head.", 0) == 0);
  kiln::mse_loss(model(x), y).backward();
  const dist::DDPStats& st = ddp.last_stats();
  REQUIRE(st.buckets.size() == rebuilt.size());
  for (std::size_t b = 0; b < st.buckets.size(); ++b) {
    CHECK(st.buckets[b].launch_s >= st.buckets[b].ready_s - 1e-9);
    CHECK(st.buckets[b].complete_s >= st.buckets[b].launch_s);
    if (b) CHECK(st.buckets[b].launch_s >= st.buckets[b - 1].launch_s);
    CHECK(st.hidden_fraction(b) >= 0);
    CHECK(st.hidden_fraction(b) <= 1);
  }
  CHECK(st.buckets.front().launch_s < st.backward_end_s);  // started while backward still ran
  CHECK(st.comm_s() >= st.exposed_s());
  CHECK(st.finish_s >= st.backward_end_s);
  CHECK(kt::error_of([&] {
          dist::DistributedDataParallel bad(*model, dist::DDPOptions().bucket_cap_mb(0));
        }).find("bucket sizes must be positive") != std::string::npos);
  CHECK(kt::error_of([&] {
          dist::DistributedDataParallel bad(*model, dist::DDPOptions().reduce_dtype(kiln::kInt64));
        }).find("reduce_dtype must be a floating dtype, got int64") != std::string::npos);
}

TEST_CASE("ddp: a backward pass that fails after the first all-reduce started stops the next one") {
  Net model = make_net(kiln::kFloat64, 3);
  dist::DistributedDataParallel ddp(*model, dist::DDPOptions().bucket_cap_mb(0.0001).first_bucket_cap_mb(0.0001));
  // fc1.weight's gradient comes last: the later layers' buckets have started by then.
  auto h = kiln::autograd::register_post_accumulate_grad_hook(model->fc1->weight, [](const Tensor&) {
    kiln::throw_error("test", "fails in backward");
  });
  auto [x, y] = global_batch(0, 6, kiln::kFloat64);
  CHECK(kt::error_of([&] { kiln::mse_loss(model(x), y).backward(); }).find("fails in backward") != std::string::npos);
  h.remove();
  CHECK(kt::error_of([&] { kiln::mse_loss(model(x), y).backward(); }).find("the ranks are out of step") !=
        std::string::npos);
  dist::barrier();  // the all-reduces started before the failure completed on every rank
}

int main(int argc, char** argv) {
  dist::init();
  kiln::set_num_threads(1);
  doctest::Context ctx(argc, argv);
  int rc = ctx.run();
  // Every rank exits with the worst result, so mpirun fails when any rank failed.
  Tensor worst = kiln::tensor(std::vector<std::int64_t>{rc});
  dist::all_reduce(worst, dist::ReduceOp::Max);
  dist::finalize();
  return static_cast<int>(worst.item<std::int64_t>());
}
