// sum, mean, var, std beyond the op registry (tests/opinfo: values over any dims and keepdim,
// strided / permuted / expanded inputs, gradchecks, float32): every kernel path on larger
// inputs, size-0 and 0-D edge cases, integer dtypes, analytic gradients, errors.
#include "ew_helpers.hpp"

using namespace kiln;
using ew::Vec;

namespace {

using RedFn = std::function<Tensor(const Tensor&, const Dims&, bool)>;

struct RedCase {
  const char* name;
  RedFn op;
  std::function<double(const Vec&)> ref;
};

std::vector<RedCase> moment_cases() {
  return {
      {"sum", [](const Tensor& x, const Dims& d, bool k) { return sum(x, d, k); }, ew::r_sum},
      {"mean", [](const Tensor& x, const Dims& d, bool k) { return mean(x, d, k); }, ew::r_mean},
      {"var1", [](const Tensor& x, const Dims& d, bool k) { return var(x, d, 1, k); }, ew::r_var(1)},
      {"var0", [](const Tensor& x, const Dims& d, bool k) { return var(x, d, 0, k); }, ew::r_var(0)},
      {"std1", [](const Tensor& x, const Dims& d, bool k) { return kiln::std(x, d, 1, k); },
       [](const Vec& b) { return std::sqrt(ew::r_var(1)(b)); }},
      {"std0", [](const Tensor& x, const Dims& d, bool k) { return kiln::std(x, d, 0, k); },
       [](const Vec& b) { return std::sqrt(ew::r_var(0)(b)); }},
  };
}

}  // namespace

TEST_CASE("sum and mean: every kernel path on larger inputs / float64 and float32") {
  // (300, 257): reduce the contiguous dim, the strided dim (vectorized across the kept
  // dim), all of it (lane accumulators), and permuted (gather path); big enough to split
  // across threads.
  Shape s = {300, 257};
  Vec v = ew::randvals(s, 304);
  Tensor x = ew::make(v, s);
  for (const Dims& dims : std::vector<Dims>{{1}, {0}, {}, {0, 1}}) {
    INFO("dims " << shape_str(dims));
    ew::expect_values(sum(x, dims), ew::host_reduce(v, s, dims, ew::r_sum), 1e-10, 1e-12);
    ew::expect_values(mean(x, dims, true), ew::host_reduce(v, s, dims, ew::r_mean), 1e-12, 1e-12);
    Vec v32 = ew::as_f32(v);
    Tensor x32 = ew::make(v32, s, kFloat32);
    Tensor y32 = sum(x32, dims);
    CHECK(y32.dtype() == kFloat32);
    // float32 accumulation: allow ~sqrt(n) ulps of the running magnitude
    ew::expect_values(y32, ew::host_reduce(v32, s, dims, ew::r_sum), 2e-3, 1e-5);
    ew::expect_values(mean(x32, dims), ew::host_reduce(v32, s, dims, ew::r_mean), 1e-5, 1e-5);
  }
  Tensor xt = x.t();  // (257, 300), strides (1, 257)
  Vec lt = xt.contiguous().to_vector<double>();
  for (const Dims& dims : std::vector<Dims>{{0}, {1}, {}}) {
    INFO("transposed dims " << shape_str(dims));
    ew::expect_values(sum(xt, dims), ew::host_reduce(lt, {257, 300}, dims, ew::r_sum), 1e-10, 1e-12);
  }
  // 3-D with two reduced dims that cannot merge, and kept dims in between
  Shape s3 = {6, 40, 50};
  Vec v3 = ew::randvals(s3, 305);
  Tensor x3 = ew::make(v3, s3);
  for (const Dims& dims : std::vector<Dims>{{0, 2}, {0, 1}, {1, 2}, {1}}) {
    INFO("3-D dims " << shape_str(dims));
    ew::expect_values(sum(x3, dims), ew::host_reduce(v3, s3, dims, ew::r_sum), 1e-10, 1e-12);
    Tensor p = x3.permute({2, 0, 1});
    ew::expect_values(sum(p, dims), ew::host_reduce(p.contiguous().to_vector<double>(), p.shape(), dims, ew::r_sum),
                      1e-10, 1e-12);
  }
  // float32 sum of many equal values stays accurate with lane accumulators
  Tensor ones32 = ones({100000}, kFloat32);
  CHECK(sum(ones32).item<float>() == 100000.0f);
  ew::expect_values(mean(ones32), {1.0});
}

