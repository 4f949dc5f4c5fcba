// Registry entries: reductions (sum, mean, var, std, amax, amin, max, min, logsumexp) over the
// dims and keepdim of each sample; see reduction_samples().
#include "opinfo/opinfo.hpp"

namespace opinfo {
namespace {

using namespace kiln;
using Red = std::function<Tensor(const Tensor&, const Dims&, bool)>;

OpInfo entry(std::string name, Red f, std::function<double(const Vec&)> ref, bool empty_dims = true,
             Tol f32 = {1e-6, 1e-5}) {
  OpInfo e;
  e.name = std::move(name);
  e.op = [f](const std::vector<Tensor>& in, const Kw& kw) { return f(in[0], kw.dims, kw.keepdim); };
  e.ref = ref_reduce(std::move(ref));
  e.samples = [empty_dims] { return reduction_samples(empty_dims); };
  e.dtypes = default_dtypes();
  e.dtypes[1].values = f32;
  if (f32.atol == 0 && f32.rtol == 0) e.dtypes[0].values = f32;  // selections are exact in every dtype
  return e;
}

// Keeps only the samples an op that takes one dim (or none) accepts.
OpInfo only(OpInfo e, std::function<bool(const Kw&)> keep) {
  auto all = e.samples;
  e.samples = [all, keep] {
    std::vector<Sample> out;
    for (auto& s : all())
      if (keep(s.kw)) out.push_back(s);
    return out;
  };
  return e;
}

double sqrt_var(const Vec& b, double correction) { return std::sqrt(ew::r_var(correction)(b)); }

// std of one value is 0, where sqrt has no second derivative: gradgradcheck skips 0-D inputs.
OpInfo std_entry(std::string name, double correction) {
  OpInfo e = entry(
      std::move(name), [correction](const Tensor& x, const Dims& d, bool k) { return kiln::std(x, d, correction, k); },
      [correction](const Vec& b) { return sqrt_var(b, correction); });
  e.gradgrad_on = [](const Sample& s) { return !s.args[0].shape.empty(); };
  return e;
}

}  // namespace

std::vector<OpInfo> reduction_ops() {
  auto one_dim = [](const Kw& kw) { return kw.dims.size() == 1; };
  auto all_dims = [](const Kw& kw) { return kw.dims.empty() && !kw.keepdim; };
  return {
      // float32 sums of 77100 values: allow ~sqrt(n) ulps of the running magnitude
      entry("sum", [](const Tensor& x, const Dims& d, bool k) { return sum(x, d, k); }, ew::r_sum, true, {2e-3, 1e-5}),
      entry(
          "mean", [](const Tensor& x, const Dims& d, bool k) { return mean(x, d, k); }, ew::r_mean),
      entry(
          "var", [](const Tensor& x, const Dims& d, bool k) { return var(x, d, 1, k); }, ew::r_var(1)),
      entry(
          "var correction 0", [](const Tensor& x, const Dims& d, bool k) { return var(x, d, 0, k); }, ew::r_var(0)),
      std_entry("std", 1),
      std_entry("std correction 0", 0),
      entry("amax", [](const Tensor& x, const Dims& d, bool k) { return amax(x, d, k); }, ew::r_max, false, {0, 0}),
      entry("amin", [](const Tensor& x, const Dims& d, bool k) { return amin(x, d, k); }, ew::r_min, false, {0, 0}),
      only(entry("max", [](const Tensor& x, const Dims&, bool) { return max(x); }, ew::r_max, false, {0, 0}), all_dims),
      only(entry("min", [](const Tensor& x, const Dims&, bool) { return min(x); }, ew::r_min, false, {0, 0}), all_dims),
      only(entry("max dim", [](const Tensor& x, const Dims& d, bool k) { return max(x, d[0], k).values; }, ew::r_max,
                 false, {0, 0}),
           one_dim),
      only(entry("min dim", [](const Tensor& x, const Dims& d, bool k) { return min(x, d[0], k).values; }, ew::r_min,
                 false, {0, 0}),
           one_dim),
      entry(
          "logsumexp", [](const Tensor& x, const Dims& d, bool k) { return logsumexp(x, d, k); }, ew::r_logsumexp),
  };
}

}  // namespace opinfo
