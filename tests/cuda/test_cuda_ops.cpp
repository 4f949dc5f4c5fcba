// The op table on the GPU (ggml test-backend-ops style): every elementwise, reduction,
// matmul and index op on a table of shapes and layouts (contiguous, permuted, sliced,
// broadcast), compared with the CPU backend's result.
#include "cuda/cuda_test_util.hpp"

#include <limits>

using namespace kiln;
using kc::kGpu;
using kc::Pair;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

namespace {

const std::vector<DType> kFloats = {kFloat32, kFloat64};
const std::vector<DType> kAll = {kBool, kInt64, kFloat32, kFloat64};
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Runs body(dtype, layout, shape, seed) over the whole table.
template <typename Body>
void for_table(const std::vector<DType>& dts, Body&& body) {
  std::uint64_t seed = 1;
  for (DType dt : dts)
    for (const auto& l : kc::layouts())
      for (const Shape& s : kc::table_shapes()) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(s));
        body(dt, l, s, seed++);
      }
}

// Special values in every position class: NaN, +-inf, +-0, tiny and huge.
Pair specials(DType dt) {
  Tensor c = tensor({kNaN, kInf, -kInf, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 0.5, -0.5, 3.0}, TensorOptions(dt));
  return {c, c.to(kGpu)};
}

// Elements of a 16-bit GEMM result farther from ref (the float64 result rounded to the dtype)
// than 2 u |ref| plus float32 summation's error on mag (the sum of |products|).
int lowp_gemm_misses(const std::vector<double>& got, const std::vector<double>& ref, const std::vector<double>& mag,
                     double u) {
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    bad += std::abs(got[i] - ref[i]) > 2 * u * std::abs(ref[i]) + 1e-6 * mag[i];
  return bad;
}
}  // namespace

TEST_CASE("cuda ops: unary float ops match the CPU on the layout table") {
  KILN_CUDA_OR_SKIP();
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"neg", [](auto& x) { return neg(x[0]); }},
      {"exp", [](auto& x) { return exp(x[0]); }},
      {"log", [](auto& x) { return log(abs(x[0]) + 0.1); }},
      {"sqrt", [](auto& x) { return sqrt(abs(x[0])); }},
      {"rsqrt", [](auto& x) { return rsqrt(abs(x[0]) + 0.1); }},
      {"abs", [](auto& x) { return abs(x[0]); }},
      {"sign", [](auto& x) { return sign(x[0]); }},
      {"square", [](auto& x) { return square(x[0]); }},
      {"reciprocal", [](auto& x) { return reciprocal(x[0] + 5.0); }},
      {"sin", [](auto& x) { return sin(x[0]); }},
      {"cos", [](auto& x) { return cos(x[0]); }},
      {"erf", [](auto& x) { return erf(x[0]); }},
      {"tanh", [](auto& x) { return tanh(x[0]); }},
      {"sigmoid", [](auto& x) { return sigmoid(x[0]); }},
      {"relu", [](auto& x) { return relu(x[0]); }},
      {"gelu", [](auto& x) { return gelu(x[0]); }},
      {"gelu_tanh", [](auto& x) { return gelu(x[0], "tanh"); }},
      {"silu", [](auto& x) { return silu(x[0]); }},
      {"pow2", [](auto& x) { return pow(x[0], 2.0); }},
      {"pow_half", [](auto& x) { return pow(abs(x[0]), 0.5); }},
      {"pow3.3", [](auto& x) { return pow(abs(x[0]), 3.3); }},
      {"clamp", [](auto& x) { return clamp(x[0], -0.5, 0.7); }},
      {"clamp_min", [](auto& x) { return clamp_min(x[0], 0.25); }},
      {"isnan", [](auto& x) { return isnan(x[0]); }},
      {"isfinite", [](auto& x) { return isfinite(x[0]); }},
      {"logical_not", [](auto& x) { return logical_not(x[0]); }},
  };
  for_table(kFloats, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed);
    for (const auto& [name, fn] : ops) kc::check_op(name, fn, {x}, kc::rtol_for(dt), kc::atol_for(dt));
  });
  for (DType dt : kFloats)
    for (const auto& [name, fn] : ops) {
      CAPTURE(dtype_name(dt));
      kc::check_op(std::string(name) + " on NaN/inf/0", fn, {specials(dt)}, kc::rtol_for(dt), kc::atol_for(dt));
    }
}

