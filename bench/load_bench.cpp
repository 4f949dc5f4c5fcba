// Speed with the CPU shared: the same workloads timed on a quiet machine and beside a busy
// process, to check that kiln's thread pool neither spins against other work nor slows down
// when it has the machine to itself (the OpenMP wait policy, core/parallel.hpp).
//   build/bench/load_bench                                          # quiet
//   taskset -c 1 sh -c 'while :; do :; done' & B=$!; build/bench/load_bench; kill $B   # loaded
//   GOMP_SPINCOUNT=300000 build/bench/load_bench     # libgomp's own default (kiln before this change)
//   OMP_WAIT_POLICY=PASSIVE build/bench/load_bench   # sleep at once (the old examples/README advice)
// Workloads: `mlp` (a 3-layer MLP training step, AdamW), `reverse` (the reverse example's
// training step: a 2-layer causal transformer, d 64, batch 128, 24 tokens), `region` (one
// add just big enough to split over the threads: the cost of waking the pool).
// Prints `RESULT load impl=kiln workload=.. threads=.. median_ms=..` after a `# ... wait: ..` line.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <kiln/kiln.hpp>
#include <kiln/optim/optim.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "common/reverser.hpp"  // examples/: the reverse example's model

using namespace kiln;

namespace {

double median_ms(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2] * 1e3;
}

// Times `steps` calls of step() after `warmup` untimed ones.
template <typename F>
double time_steps(int warmup, int steps, F&& step) {
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    double t0 = bench::now_s();
    step();
    t.push_back(bench::now_s() - t0);
  }
  return median_ms(t);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, steps = 30;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
  }
  set_num_threads(threads);
  fmt::print("# kiln load_bench threads={} wait: {}\n", threads, wait_policy());
  auto report = [&](const char* workload, double ms) {
    fmt::print("RESULT load impl=kiln workload={} threads={} median_ms={:.3f}\n", workload, threads, ms);
  };
  Generator gen(0);

  {  // MLP training step
    auto mlp = nn::Sequential(nn::Linear(256, 512), nn::ReLU(), nn::Linear(512, 512), nn::ReLU(), nn::Linear(512, 10));
    optim::AdamW opt(mlp->parameters(), optim::AdamWOptions(1e-3));
    Tensor x = randn({256, 256}, kFloat32, &gen), y = randint(0, 10, {256}, kInt64, &gen);
    report("mlp", time_steps(3, steps, [&] {
             opt.zero_grad();
             cross_entropy(mlp->forward(x), y).backward();
             opt.step();
           }));
  }
  {  // the reverse example's step: digits | reversed digits, 12 digits, batch 128
    const std::int64_t L = 12, vocab = 11;
    examples::Reverser model(vocab, 2 * L, 64, 4, 2);
    optim::AdamW opt(model->parameters(), optim::AdamWOptions(2e-3));
    Tensor ids = randint(0, vocab, {128, 2 * L}, kInt64, &gen), target = randint(0, vocab, {128, 2 * L}, kInt64, &gen);
    report("reverse", time_steps(3, steps, [&] {
             opt.zero_grad();
             cross_entropy(model(ids).flatten(0, 1), target.flatten()).backward();
             opt.step();
           }));
  }
  {  // one parallel region: an in-place add of 4 * kParallelGrain floats, 100 per timed call
    NoGradGuard ng;
    Tensor a = randn({4 * kParallelGrain}, kFloat32, &gen), b = randn({4 * kParallelGrain}, kFloat32, &gen);
    report("region_x100", time_steps(10, steps * 10, [&] {
             for (int i = 0; i < 100; ++i) a.add_(b);
           }));
  }
}
