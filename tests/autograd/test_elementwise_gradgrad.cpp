// Second derivatives: every backward formula is built from differentiable ops, so the
// gradient itself passes gradcheck (create_graph) for elementwise ops and reductions.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

using Op = std::function<Tensor(const std::vector<Tensor>&)>;

// fn(in) = d/d(in) sum(op(in) * w), built with create_graph so gradcheck can differentiate it.
Op grad_of_op(const Op& op, std::size_t n_inputs) {
  return [op, n_inputs](const std::vector<Tensor>& in) {
    GradModeGuard on(true);  // gradcheck evaluates under no-grad; the inner gradient needs a graph
    Tensor y = op(in);
    Tensor w = ew::make(ew::randvals(y.shape(), 999), y.shape());
    std::vector<Tensor> xs(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(n_inputs));
    auto gs = autograd::grad({sum(y * w)}, xs, {}, true, true);
    Tensor out;
    for (auto& g : gs) {
      Tensor f = reshape(g, {g.numel()});
      out = out.defined() ? cat({out, f}) : f;
    }
    return out;
  };
}

}  // namespace

TEST_CASE("second derivatives of unary ops") {
  std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> ops = {
      {"exp", [](const Tensor& x) { return exp(x); }},
      {"log", [](const Tensor& x) { return log(x); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); }},
      {"square", [](const Tensor& x) { return square(x); }},
      {"sin", [](const Tensor& x) { return sin(x); }},
      {"cos", [](const Tensor& x) { return cos(x); }},
      {"erf", [](const Tensor& x) { return erf(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }},
      {"gelu", [](const Tensor& x) { return gelu(x); }},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, "tanh"); }},
      {"silu", [](const Tensor& x) { return silu(x); }},
      {"abs", [](const Tensor& x) { return abs(x); }},
      {"relu", [](const Tensor& x) { return relu(x); }},
      {"clamp", [](const Tensor& x) { return clamp(x, 0.2, 1.1); }},
      {"pow 0.5", [](const Tensor& x) { return pow(x, 0.5); }},
      {"pow 3", [](const Tensor& x) { return pow(x, 3); }},
      {"pow -1", [](const Tensor& x) { return pow(x, -1); }},
      {"neg", [](const Tensor& x) { return -x; }},
  };
  Vec v = ew::randvals({2, 3}, 501, [](double x) {
    double p = ew::positive(x);
    return std::abs(p - 0.2) < 0.05 || std::abs(p - 1.1) < 0.05 ? p + 0.1 : p;
  });
  for (auto& [name, op] : ops) {
    INFO(std::string(name));
    Op f = [op = op](const std::vector<Tensor>& in) { return op(in[0]); };
    kt::grad_ok(grad_of_op(f, 1), {ew::leaf_of(v, {2, 3}, true)});
  }
}

TEST_CASE("second derivatives of binary ops and where") {
  std::vector<std::pair<const char*, Op>> ops = {
      {"add alpha", [](const std::vector<Tensor>& in) { return add(in[0], in[1], 1.5); }},
      {"sub", [](const std::vector<Tensor>& in) { return in[0] - in[1]; }},
      {"mul", [](const std::vector<Tensor>& in) { return in[0] * in[1]; }},
      {"div", [](const std::vector<Tensor>& in) { return in[0] / in[1]; }},
      {"pow", [](const std::vector<Tensor>& in) { return pow(in[0], in[1]); }},
      {"maximum", [](const std::vector<Tensor>& in) { return maximum(in[0], in[1]); }},
      {"minimum", [](const std::vector<Tensor>& in) { return minimum(in[0], in[1]); }},
      {"where", [](const std::vector<Tensor>& in) { return where(tensor({true, false, true}), in[0] * in[0], in[1] * in[0]); }},
  };
  for (auto& [name, op] : ops) {
    INFO(std::string(name));
    kt::grad_ok(grad_of_op(op, 2), {ew::leaf_of(ew::randvals({2, 3}, 511, ew::positive), {2, 3}),
                                    ew::leaf_of(ew::randvals({3}, 512, ew::positive), {3})});
  }
}

TEST_CASE("second derivatives of reductions") {
  std::vector<std::pair<const char*, Op>> ops = {
      {"sum", [](const std::vector<Tensor>& in) { return sum(in[0] * in[0], {1}); }},
      {"mean", [](const std::vector<Tensor>& in) { return mean(in[0] * in[0], {0}, true); }},
      {"var", [](const std::vector<Tensor>& in) { return var(in[0], {1}); }},
      {"var0", [](const std::vector<Tensor>& in) { return var(in[0], {}, 0); }},
      {"std", [](const std::vector<Tensor>& in) { return kiln::std(in[0], {1}); }},
      {"std0 keep", [](const std::vector<Tensor>& in) { return kiln::std(in[0], {0}, 0, true); }},
      {"amax", [](const std::vector<Tensor>& in) { return amax(in[0] * in[0], {1}); }},
      {"amin", [](const std::vector<Tensor>& in) { return amin(in[0] * in[0], {}); }},
      {"max dim", [](const std::vector<Tensor>& in) { return max(in[0] * in[0], 0).values; }},
      {"min dim", [](const std::vector<Tensor>& in) { return min(in[0] * in[0], -1, true).values; }},
      {"logsumexp", [](const std::vector<Tensor>& in) { return logsumexp(in[0], {1}); }},
      {"logsumexp all", [](const std::vector<Tensor>& in) { return logsumexp(in[0], {}); }},
  };
  for (auto& [name, op] : ops) {
    INFO(std::string(name));
    kt::grad_ok(grad_of_op(op, 1), {ew::leaf_of(ew::randvals({2, 3}, 521), {2, 3}, true)});
  }
}
