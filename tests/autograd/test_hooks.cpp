// Post-accumulate-grad hooks and queue_callback (autograd/hooks.hpp): when they fire, what the
// hook sees in .grad, order, removal, retain_graph passes, leaves used several times, errors.
#include "test_util.hpp"

#include <string>

using namespace kiln;
namespace ag = kiln::autograd;

namespace {

using Log = std::vector<std::string>;

Tensor leaf64(const std::vector<double>& v) { return tensor(v).requires_grad_(); }

// Identity forward; its backward writes to a log, so a test can see what ran before it.
struct Marker : ag::Function<Marker> {
  static Log* log;
  static const char* name() { return "marker"; }
  static Tensor forward(ag::Context&, const Tensor& x) { return x.clone(); }
  static std::vector<Tensor> backward(ag::Context&, const std::vector<Tensor>& g) {
    log->push_back("marker");
    return {g[0]};
  }
};
Log* Marker::log = nullptr;

}  // namespace

TEST_CASE("post_accumulate_grad_hook: sees the final .grad of a leaf used several times, fires once") {
  Tensor x = leaf64({1.0, 2.0, 3.0});
  int calls = 0;
  std::vector<double> seen;
  auto h = ag::register_post_accumulate_grad_hook(x, [&](const Tensor& leaf) {
    ++calls;
    CHECK(leaf.is_same(x));
    seen = leaf.grad().to_vector<double>();
  });
  // d/dx sum(x*x + 3x + x) = 2x + 4, reaching x's accumulator over four edges.
  (x * x + x * 3.0 + x).sum().backward();
  CHECK(calls == 1);
  CHECK(seen == std::vector<double>{6.0, 8.0, 10.0});
  CHECK(h.active());
}

TEST_CASE("post_accumulate_grad_hook: registration order, removal, retain_graph passes") {
  Tensor x = leaf64({1.0, -1.0});
  Log log;
  auto a = ag::register_post_accumulate_grad_hook(x, [&](const Tensor& t) {
    std::string entry = "a";  // appended, not "a" + ...: GCC 12 warns falsely on operator+ here
    entry += std::to_string(t.grad().to_vector<double>()[0]).substr(0, 3);
    log.push_back(entry);
  });
  auto b = ag::register_post_accumulate_grad_hook(x, [&](const Tensor&) { log.push_back("b"); });
  auto c = ag::register_post_accumulate_grad_hook(x, [&](const Tensor&) { log.push_back("c"); });
  Tensor loss = (x * 2.0).sum();
  loss.backward({}, /*retain_graph=*/true);
  CHECK(log == Log{"a2.0", "b", "c"});
  // A second pass over the retained graph fires again and sees the accumulated gradient.
  b.remove();
  CHECK_FALSE(b.active());
  b.remove();  // idempotent
  loss.backward();
  CHECK(log == Log{"a2.0", "b", "c", "a4.0", "c"});
  a.remove();
  c.remove();
  x.set_grad(Tensor());
  (x * 2.0).sum().backward();
  CHECK(log.size() == 5);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 2.0});
}

TEST_CASE("post_accumulate_grad_hook: a hook that removes itself or registers another") {
  Tensor x = leaf64({1.0});
  Log log;
  ag::HookHandle self;
  self = ag::register_post_accumulate_grad_hook(x, [&](const Tensor&) {
    log.push_back("once");
    self.remove();
  });
  ag::HookHandle later;
  auto adder = ag::register_post_accumulate_grad_hook(x, [&](const Tensor& t) {
    log.push_back("adder");
    if (!later.active())
      later = ag::register_post_accumulate_grad_hook(t, [&](const Tensor&) { log.push_back("later"); });
  });
  (x * 1.0).sum().backward();
  CHECK(log == Log{"once", "adder"});  // a hook registered during a pass waits for the next one
  (x * 1.0).sum().backward();
  CHECK(log == Log{"once", "adder", "adder", "later"});
}

