// Concurrent backward through shared modules (issue 11, item 3), and helper threads beside the
// OpenMP pool. Run under ThreadSanitizer by .ci/tsan with the other threading tests.
// The backward shapes stay small so those kernels run on the calling thread; the pool cases use
// sizes that do split across it.
#include <atomic>
#include <thread>

#include "test_util.hpp"

using namespace kiln;

namespace {
constexpr int kThreads = 4;
constexpr int kIters = 25;

template <typename F>
void run_threads(F&& body) {
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) ts.emplace_back([&body, t] { body(t); });
  for (auto& th : ts) th.join();
}
}  // namespace

TEST_CASE("stress threads: concurrent backward through one shared Linear accumulates every gradient") {
  nn::Linear l(nn::LinearOptions(64, 16));
  // The gradient-ready hook and the end-of-backward callback fire once per backward per thread;
  // the hook sees the .grad of its own backward completed (one at a time per leaf).
  std::atomic<int> hooks{0}, callbacks{0};
  auto handle = autograd::register_post_accumulate_grad_hook(l->weight, [&](const Tensor& w) {
    CHECK(w.grad().defined());
    hooks++;
    autograd::queue_callback([&] { callbacks++; });
  });
  run_threads([&](int) {
    for (int i = 0; i < kIters; ++i) l(ones({1, 64})).sum().backward();
  });
  CHECK(hooks.load() == kThreads * kIters);
  CHECK(callbacks.load() == kThreads * kIters);
  // d(sum(x W^T + b))/dW = 1 for every weight when x = 1, once per backward.
  constexpr double n = kThreads * kIters;
  CHECK(equal(l->weight.grad(), full({16, 64}, n)));
  CHECK(equal(l->bias.grad(), full({16}, n)));
}

TEST_CASE("stress threads: per-thread graphs with retain_grad, autograd::grad and create_graph beside a shared model") {
  nn::Sequential net(nn::Linear(nn::LinearOptions(8, 8)), nn::Tanh(), nn::Linear(nn::LinearOptions(8, 1)));
  // One thread's step: torch.autograd.grad style (nothing accumulated) with create_graph, then a
  // backward through the gradient penalty; returns the sum of the retained .grad of h.
  auto step = [&](int t) {
    Tensor x = full({2, 8}, 0.1 * (t + 1)).requires_grad_(true);
    Tensor h = net->forward(x);
    h.retain_grad();
    Tensor loss = square(h).sum();
    auto gx = autograd::grad({loss}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true);
    (loss + square(gx[0]).sum()).backward();
    return x.grad().defined() ? h.grad().sum().item<double>() : -1.0;
  };
  std::vector<double> seen(kThreads);
  run_threads([&](int t) {
    for (int i = 0; i < kIters; ++i) seen[t] = step(t);
  });
  // Each thread's result matches the same step run alone.
  for (int t = 0; t < kThreads; ++t) CHECK(seen[t] == step(t));
  for (const Tensor& p : net->parameters()) CHECK(p.grad().defined());
}

TEST_CASE("stress threads: threads run backward on one shared graph with retain_graph") {
  Tensor w = full({4}, 2.0, TensorOptions(kFloat64).requires_grad(true));
  Tensor shared = square(w) * 3.0;  // one graph, reached from every thread's root
  run_threads([&](int t) {
    for (int i = 0; i < kIters; ++i) (shared * static_cast<double>(t + 1)).sum().backward({}, true);
  });
  // d/dw sum((t+1) * 3 w^2) = 6 (t+1) w, summed over threads and iterations.
  double scale = 0;
  for (int t = 0; t < kThreads; ++t) scale += 6.0 * (t + 1) * kIters;
  CHECK(equal(w.grad(), full({4}, scale * 2.0, kFloat64)));
}

namespace {
// Restores the pool's size when a test ends, however it ends.
struct PoolSize {
  int saved = get_num_threads();
  explicit PoolSize(int n) { set_num_threads(n); }
  ~PoolSize() { set_num_threads(saved); }
};

// sum(2 i + 1) over i < n is n^2 (exact in float64 in any order); a product of 96 x 96 ones and
// halves is 48 everywhere. Big enough that both go to the pool (or BLAS's team) when allowed.
constexpr std::int64_t kBig = 4 * kParallelGrain;
bool kernels_right() {
  Tensor odd = arange(0, kBig, 1, TensorOptions(kFloat64)) * 2.0 + 1.0;
  const bool sum_ok = odd.sum().item<double>() == double(kBig) * double(kBig);
  return sum_ok && equal(matmul(ones({96, 96}), full({96, 96}, 0.5)), full({96, 96}, 48.0));
}
}  // namespace

TEST_CASE("stress threads: helper threads under SingleThreadGuard run kernels alone beside the pool") {
  PoolSize pool(2);
  std::atomic<int> helpers_serial{0}, helpers_right{0};
  std::vector<std::thread> helpers;
  for (int t = 0; t < 2; ++t)
    helpers.emplace_back([&] {
      SingleThreadGuard serial;
      helpers_serial += get_num_threads() == 1;
      for (int i = 0; i < 4; ++i) helpers_right += kernels_right();
    });
  int main_right = 0;
  for (int i = 0; i < 4; ++i) main_right += kernels_right();  // on the pool's 2 threads meanwhile
  for (auto& h : helpers) h.join();
  CHECK(helpers_serial.load() == 2);
  CHECK(helpers_right.load() == 8);
  CHECK(main_right == 4);
  CHECK(get_num_threads() == 2);  // the guards were the helpers' own
}

TEST_CASE("stress threads: user threads each start their own OpenMP team at once") {
  PoolSize pool(2);
  std::atomic<int> right{0};
  run_threads([&](int) {
    for (int i = 0; i < 4; ++i) right += kernels_right();
  });
  CHECK(right.load() == 4 * kThreads);
}

TEST_CASE("stress threads: set_num_threads on one thread while another runs kernels") {
  // The count is read by every kernel that splits work: changing it while they run must be
  // race-free (ThreadSanitizer flags a plain int here). kiln's own kernels only on the worker:
  // what a BLAS library does when its count changes mid-GEMM is that library's business.
  PoolSize pool(2);  // restores the count at the end
  std::atomic<int> right{0}, rounds{0};
  constexpr int kRounds = 6;
  std::thread worker([&] {
    for (int i = 0; i < kRounds; ++i) {
      Tensor odd = arange(0, kBig, 1, TensorOptions(kFloat64)) * 2.0 + 1.0;
      right += odd.sum().item<double>() == double(kBig) * double(kBig);
      rounds++;
    }
  });
  int wrong_reads = 0;
  for (int i = 0; rounds.load() < kRounds; ++i) {
    set_num_threads(1 + i % 2);
    wrong_reads += get_num_threads() != 1 + i % 2;
  }
  worker.join();
  CHECK(wrong_reads == 0);
  CHECK(right.load() == kRounds);
}
