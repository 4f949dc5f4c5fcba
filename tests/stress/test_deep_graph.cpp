// Deep graphs free iteratively: dropping a chain of a million nodes (with or without a backward
// in between) must not recurse through a million node destructors (issue 11, item 2).
#include "test_util.hpp"

using namespace kiln;

namespace {
constexpr int kDepth = 1'000'000;

// y = y + x, kDepth times: a chain linked by edges only (add saves nothing).
Tensor add_chain(const Tensor& x, int depth) {
  Tensor y = x;
  for (int i = 0; i < depth; ++i) y = y + x;
  return y;
}
}  // namespace

TEST_CASE("stress deep graph: a 1M-node chain is freed without backward") {
  Tensor x = ones({1}).requires_grad_(true);
  Tensor y = add_chain(x, kDepth);
  CHECK(y.item<float>() == static_cast<float>(kDepth + 1));
  y = Tensor();  // would overflow the stack with recursive destructors
  // The thread can build and free again (the teardown state was reset).
  Tensor z = add_chain(x, 10);
  z.backward();
  CHECK(x.grad().item<float>() == 11.0f);
}

TEST_CASE("stress deep graph: a 1M-node chain is freed after backward, and a retained graph too") {
  Tensor x = ones({1}).requires_grad_(true);
  {
    Tensor y = add_chain(x, kDepth);
    y.backward();
    CHECK(x.grad().item<float>() == static_cast<float>(kDepth + 1));
  }
  x.set_grad(Tensor());
  Tensor y = add_chain(x, 200'000);
  y.backward({}, /*retain_graph=*/true);
  y.backward();
  CHECK(x.grad().item<float>() == 2.0f * 200'001);
}

TEST_CASE("stress deep graph: chains through saved tensors and custom captures are freed") {
  // mul saves both inputs: each node also reaches the previous one through a saved tensor.
  Tensor x = full({1}, 1.0, TensorOptions(kFloat64).requires_grad(true));
  Tensor y = x;
  for (int i = 0; i < 200'000; ++i) y = y * x;
  CHECK(y.item<double>() == 1.0);
  y = Tensor();
  // A graph kept alive only through a leaf's .grad (create_graph). That graph saves the leaf
  // itself, so leaf -> .grad -> graph -> leaf is a reference cycle (as in PyTorch): clearing the
  // .grad breaks it, and the ~1M nodes then go in one iterative release.
  Tensor w = full({1}, 2.0, TensorOptions(kFloat64).requires_grad(true));
  Tensor v = w;
  for (int i = 0; i < 200'000; ++i) v = v + w * w * 1e-6;
  v.backward({}, false, /*create_graph=*/true);
  CHECK(w.grad().requires_grad());
  CHECK(w.grad().item<double>() == doctest::Approx(1.0 + 200'000 * 4e-6));
  v = Tensor();
  w.set_grad(Tensor());  // the .grad's graph (about 1M nodes) goes here
  w = Tensor();
}
