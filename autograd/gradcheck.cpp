#include "gradcheck.hpp"

#include <fmt/format.h>
#include <cmath>

#include "grad_mode.hpp"
#include "node.hpp"
#include "ops.hpp"

namespace kiln::autograd {
namespace {

// Pointer to element `flat` (row-major order) of a strided CPU float64 tensor.
double* element(const Tensor& t, std::int64_t flat) {
  std::int64_t off = 0;
  for (std::int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (flat % t.size(d)) * t.stride(d);
    flat /= t.size(d);
  }
  return static_cast<double*>(t.raw_data()) + off;
}

// Grad mode stays as the caller has it: fn may itself call autograd::grad (double-backward checks).
std::vector<double> eval(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& in) {
  Tensor y = fn(in);
  return y.to_vector<double>();
}

}  // namespace

bool gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs,
               const GradcheckOptions& opts) {
  const auto& names = opts.input_names();
  KILN_CHECK(names.empty() || names.size() == inputs.size(), "gradcheck", "{} input names for {} inputs", names.size(),
             inputs.size());
  auto name = [&](std::size_t i) { return names.empty() ? fmt::format("input {}", i) : names[i]; };
  std::vector<Tensor> checked;
  std::vector<std::size_t> which;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;
    KILN_CHECK(t.dtype() == kFloat64, "gradcheck", "{} is {}; gradcheck needs float64 inputs", name(i),
               dtype_name(t.dtype()));
    KILN_CHECK(t.device().is_cpu(), "gradcheck", "{} is on {}; gradcheck runs on cpu", name(i), t.device().str());
    checked.push_back(t);
    which.push_back(i);
  }
  KILN_CHECK(!checked.empty(), "gradcheck", "no input requires grad");
  Tensor y = fn(inputs);
  KILN_CHECK(y.defined() && y.dtype() == kFloat64, "gradcheck", "fn must return a float64 tensor");
  const std::int64_t n_out = y.numel();

  // Analytical Jacobian, one backward per output element.
  std::vector<std::vector<double>> ana(checked.size());
  for (std::size_t k = 0; k < checked.size(); ++k)
    ana[k].assign(static_cast<std::size_t>(n_out * checked[k].numel()), 0.0);
  if (y.requires_grad()) {
    for (std::int64_t j = 0; j < n_out; ++j) {
      Tensor onehot = zeros(y.shape(), kFloat64);
      *element(onehot, j) = 1.0;
      auto gs = grad({y}, checked, {onehot}, /*retain_graph=*/true, false, /*allow_unused=*/true);
      for (std::size_t k = 0; k < checked.size(); ++k) {
        if (!gs[k].defined()) continue;
        KILN_CHECK(gs[k].shape() == checked[k].shape(), "gradcheck",
                   "gradient for {} has shape {} but the input has shape {}", name(which[k]), shape_str(gs[k].shape()),
                   shape_str(checked[k].shape()));
        auto v = gs[k].to_vector<double>();
        for (std::size_t e = 0; e < v.size(); ++e) ana[k][j * v.size() + e] = v[e];
      }
    }
  }

  // Numerical Jacobian by central differences, and the comparison.
  for (std::size_t k = 0; k < checked.size(); ++k) {
    const Tensor& x = checked[k];
    const std::int64_t n_in = x.numel();
    for (std::int64_t e = 0; e < n_in; ++e) {
      double* p = element(x, e);
      const double orig = *p;
      *p = orig + opts.eps();
      auto plus = eval(fn, inputs);
      *p = orig - opts.eps();
      auto minus = eval(fn, inputs);
      *p = orig;
      for (std::int64_t j = 0; j < n_out; ++j) {
        double num = (plus[j] - minus[j]) / (2 * opts.eps());
        double an = ana[k][j * n_in + e];
        bool ok =
            std::abs(an - num) <= opts.atol() + opts.rtol() * std::abs(num) || (std::isnan(an) && std::isnan(num));
        if (!ok) {
          if (!opts.raise_on_failure()) return false;
          throw_error("gradcheck", fmt::format("Jacobian mismatch for {} (shape {}) at output element {}, input "
                                               "element {}: analytical {:.8g} vs numerical {:.8g}",
                                               name(which[k]), shape_str(x.shape()), j, e, an, num));
        }
      }
    }
  }
  return true;
}

}  // namespace kiln::autograd
