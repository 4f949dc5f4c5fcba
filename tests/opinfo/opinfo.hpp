#pragma once
// The op registry (in the spirit of PyTorch's OpInfo): one entry per differentiable op says how
// to call it, which sample inputs to run it on, its float64 reference, the dtypes it runs in with
// their tolerances, and which checks apply. The drivers in test_opinfo.cpp turn every
// (op, check) pair into its own test case, named "opinfo <op>: <check>". tests/README.md shows
// how to add an entry.
#include <functional>
#include <string>
#include <vector>

#include "autograd/ew_helpers.hpp"

namespace opinfo {

using kiln::Dims;
using kiln::DType;
using kiln::Shape;
using kiln::Tensor;
using Vec = std::vector<double>;

/// |got - want| <= atol + rtol * |want|.
struct Tol {
  double atol, rtol;
};

/// A dtype an entry runs in: the tolerance of its values against the float64 reference, and of
/// its gradients against the float64 gradients (float64 itself: the gradcheck tolerance applies).
struct DTypeTol {
  DType dtype;
  Tol values;
  Tol grads;
};

/// Unit roundoff (half an ulp of 1) of bfloat16 and float16.
inline constexpr double kBFloat16Unit = 0x1p-8, kFloat16Unit = 0x1p-11;

/// The bfloat16 and float16 rows. Their inputs are rounded to the dtype and the float64 reference
/// runs on those same values; the op computes in float32 and rounds its result once, so values
/// are within `k` unit roundoffs u, relative (plus `k_abs` u absolute, for results that cancel);
/// gradients pass through a chain of rounded ops: `kg` u relative and absolute.
inline std::vector<DTypeTol> reduced_dtypes(double k = 1.05, double k_abs = 0.01, double kg = 6) {
  std::vector<DTypeTol> out;
  for (auto [dt, u] : {std::pair{kiln::kBFloat16, kBFloat16Unit}, std::pair{kiln::kFloat16, kFloat16Unit}})
    out.push_back({dt, {k_abs * u, k * u}, {kg * u, kg * u}});
  return out;
}

/// The dtypes every entry runs in unless it lists its own: float64, float32, bfloat16, float16
/// (in this order: entries adjust rows 0 and 1); an entry that needs other bounds overrides
/// `dtypes`.
inline std::vector<DTypeTol> default_dtypes() {
  std::vector<DTypeTol> d = {{kiln::kFloat64, {1e-12, 1e-12}, {0, 0}}, {kiln::kFloat32, {2e-6, 2e-5}, {1e-5, 1e-4}}};
  for (const DTypeTol& r : reduced_dtypes()) d.push_back(r);
  return d;
}

/// How a sample input is laid out in memory. Every layout but Contiguous is a view of a larger
/// or differently ordered buffer: Permuted stores the dims reversed, Sliced takes every other
/// element of the last dim and skips the first row of the others, Expanded broadcasts dim 0 from
/// size 1 (stride 0; values only, as a finite difference there would move a whole column).
enum class Layout { Contiguous, Permuted, Sliced, Expanded };

const char* layout_name(Layout l);

struct Arg {
  Shape shape;
  Layout layout = Layout::Contiguous;
};

/// Arguments other than tensors that a sample passes to the op (reduction dims, keepdim).
struct Kw {
  Dims dims;
  bool keepdim = false;
};

struct Sample {
  std::vector<Arg> args;
  Kw kw;
  bool grad = true;  // also used for gradcheck / gradgradcheck (small enough, no stride 0)
};

std::string describe(const Sample& s);

using OpFn = std::function<Tensor(const std::vector<Tensor>&, const Kw&)>;
using Domain = std::function<double(double)>;

struct OpInfo {
  std::string name;
  OpFn op;
  /// The expected result (values and shape, float64) computed on the host from the sample's
  /// inputs converted to contiguous float64; never by the kiln op under test.
  OpFn ref;
  std::function<std::vector<Sample>()> samples;
  /// Per input: maps seeded normal values into the op's domain, away from kinks and poles.
  std::vector<Domain> domains = {};
  std::vector<DTypeTol> dtypes = default_dtypes();
  Tol grad_tol = {1e-5, 1e-3};
  bool gradgrad = true;  // the backward is itself differentiable (gradgradcheck)
  /// The grad samples gradgradcheck uses (all when unset): where a second derivative is undefined.
  std::function<bool(const Sample&)> gradgrad_on = nullptr;
  bool cuda = true;  // has a CUDA kernel to compare with the CPU
};

/// Every entry: unary_ops(), binary_ops(), reduction_ops().
const std::vector<OpInfo>& registry();
std::vector<OpInfo> unary_ops();
std::vector<OpInfo> binary_ops();
std::vector<OpInfo> reduction_ops();

/// Input `i` of sample `s` of `op` in dtype `dt` on `device`: the same values (from a seed) and
/// the same strides on every device; with `requires_grad` the buffer is a leaf and the input
/// its view.
Tensor make_input(const OpInfo& op, const Sample& s, std::size_t i, DType dt,
                  const kiln::Device& device = kiln::Device::cpu(), bool requires_grad = false);

// Building blocks for entries.
OpFn unary(std::function<Tensor(const Tensor&)> f);
OpFn binary(std::function<Tensor(const Tensor&, const Tensor&)> f);
OpFn ref_unary(std::function<double(double)> f);
OpFn ref_binary(std::function<double(double, double)> f);
OpFn ref_reduce(std::function<double(const Vec&)> r);
std::vector<Sample> unary_samples();
std::vector<Sample> binary_samples();
/// Reductions over kw.dims; `empty_dims`: reducing over a size-0 dim is allowed (sum, not amax).
std::vector<Sample> reduction_samples(bool empty_dims);

}  // namespace opinfo