TEST_CASE("cuda ops: unary gradients match the CPU") {
  KILN_CUDA_OR_SKIP();
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"tanh", [](auto& x) { return tanh(x[0]); }},
      {"gelu", [](auto& x) { return gelu(x[0]); }},
      {"gelu_tanh", [](auto& x) { return gelu(x[0], "tanh"); }},
      {"silu", [](auto& x) { return silu(x[0]); }},
      {"sigmoid", [](auto& x) { return sigmoid(x[0]); }},
      {"relu", [](auto& x) { return relu(x[0]); }},
      {"hardswish", [](auto& x) { return hardswish(x[0] * 3.0); }},
      {"exp", [](auto& x) { return exp(x[0]); }},
      {"sqrt", [](auto& x) { return sqrt(abs(x[0]) + 1.0); }},
      {"clamp", [](auto& x) { return clamp(x[0], -0.5, 0.7); }},
  };
  for (DType dt : kFloats)
    for (const auto& l : kc::layouts()) {
      CAPTURE(dtype_name(dt));
      CAPTURE(l.name);
      Pair x = kc::make_pair(l, {4, 9}, dt, 5);
      for (const auto& [name, fn] : ops) kc::check_grads(name, fn, {x}, kc::rtol_for(dt), kc::atol_for(dt));
    }
}

