// The optimizer seam: an optimizer defined entirely in this file (options, rule, kernels)
// through the public headers, with no change to core, steps on the CPU and gives its
// formula's values; core's foreach loop runs a rule over large tensors split across threads.
#include <kiln/core/foreach.hpp>
#include <kiln/optim/optimizer.hpp>

#include "test_util.hpp"

using namespace kiln;

namespace {

// Sign momentum: buf = beta * buf + g; p -= lr * sign(buf).
template <typename T, bool NEG>
struct SignMomentumRule {
  T lr, beta;
  KILN_HD void operator()(std::int64_t i, T* p, const T* g, T* buf, T*, T*) const {
    const T b = beta * buf[i] + (NEG ? -g[i] : g[i]);
    buf[i] = b;
    p[i] -= lr * (b > 0 ? T(1) : b < 0 ? T(-1) : T(0));
  }
};

struct SignMomentumStep {
  double lr, beta;
  bool maximize;
  template <typename T, typename Run>
  void with_rule(Run&& run) const {
    with_flags([&]<bool NEG>() { run(SignMomentumRule<T, NEG>{T(lr), T(beta)}); }, maximize);
  }
};

class SignMomentumOptions final : public optim::OptionsBase<SignMomentumOptions> {
 public:
  static constexpr const char* kKind = "SignMomentumOptions";
  SignMomentumOptions(double lr = 0.1) : lr_(lr) {}  // NOLINT
  KILN_ARG(double, lr);
  KILN_ARG(double, beta) = 0.5;
  KILN_ARG(bool, maximize) = false;

 public:
  void fields(const optim::OptionFieldFn& f) override {
    optim::field(f, "lr", lr_);
    optim::field(f, "beta", beta_);
    optim::field(f, "maximize", maximize_);
  }
};

class SignMomentum final : public optim::OptimizerBase<SignMomentum, SignMomentumOptions> {
 public:
  using OptimizerBase::OptimizerBase;

 private:
  friend OptimizerBase;
  static constexpr const char* kName = "SignMomentum";
  static std::vector<std::string> buffers() { return {"buf"}; }
  static void check(const SignMomentumOptions& o, const optim::OptionCheck& check) {
    check(o.beta() >= 0 && o.beta() < 1, "beta", o.beta(), "must be in [0, 1)");
  }
  void update_param(const SignMomentumOptions& o, const Tensor& param, const Tensor& grad, optim::ParamState& st) {
    static const optim::UpdateKernels<SignMomentumStep> kernels{&optim::cpu_update<SignMomentumStep>, nullptr};
    if (!st.buffers[0].defined()) st.buffers[0] = state_buffer(param);
    ++st.step;
    run_update(kernels, SignMomentumStep{o.lr(), o.beta(), o.maximize()}, {param, grad, st.buffers[0]});
  }
};

template <typename T>
struct Axpy {
  T a;
  KILN_HD void operator()(std::int64_t i, T* y, const T* x) const { y[i] += a * x[i]; }
};

}  // namespace

TEST_CASE("an optimizer defined outside kiln through the fused-update seam steps on the CPU") {
  for (DType dt : {kFloat64, kFloat32}) {
    INFO(dtype_name(dt));
    // A non-contiguous parameter takes the detour through a contiguous copy.
    Tensor w =
        kiln::tensor(std::vector<double>{1, -2, 3, 0.5, 0, -1}, {3, 2}).to(dt).t().contiguous().t().requires_grad_();
    REQUIRE_FALSE(w.is_contiguous());
    SignMomentum opt({w}, SignMomentumOptions(0.1).beta(0.5));
    const std::vector<std::vector<double>> grads = {{1, -1, 0.25, 0, -3, 2}, {-3, 0.5, -0.25, 1, 2, -1}};
    std::vector<double> p = w.to_vector<double>(), buf(6, 0.0);
    for (const auto& g : grads) {
      w.set_grad(kiln::tensor(g, {3, 2}).to(dt));
      opt.step();
      for (int i = 0; i < 6; ++i) {
        buf[i] = 0.5 * buf[i] + g[i];
        p[i] -= 0.1 * (buf[i] > 0 ? 1 : buf[i] < 0 ? -1 : 0);
      }
      kt::expect_values(w, p, 1e-6, 1e-6);
    }
    CHECK(opt.state(w)->step == 2);
    const StateDict sd = opt.state_dict();
    CHECK(sd.scalars.at("group.0.beta") == 0.5);
    kt::expect_values(sd.at("state.0.buf"), buf, 1e-6, 1e-6);
    CHECK_KILN_ERROR(SignMomentum({w}, SignMomentumOptions().beta(1)),
                     "[SignMomentum] invalid beta: 1 (must be in [0, 1))");
  }
}

TEST_CASE("foreach_cpu runs a rule over every element of large tensors split across threads") {
  const std::int64_t n = 5 * kParallelGrain + 7;
  Tensor y = kiln::arange(0, static_cast<double>(n), 1, TensorOptions(kFloat64));
  Tensor x = kiln::full({n}, 2.0, TensorOptions(kFloat64));
  foreach_cpu<double>(Axpy<double>{0.5}, std::array<Tensor, 2>{y, x});
  const auto v = y.to_vector<double>();
  bool all = true;
  for (std::int64_t i = 0; i < n; ++i) all = all && v[static_cast<std::size_t>(i)] == static_cast<double>(i) + 1.0;
  CHECK(all);
}

TEST_CASE("an optimizer step rounds every element alike, wherever it sits in the tensor") {
  // Equal values with equal gradients must stay bitwise equal after any number of steps: the
  // update loop's vector body and its remainder must compute the same operations. (A compiler
  // that contracts a * b + c into one FMA in one of them and not the other makes the result
  // depend on the element's position: a ZeRO-1 shard boundary or a different vector width then
  // changes the bits.)
  for (const DType dt : {kFloat32, kFloat64}) {
    for (std::int64_t n : {1, 3, 6, 7, 13, 37, 70}) {
      CAPTURE(n);
      Tensor p1 = full({n}, 0.3, dt).requires_grad_();
      Tensor p2 = full({n}, -1.7, dt).requires_grad_();
      Tensor p3 = full({n}, 2.1, dt).requires_grad_();
      Tensor p4 = full({n}, 0.9, dt).requires_grad_();
      optim::AdamW adamw({p1}, optim::AdamWOptions(0.05).betas({0.9, 0.95}).amsgrad(true).weight_decay(0.01));
      optim::Adam adam({p2}, optim::AdamOptions(0.05).weight_decay(0.01));
      optim::SGD sgd({p3}, optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(0.01));
      optim::RMSprop rms({p4}, optim::RMSpropOptions(0.01).momentum(0.5).centered(true));
      for (int step = 0; step < 5; ++step) {
        for (Tensor* p : {&p1, &p2, &p3, &p4}) p->set_grad((p->detach() * p->detach() - 0.37 * step).detach());
        adamw.step();
        adam.step();
        sgd.step();
        rms.step();
      }
      for (const Tensor& p : {p1, p2, p3, p4}) {
        const Tensor first = p.detach().narrow(0, 0, 1).expand({n});
        CHECK(equal(p.detach(), first));
      }
    }
  }
}
