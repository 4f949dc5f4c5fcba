// The registry's drivers: every (op, check) pair is its own test case, "opinfo <op>: <check>",
// so a failure names the op and `ctest -R "opinfo tanh:"` runs one op. The checks:
//   values         every sample in every dtype of the entry against its float64 reference
//   gradcheck      float64 finite differences on the samples marked grad; gradients of size-0
//                  inputs exist and have the input's shape
//   gradgradcheck  the backward itself, differentiated w.r.t. the inputs and the output grad
//   grad dtypes    every other dtype of the entry gets gradients of its own dtype and shape that
//                  match the float64 ones (where bfloat16 / float16 plug in)
//   cuda parity    CPU and CUDA values and gradients agree (reported skipped without a GPU)
#include <array>
#include <deque>
#include <utility>

#include "cuda/cuda_test_util.hpp"
#include "opinfo/opinfo.hpp"

using namespace kiln;
using opinfo::OpInfo;
using opinfo::Sample;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

namespace {

std::vector<Tensor> inputs_of(const OpInfo& op, const Sample& s, DType dt, const Device& dev = Device::cpu(),
                              bool requires_grad = false) {
  std::vector<Tensor> in;
  for (std::size_t i = 0; i < s.args.size(); ++i) in.push_back(opinfo::make_input(op, s, i, dt, dev, requires_grad));
  return in;
}

std::vector<Sample> grad_samples(const OpInfo& op) {
  std::vector<Sample> out;
  for (const Sample& s : op.samples())
    if (s.grad) out.push_back(s);
  return out;
}

Fn bind(const OpInfo& op, const Sample& s) {
  return [&op, kw = s.kw](const std::vector<Tensor>& in) { return op.op(in, kw); };
}

void check_values(const OpInfo& op) {
  for (const auto& dt : op.dtypes)
    for (const Sample& s : op.samples()) {
      INFO(dtype_name(dt.dtype) << ", " << opinfo::describe(s));
      std::vector<Tensor> in = inputs_of(op, s, dt.dtype);
      Tensor y = op.op(in, s.kw);
      CHECK(y.dtype() == dt.dtype);
      std::vector<Tensor> in64;
      for (const Tensor& x : in) in64.push_back(x.to(kFloat64).contiguous());
      Tensor want = op.ref(in64, s.kw);
      kt::expect_shape(y, want.shape());
      ew::expect_values(y, want.to_vector<double>(), dt.values.atol, dt.values.rtol);
    }
}

void check_gradcheck(const OpInfo& op) {
  for (const Sample& s : grad_samples(op)) {
    INFO(opinfo::describe(s));
    std::vector<Tensor> in = inputs_of(op, s, kFloat64, Device::cpu(), true);
    Fn f = bind(op, s);
    kt::grad_ok(f, in, op.grad_tol.atol, op.grad_tol.rtol);
    // size-0 inputs or outputs: the gradients of sum(y) exist with the inputs' shapes and dtype,
    // and are zero for the other operands
    Tensor y = f(in);
    if (y.numel() == 0)
      kt::grad_ok([&f](const std::vector<Tensor>& x) { return sum(f(x)); }, in, op.grad_tol.atol, op.grad_tol.rtol);
    auto gs = autograd::grad({sum(y)}, in, {}, false, false, /*allow_unused=*/true);
    for (std::size_t i = 0; i < in.size(); ++i) {
      INFO("input " << i);
      REQUIRE(gs[i].defined());
      kt::expect_shape(gs[i], in[i].shape());
      CHECK(gs[i].dtype() == kFloat64);
    }
  }
}

// (inputs..., w) -> d/d(inputs) sum(op(inputs) * w), built with create_graph, flattened.
Fn grad_of(const Fn& f, std::size_t n_inputs) {
  return [f, n_inputs](const std::vector<Tensor>& in) {
    GradModeGuard on(true);  // gradcheck evaluates under no-grad; the inner gradient needs a graph
    std::vector<Tensor> xs(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(n_inputs));
    Tensor y = f(xs);
    auto gs = autograd::grad({sum(y * in[n_inputs])}, xs, {}, true, true, /*allow_unused=*/true);
    std::vector<Tensor> flat;
    for (std::size_t i = 0; i < gs.size(); ++i)
      flat.push_back(gs[i].defined() ? reshape(gs[i], {gs[i].numel()}) : zeros({xs[i].numel()}, kFloat64));
    return cat(flat);
  };
}

void check_gradgradcheck(const OpInfo& op) {
  for (const Sample& s : grad_samples(op)) {
    if (op.gradgrad_on && !op.gradgrad_on(s)) continue;
    INFO(opinfo::describe(s));
    std::vector<Tensor> in = inputs_of(op, s, kFloat64, Device::cpu(), true);
    Fn f = bind(op, s);
    Tensor y = f(in);
    Tensor w = ew::make(ew::randvals(y.shape(), 999), y.shape()).requires_grad_();
    std::vector<Tensor> all = in;
    all.push_back(w);
    kt::grad_ok(grad_of(f, in.size()), all, op.grad_tol.atol, op.grad_tol.rtol);
  }
}

void check_grad_dtypes(const OpInfo& op) {
  for (const auto& dt : op.dtypes) {
    if (dt.dtype == kFloat64) continue;
    for (const Sample& s : grad_samples(op)) {
      INFO(dtype_name(dt.dtype) << ", " << opinfo::describe(s));
      std::vector<Tensor> in = inputs_of(op, s, dt.dtype, Device::cpu(), true);
      auto gs = autograd::grad({sum(bind(op, s)(in))}, in, {}, false, false, true);
      std::vector<Tensor> in64;
      for (const Tensor& x : in) in64.push_back(x.detach().to(kFloat64).requires_grad_());
      auto g64 = autograd::grad({sum(bind(op, s)(in64))}, in64, {}, false, false, true);
      for (std::size_t i = 0; i < in.size(); ++i) {
        INFO("input " << i);
        REQUIRE(gs[i].defined());
        CHECK(gs[i].dtype() == dt.dtype);
        kt::expect_shape(gs[i], in[i].shape());
        ew::expect_values(gs[i], g64[i].to_vector<double>(), dt.grads.atol, dt.grads.rtol);
      }
    }
  }
}

void check_cuda_parity(const OpInfo& op) {
  KILN_CUDA_OR_SKIP();
  for (const auto& dt : op.dtypes)
    for (const Sample& s : op.samples()) {
      INFO(dtype_name(dt.dtype) << ", " << opinfo::describe(s));
      std::vector<kc::Pair> pairs;
      for (std::size_t i = 0; i < s.args.size(); ++i)
        pairs.push_back({opinfo::make_input(op, s, i, dt.dtype), opinfo::make_input(op, s, i, dt.dtype, kc::kGpu)});
      // two summation orders: twice the entry's own bound against the reference, at least kc's
      const double rtol = std::max(kc::rtol_for(dt.dtype), 2 * dt.values.rtol);
      const double atol = std::max(kc::atol_for(dt.dtype), 2 * dt.values.atol);
      kc::check_op(op.name, bind(op, s), pairs, rtol, atol);
      if (s.grad) kc::check_grads(op.name, bind(op, s), pairs, rtol * 10, atol * 10);
    }
}

// doctest runs test cases through plain function pointers: one per registered (op, check),
// generated up to a fixed count.
struct Registered {
  const OpInfo* op;
  void (*check)(const OpInfo&);
};
std::vector<Registered>& registered() {
  static std::vector<Registered> r;
  return r;
}
template <std::size_t I>
void run_registered() {
  registered().at(I).check(*registered().at(I).op);
}
template <std::size_t... I>
constexpr auto runners(std::index_sequence<I...>) {
  return std::array<doctest::detail::funcType, sizeof...(I)>{&run_registered<I>...};
}
constexpr std::size_t kMaxRegistered = 1024;

int register_checks() {
  static const auto run = runners(std::make_index_sequence<kMaxRegistered>{});
  static std::deque<std::string> names;  // doctest keeps the name pointers
  struct Check {
    const char* name;
    void (*fn)(const OpInfo&);
    bool (*applies)(const OpInfo&);
  };
  const Check checks[] = {
      {"values", check_values, [](const OpInfo&) { return true; }},
      {"gradcheck", check_gradcheck, [](const OpInfo&) { return true; }},
      {"gradgradcheck", check_gradgradcheck, [](const OpInfo& o) { return o.gradgrad; }},
      {"grad dtypes", check_grad_dtypes, [](const OpInfo& o) { return o.dtypes.size() > 1; }},
      {"cuda parity", check_cuda_parity, [](const OpInfo& o) { return o.cuda; }},
  };
  for (const OpInfo& op : opinfo::registry())
    for (const Check& c : checks) {
      if (!c.applies(op)) continue;
      if (registered().size() == kMaxRegistered) {
        std::fprintf(stderr, "opinfo: more than %zu (op, check) pairs; raise kMaxRegistered\n", kMaxRegistered);
        std::abort();
      }
      names.push_back("opinfo " + op.name + ": " + c.name);
      doctest::detail::regTest(doctest::detail::TestCase(run[registered().size()], __FILE__, __LINE__,
                                                         doctest_detail_test_suite_ns::getCurrentTestSuite()) *
                               names.back().c_str());
      registered().push_back({&op, c.fn});
    }
  return 0;
}

const int kRegistered = register_checks();

}  // namespace