TEST_CASE("cuda ops: integer and bool unary ops match the CPU") {
  KILN_CUDA_OR_SKIP();
  for_table({kInt64}, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed, -5, 5);
    kc::check_op(
        "neg", [](auto& v) { return neg(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "abs", [](auto& v) { return abs(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "sign", [](auto& v) { return sign(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "square", [](auto& v) { return square(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "relu", [](auto& v) { return relu(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "pow3", [](auto& v) { return pow(v[0], 3); }, {x}, 0, 0);
    kc::check_op(
        "clamp", [](auto& v) { return clamp(v[0], -2.0, 3.0); }, {x}, 0, 0);
    kc::check_op(
        "logical_not", [](auto& v) { return logical_not(v[0]); }, {x}, 0, 0);
  });
  for_table({kBool}, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed);
    kc::check_op(
        "logical_not", [](auto& v) { return logical_not(v[0]); }, {x}, 0, 0);
    kc::check_op(
        "~", [](auto& v) { return ~v[0]; }, {x}, 0, 0);
  });
}

TEST_CASE("cuda ops: binary ops and comparisons and where match the CPU with mixed layouts") {
  KILN_CUDA_OR_SKIP();
  const auto ls = kc::layouts();
  std::uint64_t seed = 100;
  for (DType dt : kAll)
    for (std::size_t i = 0; i < ls.size(); ++i)
      for (const Shape& s : kc::table_shapes()) {
        CAPTURE(dtype_name(dt));
        CAPTURE(ls[i].name);
        CAPTURE(shape_str(s));
        Pair x = kc::make_pair(ls[i], s, dt, seed++, -3, 3);
        Pair y = kc::make_pair(ls[(i + 1) % ls.size()], s, dt, seed++, -3, 3);
        Pair c = kc::make_pair(ls[(i + 2) % ls.size()], s, kBool, seed++);
        const double rt = is_floating(dt) ? kc::rtol_for(dt) : 0, at = is_floating(dt) ? kc::atol_for(dt) : 0;
        kc::check_op(
            "eq", [](auto& v) { return eq(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "lt", [](auto& v) { return lt(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "ge", [](auto& v) { return ge(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "ne", [](auto& v) { return ne(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "where", [](auto& v) { return where(v[2], v[0], v[1]); }, {x, y, c}, 0, 0);
        kc::check_op(
            "logical_and", [](auto& v) { return logical_and(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "logical_or", [](auto& v) { return logical_or(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "maximum", [](auto& v) { return maximum(v[0], v[1]); }, {x, y}, 0, 0);
        kc::check_op(
            "minimum", [](auto& v) { return minimum(v[0], v[1]); }, {x, y}, 0, 0);
        if (dt == kBool) continue;
        kc::check_op(
            "add", [](auto& v) { return add(v[0], v[1]); }, {x, y}, rt, at);
        kc::check_op(
            "sub", [](auto& v) { return sub(v[0], v[1], 2); }, {x, y}, rt, at);
        kc::check_op(
            "mul", [](auto& v) { return mul(v[0], v[1]); }, {x, y}, rt, at);
        kc::check_op(
            "div", [](auto& v) { return div(v[0], v[1]); }, {x, y}, rt, at);  // int: x / 0 == 0
        kc::check_op(
            "masked_fill", [](auto& v) { return masked_fill(v[0], v[2], 7); }, {x, y, c}, 0, 0);
        if (dt == kInt64)
          kc::check_op(
              "pow", [](auto& v) { return pow(v[0], abs(v[1])); }, {x, y}, 0, 0);
        else
          kc::check_op(
              "pow", [](auto& v) { return pow(abs(v[0]) + 0.5, v[1]); }, {x, y}, rt, at);
      }
  // NaN propagation of maximum / minimum, comparisons with NaN and infinities.
  for (DType dt : kFloats) {
    CAPTURE(dtype_name(dt));
    Pair a = specials(dt);
    Tensor rolled = cat({a.cpu.slice(0, 5, 12), a.cpu.slice(0, 0, 5)});
    Pair b{rolled, rolled.to(kGpu)};
    for (const auto& [name, fn] :
         std::vector<std::pair<const char*, Fn>>{{"maximum", [](auto& v) { return maximum(v[0], v[1]); }},
                                                 {"minimum", [](auto& v) { return minimum(v[0], v[1]); }},
                                                 {"add", [](auto& v) { return add(v[0], v[1]); }},
                                                 {"mul", [](auto& v) { return mul(v[0], v[1]); }},
                                                 {"div", [](auto& v) { return div(v[0], v[1]); }},
                                                 {"pow", [](auto& v) { return pow(v[0], v[1]); }},
                                                 {"lt", [](auto& v) { return lt(v[0], v[1]); }},
                                                 {"eq", [](auto& v) { return eq(v[0], v[1]); }}})
      kc::check_op(name, fn, {a, b}, kc::rtol_for(dt), kc::atol_for(dt));
  }
}

TEST_CASE("cuda ops: binary gradients with broadcasting match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats) {
    CAPTURE(dtype_name(dt));
    Generator g(3);
    Tensor xc = randn({4, 1, 5}, dt, &g), yc = randn({3, 1}, dt, &g) + 3.0;
    Pair x{xc, xc.to(kGpu)}, y{yc, yc.to(kGpu)};
    kc::check_grads(
        "add", [](auto& v) { return v[0] + v[1]; }, {x, y}, kc::rtol_for(dt), kc::atol_for(dt));
    kc::check_grads(
        "mul", [](auto& v) { return v[0] * v[1]; }, {x, y}, kc::rtol_for(dt), kc::atol_for(dt));
    kc::check_grads(
        "div", [](auto& v) { return v[0] / v[1]; }, {x, y}, kc::rtol_for(dt), kc::atol_for(dt));
    kc::check_grads(
        "pow", [](auto& v) { return pow(v[1], v[0]); }, {x, y}, kc::rtol_for(dt) * 10, kc::atol_for(dt));
    kc::check_grads(
        "maximum", [](auto& v) { return maximum(v[0], v[1] - 3.0); }, {x, y}, kc::rtol_for(dt), kc::atol_for(dt));
  }
}

TEST_CASE("cuda ops: casts between every pair of dtypes match the CPU") {
  KILN_CUDA_OR_SKIP();
  for_table(kAll, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed, -3, 3);
    for (DType to_dt : kAll) {
      CAPTURE(dtype_name(to_dt));
      kc::check_op(
          "to", [to_dt](auto& v) { return v[0].to(to_dt); }, {x}, 0, 0);
    }
    kc::check_op(
        "contiguous", [](auto& v) { return v[0].contiguous(); }, {x}, 0, 0);
  });
  for (DType dt : kFloats) {  // float -> int truncates toward zero; NaN -> bool is true
    Pair x = kc::make_pair(kc::layouts()[0], {64}, dt, 8, -1e6, 1e6);
    kc::check_op(
        "to int64", [](auto& v) { return v[0].to(kInt64); }, {x}, 0, 0);
    Pair sp = specials(dt);
    kc::check_op(
        "to bool", [](auto& v) { return v[0].to(kBool); }, {sp}, 0, 0);
  }
}

TEST_CASE("cuda ops: shape ops (cat / stack / chunk / slicing backward) match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kAll) {
    CAPTURE(dtype_name(dt));
    Pair a = kc::make_pair(kc::layouts()[1], {3, 4, 5}, dt, 1), b = kc::make_pair(kc::layouts()[2], {3, 2, 5}, dt, 2);
    kc::check_op(
        "cat",
        [](auto& v) {
          return cat({v[0], v[1]}, 1);
        },
        {a, b}, 0, 0);
    kc::check_op(
        "stack",
        [](auto& v) {
          return stack({v[0], v[0]}, 2);
        },
        {a}, 0, 0);
    kc::check_op(
        "chunk", [](auto& v) { return chunk(v[0], 2, 2)[1].contiguous(); }, {a}, 0, 0);
  }
  for (DType dt : kFloats) {
    Pair a = kc::make_pair(kc::layouts()[0], {6, 7}, dt, 4);
    kc::check_grads(
        "slice", [](auto& v) { return v[0].slice(1, 1, 7, 3).narrow(0, 2, 3); }, {a}, 0, 0);
    kc::check_grads(
        "cat",
        [](auto& v) {
          return cat({v[0], v[0].t()}, 0);
        },
        {kc::make_pair(kc::layouts()[0], {5, 5}, dt, 4)}, 0, 0);
  }
}

TEST_CASE("cuda ops: reductions over every dim set match the CPU") {
  KILN_CUDA_OR_SKIP();
  const std::vector<Dims> dim_sets = {{}, {0}, {-1}, {0, -1}};
  for_table({kInt64, kFloat32, kFloat64}, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed, -4, 4);
    const double rt = is_floating(dt) ? kc::rtol_for(dt) * 10 : 0, at = is_floating(dt) ? kc::atol_for(dt) * 10 : 0;
    for (const Dims& d : dim_sets) {
      if (s.size() < d.size()) continue;
      CAPTURE(d.size());
      for (bool keep : {false, true}) {
        kc::check_op(
            "sum", [&](auto& v) { return sum(v[0], d, keep); }, {x}, rt, at);
        if (x.cpu.numel() == 0) continue;
        if (is_floating(dt))
          kc::check_op(
              "mean", [&](auto& v) { return mean(v[0], d, keep); }, {x}, rt, at);
        kc::check_op(
            "amax", [&](auto& v) { return amax(v[0], d, keep); }, {x}, 0, 0);
        kc::check_op(
            "amin", [&](auto& v) { return amin(v[0], d, keep); }, {x}, 0, 0);
        if (is_floating(dt)) {
          kc::check_op(
              "var", [&](auto& v) { return var(v[0], d, 1, keep); }, {x}, rt, at);
          kc::check_op(
              "logsumexp", [&](auto& v) { return logsumexp(v[0], d, keep); }, {x}, rt, at);
        }
      }
    }
    if (x.cpu.numel() > 0 && !s.empty()) {
      for (std::int64_t dim : {std::int64_t{0}, std::int64_t{-1}}) {
        kc::check_op(
            "max.values", [&](auto& v) { return max(v[0], dim).values; }, {x}, 0, 0);
        kc::check_op(
            "max.indices", [&](auto& v) { return max(v[0], dim).indices; }, {x}, 0, 0);  // first of ties
        kc::check_op(
            "argmin", [&](auto& v) { return argmin(v[0], dim); }, {x}, 0, 0);
      }
    }
  });
  for_table({kBool}, [&](DType dt, const kc::Layout& l, const Shape& s, std::uint64_t seed) {
    Pair x = kc::make_pair(l, s, dt, seed);
    kc::check_op(
        "any", [](auto& v) { return any(v[0]); }, {x}, 0, 0);
    if (!s.empty())
      kc::check_op(
          "all(-1)", [](auto& v) { return all(v[0], {-1}); }, {x}, 0, 0);
  });
}

TEST_CASE("cuda ops: long and wide and NaN-holding reductions match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats) {
    CAPTURE(dtype_name(dt));
    // Sums of n values in [-2, 2) in another order: absolute differences grow with n (float32).
    const double rt = dt == kFloat32 ? 1e-5 : 1e-12;
    auto at = [dt](double n) { return dt == kFloat32 ? 2e-7 * n : 1e-14 * n; };
    Pair rows = kc::make_pair(kc::layouts()[0], {3, 200001}, dt, 1);  // few long rows: split into chunks
    kc::check_op(
        "sum rows", [](auto& v) { return sum(v[0], {-1}); }, {rows}, rt, at(200001));
    kc::check_op(
        "amax rows", [](auto& v) { return amax(v[0], {-1}); }, {rows}, 0, 0);
    Pair cols = kc::make_pair(kc::layouts()[0], {4099, 300}, dt, 2);  // column sums: one thread per output
    kc::check_op(
        "sum cols", [](auto& v) { return sum(v[0], {0}); }, {cols}, rt, at(4099));
    kc::check_op(
        "mean cols", [](auto& v) { return mean(v[0], {0}); }, {cols}, rt, at(1));
    Pair tall = kc::make_pair(kc::layouts()[0], {70001, 2}, dt, 3);  // strided long reduction, split
    kc::check_op(
        "sum tall", [](auto& v) { return sum(v[0], {0}); }, {tall}, rt, at(70001));
    kc::check_op(
        "argmax tall", [](auto& v) { return argmax(v[0], 0); }, {tall}, 0, 0);
    Pair all_of = kc::make_pair(kc::layouts()[1], {513, 1027}, dt, 4);  // everything, permuted
    kc::check_op(
        "sum all", [](auto& v) { return sum(v[0]); }, {all_of}, rt, at(513 * 1027));
    Pair sp = specials(dt);
    kc::check_op(
        "amax NaN", [](auto& v) { return amax(v[0]); }, {sp}, 0, 0);
    kc::check_op(
        "argmax NaN", [](auto& v) { return argmax(v[0]); }, {sp}, 0, 0);
    kc::check_op(
        "argmin NaN", [](auto& v) { return argmin(v[0], 0); }, {sp}, 0, 0);
    kc::check_op(
        "sum inf", [](auto& v) { return sum(v[0].slice(0, 1, 2)); }, {sp}, 0, 0);
  }
  Pair ints = kc::make_pair(kc::layouts()[0], {5, 100003}, kInt64, 9, -1000, 1000);
  kc::check_op(
      "int64 sum exact", [](auto& v) { return sum(v[0], {-1}); }, {ints}, 0, 0);
  kc::check_op(
      "int64 argmax ties", [](auto& v) { return argmax(v[0] / 300, 1); }, {ints}, 0, 0);
}

TEST_CASE("cuda ops: reduction gradients match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (const auto& l : kc::layouts()) {
      CAPTURE(dtype_name(dt));
      CAPTURE(l.name);
      Pair x = kc::make_pair(l, {3, 4, 5}, dt, 6);
      kc::check_grads(
          "sum", [](auto& v) { return sum(v[0], {1}); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
      kc::check_grads(
          "mean",
          [](auto& v) {
            return mean(v[0], {0, 2}, true);
          },
          {x}, kc::rtol_for(dt), kc::atol_for(dt));
      kc::check_grads(
          "amax", [](auto& v) { return amax(v[0], {-1}); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
      kc::check_grads(
          "std", [](auto& v) { return kiln::std(v[0], {-1}); }, {x}, kc::rtol_for(dt) * 10, kc::atol_for(dt) * 10);
      kc::check_grads(
          "logsumexp", [](auto& v) { return logsumexp(v[0], {1}); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
    }
}

TEST_CASE("cuda ops: matmul matches the CPU for 1-D / 2-D / batched / broadcast / strided operands") {
  KILN_CUDA_OR_SKIP();
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {{{7}, {7}},           {{5, 7}, {7}},       {{7}, {7, 3}},
                                   {{33, 65}, {65, 17}}, {{4, 5, 6}, {6, 7}}, {{2, 1, 3, 4}, {5, 4, 6}},
                                   {{3, 0}, {0, 4}},     {{1, 1}, {1, 1}},    {{128, 256}, {256, 96}}};
  for (DType dt : {kFloat32, kFloat64, kInt64})
    for (const auto& l : kc::layouts())
      for (const Case& c : cases) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(c.a));
        CAPTURE(shape_str(c.b));
        Pair a = kc::make_pair(l, c.a, dt, 1, -3, 3), b = kc::make_pair(kc::layouts()[0], c.b, dt, 2, -3, 3);
        const double tol = dt == kFloat32 ? 1e-5 : dt == kFloat64 ? 1e-12 : 0;
        kc::check_op(
            "a @ b", [](auto& v) { return matmul(v[0], v[1]); }, {a, b}, tol, tol * 10);
        if (c.a.size() >= 2 && c.b.size() >= 2) {  // the second operand transposed / sliced too
          Pair bt{b.cpu.mT().contiguous().mT(), b.gpu.mT().contiguous().mT()};
          kc::check_op(
              "a @ b (b column-major)", [](auto& v) { return matmul(v[0], v[1]); }, {a, bt}, tol, tol * 10);
        }
      }
  for (DType dt : kFloats) {
    Pair a = kc::make_pair(kc::layouts()[2], {3, 9, 10}, dt, 3), b = kc::make_pair(kc::layouts()[1], {10, 4}, dt, 4);
    kc::check_grads(
        "matmul", [](auto& v) { return matmul(v[0], v[1]); }, {a, b}, kc::rtol_for(dt) * 10, kc::atol_for(dt) * 10);
  }
}

TEST_CASE("cuda ops: bfloat16/float16 matmul (cuBLAS, float32 compute) is the float32 product rounded once") {
  KILN_CUDA_OR_SKIP();
  // Both sides start from the same 16-bit values: the reference is the CPU's float64 product of
  // them, rounded once to the dtype. The GPU accumulates in float32 (order unknown), so it may
  // round to the neighbouring 16-bit value: 2u |ref| plus float32's error on sum |a| |b|.
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{5, 7}, {7}}, {{33, 65}, {65, 17}}, {{4, 5, 6}, {6, 7}}, {{2, 1, 3, 4}, {5, 4, 6}}, {{128, 256}, {256, 96}}};
  for (DType dt : {kBFloat16, kFloat16}) {
    const double u = dt == kBFloat16 ? 0x1p-8 : 0x1p-11;
    for (const auto& l : kc::layouts())
      for (const auto& [sa, sb] : cases) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(sa));
        Pair a = kc::make_pair(l, sa, dt, 5, -3, 3), b = kc::make_pair(kc::layouts()[0], sb, dt, 6, -3, 3);
        const Tensor out = matmul(a.gpu, b.gpu);
        CHECK(out.dtype() == dt);
        const Tensor a64 = a.cpu.to(kFloat64), b64 = b.cpu.to(kFloat64);
        const auto ref = matmul(a64, b64).to(dt).to_vector<double>();
        const auto mag = matmul(a64.abs(), b64.abs()).to_vector<double>();
        const auto got = out.to(Device::cpu()).to_vector<double>();
        REQUIRE(got.size() == ref.size());
        CHECK(lowp_gemm_misses(got, ref, mag, u) == 0);
      }
  }
}

// x @ w^T = 1 + 3u/8 and b = u/2 (u: the 16-bit spacing at 1). Rounded once, the sum 1 + 7u/8
// gives 1 + u; rounding the product first gives 1, and then 1 + u/2 ties to even: 1 (the CPU's
// test in tests/core/test_gemm_lowp.cpp, here on cuBLASLt's bias epilogue).
TEST_CASE("cuda ops: bfloat16/float16 linear adds the bias in float32 before the one rounding") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kBFloat16, kFloat16}) {
    CAPTURE(dtype_name(dt));
    const double u = dt == kBFloat16 ? 0x1p-7 : 0x1p-10;
    Tensor x = tensor({1.0, 3 * u / 8}).reshape({1, 2}).to(dt).to(kGpu);
    Tensor w = ones({1, 2}).to(dt).to(kGpu), b = tensor({u / 2}).to(dt).to(kGpu);
    Tensor y = linear(x.expand({5, 2}), w, b);
    REQUIRE(y.dtype() == dt);
    for (double v : y.to(Device::cpu()).to(kFloat64).to_vector<double>()) CHECK(v == 1 + u);
    // Batched on the backend with one weight for every item (batch stride 0), an input starting
    // one element into its storage (2-byte aligned) and a strided bias: the float64 product plus
    // bias, rounded once, up to float32 summation (as the matmul case).
    Generator g(5);
    Tensor a = randn({3, 20, 34}, kFloat32, &g).to(dt).narrow(2, 1, 33), c = randn({33, 24}, kFloat32, &g).to(dt);
    Tensor bias = randn({48}, kFloat32, &g).to(dt).to(kGpu).slice(0, 0, 48, 2);
    Tensor cg = c.to(kGpu), out = empty({3, 20, 24}, TensorOptions().dtype(dt).device(kGpu));
    Tensor ag = empty({3, 20, 34}, TensorOptions().dtype(dt).device(kGpu)).narrow(2, 1, 33);
    ag.copy_(a.to(kGpu));
    backend_for(kGpu).matmul_bias(ag, Tensor::make_view(cg, {3, 33, 24}, {0, 24, 1}, cg.offset()), bias, out);
    const Tensor a64 = a.to(kFloat64), c64 = c.to(kFloat64), b64 = bias.to(Device::cpu()).to(kFloat64);
    const auto ref = (matmul(a64, c64) + b64).to(dt).to_vector<double>();
    const auto mag = (matmul(a64.abs(), c64.abs()) + b64.abs()).to_vector<double>();
    const auto got = out.to(Device::cpu()).to_vector<double>();
    REQUIRE(got.size() == ref.size());
    CHECK(lowp_gemm_misses(got, ref, mag, u) == 0);
  }
}

TEST_CASE("cuda ops: TF32 matmul is opt-in and stays within TF32 precision") {
  KILN_CUDA_OR_SKIP();
  Pair a = kc::make_pair(kc::layouts()[0], {256, 512}, kFloat32, 1),
       b = kc::make_pair(kc::layouts()[0], {512, 128}, kFloat32, 2);
  CHECK(!cuda::allow_tf32());
  const Tensor exact = matmul(a.cpu.to(kFloat64), b.cpu.to(kFloat64));
  kc::expect_match(matmul(a.gpu, b.gpu).to(kFloat64), exact, 1e-5, 1e-4, "fp32");
  cuda::set_allow_tf32(true);
  Tensor tf = matmul(a.gpu, b.gpu);
  cuda::set_allow_tf32(false);
  kc::expect_match(tf.to(kFloat64), exact, 5e-3, 5e-2, "tf32");  // 10-bit mantissa products over K = 512
}

TEST_CASE("cuda ops: index_select / index_add / gather / scatter_add / embedding match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kAll)
    for (const auto& l : kc::layouts()) {
      CAPTURE(dtype_name(dt));
      CAPTURE(l.name);
      Pair x = kc::make_pair(l, {6, 5, 7}, dt, 1, -4, 4);
      Tensor ic = tensor({4, 0, 4, 2, 1}, TensorOptions(kInt64));  // duplicates on purpose
      Pair idx{ic, ic.to(kGpu)};
      for (std::int64_t dim : {0, 1, 2})
        kc::check_op(
            "index_select", [dim](auto& v) { return index_select(v[0], dim, v[1]); }, {x, idx}, 0, 0);
      Pair src = kc::make_pair(l, {6, 5, 7}, dt, 2, -4, 4);
      Pair rows = kc::make_pair(kc::layouts()[0], {5, 5, 7}, dt, 3, -4, 4);
      const double tol = dt == kFloat32 ? 1e-5 : dt == kFloat64 ? 1e-12 : 0;  // atomics add in any order
      kc::check_op(
          "index_add", [](auto& v) { return index_add(v[0], 0, v[1], v[2]); }, {x, idx, rows}, tol, tol);
      Generator g(4);
      Tensor gi = randint(0, 5, {6, 3, 7}, kInt64, &g);
      Pair gidx{gi, gi.to(kGpu)};
      Pair gs = kc::make_pair(kc::layouts()[0], {6, 3, 7}, dt, 5, -4, 4);
      kc::check_op(
          "gather", [](auto& v) { return gather(v[0], 1, v[1]); }, {x, gidx}, 0, 0);
      kc::check_op(
          "scatter_add", [](auto& v) { return scatter_add(v[0], 1, v[1], v[2]); }, {x, gidx, gs}, tol, tol);
      Pair gperm{gi.permute({2, 0, 1}), gi.to(kGpu).permute({2, 0, 1})};  // a non-contiguous index
      kc::check_op(
          "gather (permuted index)",
          [](auto& v) {
            return gather(v[0].permute({2, 0, 1}), 2, v[1]);
          },
          {x, gperm}, 0, 0);
    }
  for (DType dt : kFloats) {
    CAPTURE(dtype_name(dt));
    Pair w = kc::make_pair(kc::layouts()[0], {11, 6}, dt, 1);
    Generator g(2);
    Tensor ids = randint(0, 11, {4, 9}, kInt64, &g);
    Pair id{ids, ids.to(kGpu)};
    kc::check_op(
        "embedding", [](auto& v) { return embedding(v[1], v[0]); }, {w, id}, 0, 0);
    kc::check_grads(
        "embedding", [](auto& v) { return embedding(v[1], v[0]); }, {w, id}, kc::rtol_for(dt), kc::atol_for(dt));
    Pair x = kc::make_pair(kc::layouts()[1], {5, 8}, dt, 3);
    Tensor gi = randint(0, 5, {3, 8}, kInt64, &g);
    Pair gidx{gi, gi.to(kGpu)};
    kc::check_grads(
        "gather", [](auto& v) { return gather(v[0], 0, v[1]); }, {x, gidx}, kc::rtol_for(dt), kc::atol_for(dt));
  }
  // Range checks run on the device too.
  Tensor x = zeros({3, 4}, kGpu);
  CHECK_KILN_ERROR(index_select(x, 0, tensor({0, 3}).to(kGpu)),
                   "[index_select] index 3 is out of range for dim 0 of size 3");
}
