// Gradient clipping against PyTorch's clip_grad_norm_ / clip_grad_value_ (tools/optim_goldens.py).
#include "optim/test_optim_util.hpp"

#include <limits>

namespace {

using namespace ko;

struct Params {
  Tensor w = kiln::zeros({3, 4}, kiln::kFloat64).requires_grad_();
  Tensor b = kiln::zeros({5}, kiln::kFloat64).requires_grad_();
  Params(const Golden& g, const std::string& c) {
    w.set_grad(g.at(c + ".g0").clone());
    b.set_grad(g.at(c + ".g1").clone());
  }
  std::vector<Tensor> list() const { return {w, b}; }
};

}  // namespace

TEST_CASE("clip clip_grad_norm_ matches PyTorch for L1 L2 L3 and inf norms") {
  Golden g = load_golden("clip.txt");
  auto cases = g.cases("total");
  REQUIRE(cases.size() == 6);
  for (const auto& c : cases) {
    INFO("case " << c);
    Params p(g, c);
    const double total = optim::clip_grad_norm_(p.list(), g.num(c + ".max_norm"), g.num(c + ".norm_type"));
    CHECK(total == doctest::Approx(g.at(c + ".total").item<double>()).epsilon(1e-12));
    CHECK(closeness(p.w.grad(), g.at(c + ".out0"), 1e-12, 1e-15) <= 1.0);
    CHECK(closeness(p.b.grad(), g.at(c + ".out1"), 1e-12, 1e-15) <= 1.0);
  }
}

TEST_CASE("clip clip_grad_value_ matches PyTorch") {
  Golden g = load_golden("clip.txt");
  for (const char* c : {"value_half", "value_zero"}) {
    INFO("case " << c);
    Params p(g, c);
    optim::clip_grad_value_(p.list(), g.num(std::string(c) + ".clip_value"));
    CHECK(closeness(p.w.grad(), g.at(std::string(c) + ".out0"), 0, 1e-300) <= 1.0);
    CHECK(closeness(p.b.grad(), g.at(std::string(c) + ".out1"), 0, 1e-300) <= 1.0);
  }
}

TEST_CASE("clip skips parameters without gradients and handles float32 and strided grads") {
  Tensor a = kiln::ones({4}).requires_grad_();
  Tensor none = kiln::ones({3}).requires_grad_();
  Tensor c = kiln::ones({2, 3}).requires_grad_();
  a.set_grad(kiln::full({4}, 3.0f));
  Tensor strided = kiln::full({3, 2}, 4.0f).t();  // (2, 3) non-contiguous
  c.set_grad(strided);
  // total L2 = sqrt(4 * 9 + 6 * 16) = sqrt(132)
  const double total = optim::clip_grad_norm_({a, none, c}, 1.0);
  CHECK(total == doctest::Approx(std::sqrt(132.0)).epsilon(1e-6));
  CHECK(!none.grad().defined());
  const double k = 1.0 / (std::sqrt(132.0) + 1e-6);
  kt::expect_values(a.grad(), std::vector<double>(4, 3 * k), 1e-6, 1e-5);
  kt::expect_values(c.grad(), std::vector<double>(6, 4 * k), 1e-6, 1e-5);
  // After clipping the norm is max_norm (up to the 1e-6 guard).
  CHECK(optim::clip_grad_norm_({a, none, c}, 1.0) == doctest::Approx(1.0).epsilon(1e-5));
  optim::clip_grad_value_({a, none, c}, 0.1);
  kt::expect_values(c.grad(), std::vector<double>(6, 0.1), 1e-7, 0);
  // Nothing to clip: norm 0, no error.
  CHECK(optim::clip_grad_norm_({none}, 1.0) == 0.0);
}

TEST_CASE("clip non-finite norms raise only when asked and otherwise scale like PyTorch") {
  Tensor a = kiln::ones({3}, kiln::kFloat64).requires_grad_();
  Tensor b = kiln::ones({2}, kiln::kFloat64).requires_grad_();
  a.set_grad(kiln::tensor({1.0, std::numeric_limits<double>::infinity(), 2.0}, kiln::kFloat64));
  b.set_grad(kiln::tensor({3.0, 4.0}, kiln::kFloat64));
  CHECK_KILN_ERROR(optim::clip_grad_norm_({a, b}, 1.0, 2.0, true),
                   "[clip_grad_norm_] the total norm of order 2 of the gradients is inf");
  // The error leaves the gradients alone.
  kt::expect_values(b.grad(), {3.0, 4.0});
  // Without the error the clip coefficient is 1 / inf = 0, as in torch.
  CHECK(std::isinf(optim::clip_grad_norm_({a, b}, 1.0)));
  kt::expect_values(b.grad(), {0.0, 0.0});
  b.set_grad(kiln::tensor({std::nan(""), 1.0}, kiln::kFloat64));
  CHECK_KILN_ERROR(optim::clip_grad_norm_({b}, 1.0, INFINITY, true), "order inf of the gradients is nan");
}

TEST_CASE("clip clip_grad_norm_ of float16/bfloat16 gradients computes in float32") {
  for (kiln::DType dt : {kiln::kFloat16, kiln::kBFloat16}) {
    CAPTURE(kiln::dtype_name(dt));
    // 300^2 overflows float16 (65504): squared there, the norm was inf and the coefficient 0.
    Tensor w = kiln::zeros({4, 25}, dt).requires_grad_();
    w.set_grad(kiln::full({4, 25}, 300.0, dt));
    Tensor b = kiln::zeros({3}, dt).requires_grad_();
    b.set_grad(kiln::tensor({1.0, 2.0, 2.0}).to(dt));
    const double want = std::sqrt(100 * 300.0 * 300.0 + 9.0);
    const double total = optim::clip_grad_norm_({w, b}, 1.0);
    CHECK(total == doctest::Approx(want).epsilon(1e-6));
    // scaled by 1 / (total + 1e-6), then rounded to the gradient's dtype
    const double ulp = dt == kiln::kFloat16 ? 0x1p-11 : 0x1p-8;
    CHECK(kiln::amax(w.grad().to(kiln::kFloat64)).item<double>() == doctest::Approx(300 / want).epsilon(ulp));
    CHECK(b.grad().dtype() == dt);
  }
}

TEST_CASE("clip bad arguments raise kiln errors") {
  Tensor a = kiln::ones({3}).requires_grad_();
  a.set_grad(kiln::ones({3}));
  CHECK_KILN_ERROR(optim::clip_grad_norm_({a}, -1.0), "[clip_grad_norm_] max_norm must be >= 0, got -1");
  CHECK_KILN_ERROR(optim::clip_grad_norm_({a}, 1.0, 0.0), "[clip_grad_norm_] norm_type must be > 0 or infinity, got 0");
  CHECK_KILN_ERROR(optim::clip_grad_norm_({a}, NAN), "[clip_grad_norm_] max_norm must be >= 0, got nan");
  CHECK_KILN_ERROR(optim::clip_grad_value_({a}, -0.5), "[clip_grad_value_] clip_value must be >= 0, got -0.5");
  CHECK_KILN_ERROR(optim::clip_grad_norm_({a, Tensor()}, 1.0), "[clip_grad_norm_] parameter 1 is an undefined tensor");
}
