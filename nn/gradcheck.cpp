#include "gradcheck.hpp"

#include <fmt/format.h>

#include <string>

namespace kiln::nn {

bool gradcheck(const Module& module, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
               const std::vector<Tensor>& inputs, const autograd::GradcheckOptions& opts) {
  const auto& given = opts.input_names();
  KILN_CHECK(given.empty() || given.size() == inputs.size(), "gradcheck", "{} input names for {} inputs", given.size(),
             inputs.size());
  std::vector<Tensor> all = inputs;
  std::vector<std::string> names;
  for (std::size_t i = 0; i < inputs.size(); ++i)
    names.push_back(given.empty() ? fmt::format("input {}", i) : given[i]);
  for (const auto& [name, p] : module.named_parameters()) {
    if (!p.requires_grad()) continue;  // frozen: nothing to check
    // Checked here too, to say how to fix it: the module converts, not the parameter.
    KILN_CHECK(p.dtype() == kFloat64 && p.device().is_cpu(), "gradcheck",
               "parameter {} is {} on {}; gradcheck needs float64 on the cpu: call module->to(kFloat64) first", name,
               dtype_name(p.dtype()), p.device().str());
    all.push_back(p);
    names.push_back("parameter " + name);
  }
  const std::size_t n = inputs.size();
  auto o = opts;
  o.input_names(std::move(names));
  return autograd::gradcheck(
      [&](const std::vector<Tensor>& in) { return fn(std::vector<Tensor>(in.begin(), in.begin() + n)); }, all, o);
}

}  // namespace kiln::nn
