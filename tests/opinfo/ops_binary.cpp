// Registry entries: binary elementwise ops and their operators (add / sub with alpha, mul, div,
// pow, maximum, minimum) and where. Operands broadcast; see binary_samples().
#include "opinfo/opinfo.hpp"

namespace opinfo {
namespace {

using namespace kiln;
using Fn2 = std::function<Tensor(const Tensor&, const Tensor&)>;

OpInfo entry(std::string name, Fn2 f, std::function<double(double, double)> ref, Domain dom_a = nullptr,
             Domain dom_b = nullptr) {
  OpInfo e;
  e.name = std::move(name);
  e.op = binary(std::move(f));
  e.ref = ref_binary(std::move(ref));
  e.samples = binary_samples;
  e.domains = {std::move(dom_a), std::move(dom_b)};
  e.dtypes = default_dtypes();
  e.dtypes[1].values = {1e-6, 1e-5};
  return e;
}

// add/sub with alpha round alpha * b to the 16-bit dtype before the sum: one more rounding,
// of at most u |alpha b| (|alpha b| < 10 on the seeded samples), absolute.
OpInfo alpha_rounding(OpInfo e) {
  for (auto& d : e.dtypes)
    if (kiln::is_reduced_float(d.dtype))
      d.values.atol = 10 * (d.dtype == kiln::kBFloat16 ? kBFloat16Unit : kFloat16Unit);
  return e;
}

// The condition where() uses: true twice in every three elements of the broadcast shape.
Tensor where_mask(const Shape& shape, const Device& device) {
  std::int64_t n = numel_of(shape);
  Vec v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[i] = (i % 3) != 1 ? 1.0 : 0.0;
  return ew::make(v, shape, kBool).to(device);
}

}  // namespace

std::vector<OpInfo> binary_ops() {
  auto plus = [](double a, double b) { return a + b; };
  auto minus = [](double a, double b) { return a - b; };
  auto times = [](double a, double b) { return a * b; };
  auto over = [](double a, double b) { return a / b; };
  std::vector<OpInfo> v = {
      entry(
          "add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, plus),
      alpha_rounding(entry(
          "add alpha", [](const Tensor& a, const Tensor& b) { return add(a, b, 2.5); },
          [](double a, double b) { return a + 2.5 * b; })),
      entry(
          "add operator", [](const Tensor& a, const Tensor& b) { return a + b; }, plus),
      entry(
          "sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, minus),
      alpha_rounding(entry(
          "sub alpha", [](const Tensor& a, const Tensor& b) { return sub(a, b, -3); },
          [](double a, double b) { return a + 3 * b; })),
      entry(
          "sub operator", [](const Tensor& a, const Tensor& b) { return a - b; }, minus),
      entry(
          "mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, times),
      entry(
          "mul operator", [](const Tensor& a, const Tensor& b) { return a * b; }, times),
      entry(
          "div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, over, nullptr, ew::away_from_zero),
      entry(
          "div operator", [](const Tensor& a, const Tensor& b) { return a / b; }, over, nullptr, ew::away_from_zero),
      entry(
          "pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
          [](double a, double b) { return std::pow(a, b); }, ew::positive),
      entry(
          "maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
          [](double a, double b) { return std::max(a, b); }),
      entry(
          "minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
          [](double a, double b) { return std::min(a, b); }),
  };
  OpInfo w = entry(
      "where",
      [](const Tensor& a, const Tensor& b) {
        return where(where_mask(ew::bshape(a.shape(), b.shape()), a.device()), a, b);
      },
      nullptr);
  w.ref = [](const std::vector<Tensor>& in, const Kw&) {
    const Shape so = ew::bshape(in[0].shape(), in[1].shape());
    Vec c = where_mask(so, Device::cpu()).to_vector<double>();
    Vec a = in[0].contiguous().to_vector<double>(), b = in[1].contiguous().to_vector<double>(), out;
    for (std::int64_t i = 0; i < numel_of(so); ++i)
      out.push_back(c[i] != 0 ? a[ew::bindex(i, so, in[0].shape())] : b[ew::bindex(i, so, in[1].shape())]);
    return ew::make(out, so);
  };
  v.push_back(std::move(w));
  return v;
}

}  // namespace opinfo
