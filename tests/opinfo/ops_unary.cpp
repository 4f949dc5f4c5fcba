// Registry entries: unary elementwise ops (activations, math functions, clamp, pow by a number,
// masked_fill). One entry per op; see opinfo.hpp for the fields.
#include <sstream>

#include "opinfo/opinfo.hpp"

namespace opinfo {
namespace {

using namespace kiln;

const double kPi = 3.14159265358979323846;
double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }

// Keeps inputs off the clamp bounds the entries use (the gradient jumps there).
double off_bounds(double x) { return ew::off_bounds_for_tests(x); }
double positive(double x) { return off_bounds(ew::positive(x)); }
double away_from_zero(double x) { return off_bounds(ew::away_from_zero(x)); }
// Spreads inputs over all three pieces of hardswish (kinks at -3 and 3), keeping 0.1 away from them.
double spread_off_kinks(double x) {
  double y = 2.5 * x;
  for (double k : {-3.0, 3.0})
    if (std::abs(y - k) < 0.1) y = k + (y < k ? -0.1 : 0.1);
  return y;
}

// A bool mask of `shape` with a fixed pattern (true twice in every three elements).
Tensor pattern_mask(const Shape& shape, const Device& device) {
  std::int64_t n = numel_of(shape);
  Vec v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[i] = (i % 3) != 1 ? 1.0 : 0.0;
  return ew::make(v, shape, kBool).to(device);
}

std::string number(double e) {
  std::ostringstream o;
  o << e;
  return o.str();
}

OpInfo entry(std::string name, std::function<Tensor(const Tensor&)> f, std::function<double(double)> ref,
             Domain dom = off_bounds) {
  OpInfo e;
  e.name = std::move(name);
  e.op = unary(std::move(f));
  e.ref = ref_unary(std::move(ref));
  e.samples = unary_samples;
  e.domains = {std::move(dom)};
  // within a few ulps of std:: math, on the vectorized path and the scalar one alike
  e.dtypes = {{kFloat64, {1e-300, 2e-15}, {0, 0}}, {kFloat32, {1e-7, 5e-7}, {1e-5, 1e-4}}};
  for (const DTypeTol& r : reduced_dtypes()) e.dtypes.push_back(r);
  return e;
}

// gelu's 1 + erf cancels for negative x: its few ulps are of 1, not of the result.
OpInfo cancelling(OpInfo e) {
  e.dtypes[0].values.atol = 1e-15;
  e.dtypes[1].values.atol = 2e-7;
  return e;
}

}  // namespace

std::vector<OpInfo> unary_ops() {
  std::vector<OpInfo> v = {
      entry(
          "neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }),
      entry(
          "neg operator", [](const Tensor& x) { return -x; }, [](double x) { return -x; }),
      entry(
          "exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }),
      entry(
          "log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, positive),
      entry(
          "sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, positive),
      entry(
          "rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); }, positive),
      entry(
          "abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::abs(x); }, away_from_zero),
      entry(
          "sign", [](const Tensor& x) { return sign(x); }, [](double x) { return double((x > 0) - (x < 0)); },
          away_from_zero),
      entry(
          "square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; }),
      entry(
          "reciprocal", [](const Tensor& x) { return reciprocal(x); }, [](double x) { return 1 / x; }, away_from_zero),
      entry(
          "sin", [](const Tensor& x) { return sin(x); }, [](double x) { return std::sin(x); }),
      entry(
          "cos", [](const Tensor& x) { return cos(x); }, [](double x) { return std::cos(x); }),
      entry(
          "erf", [](const Tensor& x) { return erf(x); }, [](double x) { return std::erf(x); }),
      entry(
          "tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }),
      entry(
          "sigmoid", [](const Tensor& x) { return sigmoid(x); }, sigmoid_ref),
      entry(
          "relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0.0; }, away_from_zero),
      cancelling(entry(
          "gelu", [](const Tensor& x) { return gelu(x); },
          [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); })),
      cancelling(entry(
          "gelu tanh", [](const Tensor& x) { return gelu(x, "tanh"); },
          [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * x * x * x))); })),
      entry(
          "silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x * sigmoid_ref(x); }),
      entry(
          "hardswish", [](const Tensor& x) { return hardswish(x); },
          [](double x) { return x <= -3  ? 0.0
                                : x >= 3 ? x
                                         : x * (x + 3) / 6; }, spread_off_kinks),
      entry(
          "clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); },
          [](double x) { return std::min(std::max(x, -0.5), 0.7); }),
      entry(
          "clamp min only", [](const Tensor& x) { return clamp(x, -0.5, std::nullopt); },
          [](double x) { return std::max(x, -0.5); }),
      entry(
          "clamp max only", [](const Tensor& x) { return clamp(x, std::nullopt, 0.7); },
          [](double x) { return std::min(x, 0.7); }),
      entry(
          "clamp_min", [](const Tensor& x) { return clamp_min(x, 0.25); }, [](double x) { return std::max(x, 0.25); }),
      entry(
          "clamp_max", [](const Tensor& x) { return clamp_max(x, -0.25); },
          [](double x) { return std::min(x, -0.25); }),
      entry(
          "pow method 0.5", [](const Tensor& x) { return x.pow(0.5); }, [](double x) { return std::sqrt(x); },
          positive),
  };
  // pow by a number: every exponent the kernels special-case, and general ones
  for (double e : {0.5, 2.0, -1.0, 3.0, 0.0, 1.0, 2.5, -1.5})
    v.push_back(entry(
        "pow " + number(e), [e](const Tensor& x) { return pow(x, e); }, [e](double x) { return std::pow(x, e); },
        positive));
  // masked_fill with a fixed pattern mask over the input's shape
  OpInfo mf = entry(
      "masked_fill", [](const Tensor& x) { return masked_fill(x, pattern_mask(x.shape(), x.device()), -3.0); },
      nullptr);
  mf.ref = [](const std::vector<Tensor>& in, const Kw&) {
    Tensor m = pattern_mask(in[0].shape(), Device::cpu());
    Vec x = in[0].contiguous().to_vector<double>(), mv = m.to_vector<double>();
    for (std::size_t i = 0; i < x.size(); ++i)
      if (mv[i] != 0) x[i] = -3.0;
    return ew::make(x, in[0].shape());
  };
  v.push_back(std::move(mf));
  return v;
}

}  // namespace opinfo