TEST_CASE("sum over leading rows adds each column's values in row order (float32, bit for bit)") {
  // 1027 rows (four at a time, then three) by 300 columns (256-wide blocks and a tail), as a
  // bias gradient; amax over the same rows keeps NaN.
  Shape s = {1027, 300};
  Vec v = ew::as_f32(ew::randvals(s, 306));
  Tensor x = ew::make(v, s, kFloat32);
  auto got = sum(x, {0}).to_vector<float>();
  for (std::int64_t c = 0; c < 300; ++c) {
    float acc = 0;
    for (std::int64_t r = 0; r < 1027; ++r) acc += static_cast<float>(v[static_cast<std::size_t>(r * 300 + c)]);
    REQUIRE(got[static_cast<std::size_t>(c)] == acc);
  }
  Tensor xn = x.clone();
  xn.select(0, 1025).select(0, 7).fill_(std::nan(""));
  auto mx = amax(xn, {0}).to_vector<float>();
  CHECK(std::isnan(mx[7]));
  CHECK(!std::isnan(mx[8]));
}

TEST_CASE("sum/mean/amax over shapes with size-1 and size-0 kept dims") {
  Shape s = {2, 1, 3, 1};
  Vec v = ew::randvals(s, 306);
  Tensor x = ew::make(v, s);
  for (const Dims& dims : std::vector<Dims>{{1}, {1, 3}, {0, 1}, {3}, {0, 2}, {-1, -3}, {}})
    for (bool keep : {false, true}) {
      INFO("dims " << shape_str(dims) << " keepdim " << keep);
      kt::expect_shape(sum(x, dims, keep), ew::reduced_shape(s, dims, keep));
      ew::expect_values(sum(x, dims, keep), ew::host_reduce(v, s, dims, ew::r_sum), 1e-12, 1e-12);
      ew::expect_values(mean(x, dims, keep), ew::host_reduce(v, s, dims, ew::r_mean), 1e-12, 1e-12);
      ew::expect_values(amax(x, dims, keep), ew::host_reduce(v, s, dims, ew::r_max), 0, 0);
    }
  // empty kept dim, non-empty reduced dim
  Tensor e = zeros({3, 0});
  kt::expect_shape(sum(e, {0}), {0});
  kt::expect_shape(mean(e, {0}, true), {1, 0});
  kt::expect_shape(amax(e, {0}), {0});
  kt::expect_shape(var(e, {0}), {0});
  kt::expect_shape(logsumexp(e, {0}), {0});
}

TEST_CASE("std: zero gradient where the standard deviation is 0 (constant input) / as torch") {
  Tensor x = ew::leaf_of({3.0, 3.0, 3.0, 1.0, 2.0, 4.0}, {2, 3});
  Tensor y = kiln::std(x, {1});
  ew::expect_values(y, {0, std::sqrt(7.0 / 3)}, 1e-12, 1e-12);
  sum(y).backward();
  double m = 7.0 / 3, sd = std::sqrt(7.0 / 3);
  ew::expect_values(x.grad(), {0, 0, 0, (1 - m) / (2 * sd), (2 - m) / (2 * sd), (4 - m) / (2 * sd)}, 1e-12, 1e-10);
  Tensor z = ew::leaf_of({5.0}, {1});
  kiln::std(z, {}, 0).backward();
  ew::expect_values(z.grad(), {0});
}

TEST_CASE("sum of int64 and bool gives int64 / float32 stays float32") {
  Tensor i = tensor({1, 2, 3, 4, 5, 6}).reshape({2, 3});
  Tensor s = sum(i);
  CHECK(s.dtype() == kInt64);
  CHECK(s.item<std::int64_t>() == 21);
  Tensor s0 = sum(i, {0});
  CHECK(s0.dtype() == kInt64);
  CHECK(s0.to_vector<std::int64_t>() == std::vector<std::int64_t>{5, 7, 9});
  CHECK(sum(i, {-1}, true).to_vector<std::int64_t>() == std::vector<std::int64_t>{6, 15});
  kt::expect_shape(sum(i, {-1}, true), {2, 1});
  // large int64 values sum exactly (beyond float64's 2^53)
  Tensor big = tensor({std::int64_t{1} << 60, std::int64_t{1}, std::int64_t{1}});
  CHECK(sum(big).item<std::int64_t>() == (std::int64_t{1} << 60) + 2);
  Tensor b = tensor({true, true, false, true});
  Tensor sb = sum(b);
  CHECK(sb.dtype() == kInt64);
  CHECK(sb.item<std::int64_t>() == 3);
  CHECK(sum(b.reshape({2, 2}), {1}).to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 1});
  // bool sums count past 1 (not a logical or) on a long run
  CHECK(sum(ones({1000}, kBool)).item<std::int64_t>() == 1000);
  CHECK(sum(ones({3}, kFloat32)).dtype() == kFloat32);
  CHECK(sum(i.t(), {0}).to_vector<std::int64_t>() == std::vector<std::int64_t>{6, 15});
  CHECK(sum(zeros({0}, kInt64)).item<std::int64_t>() == 0);
  CHECK(sum(zeros({0}, kBool)).dtype() == kInt64);
}