TEST_CASE("post_accumulate_grad_hook: a leaf's hook fires while earlier layers' backward still runs") {
  // y = w2 * (marker(w1 * x) * 2): w2's gradient is final before the marker's backward runs, w1's
  // after; the accumulator runs as soon as it is ready, ahead of the "* 2" node created later.
  Tensor x = tensor(std::vector<double>{1.0, 2.0});
  Tensor w1 = leaf64({0.5, 0.25});
  Tensor w2 = leaf64({3.0, 4.0});
  Log log;
  Marker::log = &log;
  ag::register_post_accumulate_grad_hook(w1, [&](const Tensor&) { log.push_back("w1"); });
  ag::register_post_accumulate_grad_hook(w2, [&](const Tensor&) { log.push_back("w2"); });
  (w2 * (Marker::apply(w1 * x) * 2.0)).sum().backward();
  CHECK(log == Log{"w2", "marker", "w1"});
  CHECK(w1.grad().to_vector<double>() == std::vector<double>{6.0, 16.0});
  CHECK(w2.grad().to_vector<double>() == std::vector<double>{1.0, 1.0});
}

TEST_CASE("queue_callback: runs after the last node, before backward returns, callbacks may queue more") {
  Tensor w1 = leaf64({1.0, 2.0});
  Tensor w2 = leaf64({3.0});
  Log log;
  int passes = 0;
  ag::register_post_accumulate_grad_hook(w2, [&](const Tensor&) {
    CHECK(ag::backward_running());
    log.push_back("w2");
    ag::queue_callback([&] {
      // Every gradient of the pass is in place when the callback runs.
      log.push_back("cb:" + std::to_string(w1.grad().to_vector<double>()[1]).substr(0, 3));
      ag::queue_callback([&] { log.push_back("cb2"); });
    });
  });
  ag::register_post_accumulate_grad_hook(w1, [&](const Tensor&) {
    ++passes;
    log.push_back("w1");
  });
  CHECK_FALSE(ag::backward_running());
  (w1 * w2).sum().backward();
  CHECK(passes == 1);
  REQUIRE(log.size() == 4);
  CHECK(log[2] == "cb:3.0");
  CHECK(log[3] == "cb2");
  CHECK_FALSE(ag::backward_running());
}

TEST_CASE("hooks: autograd::grad accumulates nothing and fires no hook, errors") {
  Tensor x = leaf64({1.0, 2.0});
  int calls = 0;
  ag::register_post_accumulate_grad_hook(x, [&](const Tensor&) { ++calls; });
  auto g = ag::grad({(x * x).sum()}, {x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{2.0, 4.0});
  CHECK(calls == 0);

  CHECK_THROWS_WITH_AS(ag::queue_callback([] {}), doctest::Contains("[queue_callback] no backward pass is running"),
                       kiln::Error);
  CHECK_THROWS_WITH_AS(ag::register_post_accumulate_grad_hook(x * 2.0, [](const Tensor&) {}),
                       doctest::Contains("is not a leaf (it was produced by 'mul')"), kiln::Error);
  CHECK_THROWS_WITH_AS(ag::register_post_accumulate_grad_hook(tensor(std::vector<double>{1.0}), [](const Tensor&) {}),
                       doctest::Contains("does not require grad"), kiln::Error);
  CHECK_THROWS_AS(ag::register_post_accumulate_grad_hook(x, {}), kiln::Error);

  // A hook that throws fails the pass with its error; queued callbacks are dropped and the next
  // pass starts clean.
  bool throw_now = true;
  int callbacks = 0;
  ag::register_post_accumulate_grad_hook(x, [&](const Tensor&) {
    ag::queue_callback([&] { ++callbacks; });
    if (throw_now) throw_error("test hook", "boom");
  });
  CHECK_THROWS_WITH_AS((x * 3.0).sum().backward(), doctest::Contains("[test hook] boom"), kiln::Error);
  CHECK(callbacks == 0);
  CHECK_FALSE(ag::backward_running());
  throw_now = false;
  (x * 3.0).sum().backward();
  CHECK(callbacks == 1);
}