TEST_CASE("reductions of size-0 tensors") {
  Tensor e = zeros({0, 3}, kFloat64);
  Tensor s = sum(e);
  kt::expect_shape(s, {});
  ew::expect_values(s, {0});
  ew::expect_values(sum(e, {0}), {0, 0, 0});
  kt::expect_shape(sum(e, {1}), {0});
  kt::expect_shape(sum(e, {1}, true), {0, 1});
  kt::expect_shape(sum(e, {0}, true), {1, 3});
  ew::expect_values(mean(e), {ew::kNaN});
  ew::expect_values(mean(e, {0}), {ew::kNaN, ew::kNaN, ew::kNaN});
  kt::expect_shape(mean(e, {1}), {0});
  ew::expect_values(var(e, {0}), {ew::kNaN, ew::kNaN, ew::kNaN});
  ew::expect_values(mean(zeros({0}, kFloat32)), {ew::kNaN});
  ew::expect_values(sum(zeros({2, 0, 3}), {1}), Vec(6, 0.0));

  // backward through reductions of size-0 inputs gives size-0 gradients
  for (const auto& c : moment_cases())
    for (const Dims& dims : std::vector<Dims>{{}, {0}, {1}, {0, 1}}) {
      INFO(std::string(c.name) << " dims " << shape_str(dims));
      Tensor x = ew::leaf_of({}, {0, 3});
      Tensor y = c.op(x, dims, false);
      sum(y).backward();
      REQUIRE(x.grad().defined());
      kt::expect_shape(x.grad(), {0, 3});
      CHECK(x.grad().dtype() == kFloat64);
    }
}

TEST_CASE("reductions of 0-D tensors") {
  Tensor x = ew::make({2.5}, {});
  for (const Dims& dims : std::vector<Dims>{{}, {0}, {-1}}) {
    INFO("dims " << shape_str(dims));
    kt::expect_shape(sum(x, dims), {});
    ew::expect_values(sum(x, dims), {2.5});
    ew::expect_values(mean(x, dims), {2.5});
    kt::expect_shape(mean(x, dims, true), {});
    ew::expect_values(var(x, dims, 0), {0});
    ew::expect_values(var(x, dims, 1), {ew::kNaN});  // 0 / 0, as torch
    ew::expect_values(kiln::std(x, dims, 0), {0});
  }
  CHECK(sum(tensor({7}).reshape({})).item<std::int64_t>() == 7);
  CHECK_KILN_ERROR(sum(x, {1}), "[sum] dim 1 out of range for a 0-D tensor");
}

TEST_CASE("analytic gradients of sum / mean / var / std") {
  Vec v = {1.0, 4.0, 2.0, 8.0, 0.0, 3.0};  // rows {1,4,2}, {8,0,3}
  Tensor x = ew::leaf_of(v, {2, 3});
  sum(sum(x, {1}) * ew::make({1.0, 2.0}, {2})).backward();
  ew::expect_values(x.grad(), {1, 1, 1, 2, 2, 2});
  Tensor y = ew::leaf_of(v, {2, 3});
  mean(y).backward();
  ew::expect_values(y.grad(), Vec(6, 1.0 / 6));
  // d var / dx_i = 2 (x_i - m) / (n - correction)
  for (double corr : {0.0, 1.0}) {
    Tensor z = ew::leaf_of(v, {2, 3});
    sum(var(z, {1}, corr)).backward();
    Vec expect;
    for (int r = 0; r < 2; ++r) {
      double m = (v[3 * r] + v[3 * r + 1] + v[3 * r + 2]) / 3;
      for (int k = 0; k < 3; ++k) expect.push_back(2 * (v[3 * r + k] - m) / (3 - corr));
    }
    ew::expect_values(z.grad(), expect, 1e-12, 1e-12);
  }
  // float32 input keeps a float32 gradient
  Tensor f = ew::make(v, {2, 3}, kFloat32).requires_grad_();
  sum(mean(f, {0}) + kiln::std(f, {1}, 1, true)).backward();
  CHECK(f.grad().dtype() == kFloat32);
  kt::expect_shape(f.grad(), {2, 3});
}

TEST_CASE("sum/mean/var/std: errors") {
  Tensor x = zeros({2, 3});
  CHECK_KILN_ERROR(sum(x, {3}), "[sum] dim 3 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(sum(x, {-3}), "[sum] dim -3 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(mean(x, {2}), "[mean] dim 2 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(var(x, {5}), "[var] dim 5 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(kiln::std(x, {-4}), "dim -4 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(sum(x, {1, -1}), "[sum] dim 1 appears more than once");
  CHECK_KILN_ERROR(mean(tensor({1, 2})), "[mean] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(mean(tensor({true})), "[mean] expected a floating point tensor, got bool");
  CHECK_KILN_ERROR(var(tensor({1, 2})), "[var] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(kiln::std(tensor({1, 2})), "expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(sum(Tensor()), "[sum] input tensor is undefined");
  CHECK_KILN_ERROR(mean(Tensor()), "[mean] input tensor is undefined");
}
