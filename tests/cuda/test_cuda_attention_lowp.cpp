// bfloat16 / float16 fused attention on the GPU (tensor-core kernels of core/cuda/attention_tc.cu
// on sm_80+) against the float32 kernels run on the same rounded inputs, over the case table of
// test_cuda_attention.cpp: masks, causal with T != S, GQA, dropout, returned weights, strided
// layouts, wide heads; plus fully masked rows (exactly 0) and NaN/Inf in masked-out keys/values.
#include "cuda/cuda_attention_util.hpp"

using namespace kiln;
using namespace kca;
using kc::kGpu;

namespace {

// Unit roundoff of the storage type.
double unit_roundoff(DType dt) { return dt == kBFloat16 ? 0x1p-8 : 0x1p-11; }

double max_finite_abs(const Tensor& t) {
  double m = 0;
  for (double x : t.to(Device::cpu()).to(kFloat64).to_vector<double>())
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return m;
}

// |got - want| <= k u max|want| elementwise (NaN where want has NaN, the same infinities);
// returns the largest |diff| / tolerance for the report. The 16-bit path rounds each output
// once and P (dS) once before the products; each rounding is relative, and the products are
// float32 sums weighted by probabilities (which sum to 1 over the reduction), so the error is
// a few u times the quantity's largest magnitude whatever the reduction length: k = 2 for
// outputs and weights (two roundings), 4 for gradients (P, dS, delta from the rounded output,
// the result).
double expect_close(const Tensor& got, const Tensor& want, DType dt, double k, const std::string& what) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(want.defined());
  REQUIRE(got.shape() == want.shape());
  CHECK(got.dtype() == dt);
  CHECK(got.device().is_cuda());
  const auto a = got.to(Device::cpu()).to(kFloat64).to_vector<double>();
  const auto b = want.to(Device::cpu()).to(kFloat64).to_vector<double>();
  const double tol = k * unit_roundoff(dt) * std::max(max_finite_abs(want), 1e-6);
  double worst = 0;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    bool ok;
    if (std::isnan(b[i])) ok = std::isnan(a[i]);
    else if (std::isinf(b[i])) ok = a[i] == b[i];
    else {
      ok = std::abs(a[i] - b[i]) <= tol;
      worst = std::max(worst, std::abs(a[i] - b[i]) / tol);
    }
    if (!ok && bad++ == 0) first = i;
  }
  INFO(bad << " of " << a.size() << " differ; first at " << first << ": " << (a.empty() ? 0.0 : a[first]) << " vs "
           << (b.empty() ? 0.0 : b[first]) << " (tolerance " << tol << ")");
  CHECK(bad == 0);
  return worst;
}

}  // namespace

TEST_CASE("cuda attention lowp: bf16/fp16 forward and backward match float32 on the same rounded inputs") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kBFloat16, kFloat16}) {
    double worst = 0;
    for (const AttnCase& c : kCases) {
      const std::string name = c.name;
      CAPTURE(dtype_name(dt));
      CAPTURE(name);
      const Run a = run_case(c, dt, kGpu, dt), b = run_case(c, kFloat32, Device::cpu(), dt);
      worst = std::max(worst, expect_close(a.out, b.out, dt, 2, "output"));
      if (c.weights) worst = std::max(worst, expect_close(a.weights, b.weights, dt, 2, "weights"));
      worst = std::max(worst, expect_close(a.gq, b.gq, dt, 4, "grad q"));
      worst = std::max(worst, expect_close(a.gk, b.gk, dt, 4, "grad k"));
      worst = std::max(worst, expect_close(a.gv, b.gv, dt, 4, "grad v"));
      if (b.gmask.defined()) worst = std::max(worst, expect_close(a.gmask, b.gmask, dt, 4, "grad mask"));
    }
    MESSAGE(dtype_name(dt) << ": worst error / tolerance over the case table: " << worst);
  }
}

TEST_CASE("cuda attention lowp: rows with nothing to attend to are exactly 0 with 0 gradient") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kBFloat16, kFloat16}) {
    CAPTURE(dtype_name(dt));
    // Row 3 masked out entirely; under causal with T > S the first T - S rows see no key.
    AttnCase c{"empty rows", 1, 2, 2, 40, 33, 16, 16};
    Inputs in = make_inputs(c, dt, 3, kGpu, dt);
    Tensor m = ones({40, 33}, kBool);
    m.select(0, 3).fill_(false);
    for (Tensor* t : {&in.q, &in.k, &in.v}) t->requires_grad_();
    SdpaResult r = scaled_dot_product_attention(in.q, in.k, in.v,
                                                SdpaOptions().attn_mask(m.to(kGpu)).is_causal(true).need_weights(true));
    sum(r.output).backward();
    CHECK(r.output.dtype() == dt);
    for (std::int64_t t : {0, 3, 6}) {
      CAPTURE(t);
      CHECK(km::all_zero(r.output.select(2, t)));
      CHECK(km::all_zero(r.weights.select(2, t)));
      CHECK(km::all_zero(in.q.grad().select(2, t)));
    }
    CHECK(!km::all_zero(r.output.select(2, 7)));
  }
}

TEST_CASE("cuda attention lowp: NaN and Inf in masked-out keys and values never leak") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kBFloat16, kFloat16}) {
    CAPTURE(dtype_name(dt));
    // Keys 64.. hold NaN / Inf (the forward's second key tile, the backward's third key block)
    // and are masked for every query: the products with those tiles take the exact path.
    AttnCase c{"poisoned", 2, 2, 2, 6, 70, 8, 8};
    Inputs in = make_inputs(c, dt, 4, Device::cpu(), dt);
    Tensor clean_k = in.k.clone(), clean_v = in.v.clone();
    in.k.narrow(2, 64, 6).fill_(std::numeric_limits<double>::quiet_NaN());
    in.v.narrow(2, 64, 6).fill_(std::numeric_limits<double>::infinity());
    Tensor keep = ones({6, 70}, kBool);
    keep.narrow(1, 64, 6).fill_(false);
    // Query row 2 is NaN and sees no key: its dS row is masked, so dK's product takes the exact
    // path too; the row outputs 0 and gets 0 gradient.
    in.q.select(2, 2).fill_(std::numeric_limits<double>::quiet_NaN());
    keep.select(0, 2).fill_(false);
    auto run = [&](const Tensor& k0, const Tensor& v0, DType as, Device dev) {
      Tensor q = in.q.to(as).to(dev).requires_grad_(), k = k0.to(as).to(dev).requires_grad_(),
             v = v0.to(as).to(dev).requires_grad_();
      SdpaResult r = scaled_dot_product_attention(q, k, v, SdpaOptions().attn_mask(keep.to(dev)));
      sum(r.output).backward();
      return std::vector<Tensor>{r.output, q.grad(), k.grad(), v.grad()};
    };
    auto g = run(in.k, in.v, dt, kGpu);
    auto ref = run(in.k, in.v, kFloat32, Device::cpu());
    CHECK(km::all_zero(g[0].select(2, 2)));
    CHECK(km::all_zero(g[1].select(2, 2)));
    for (std::size_t i = 0; i < g.size(); ++i) {
      CAPTURE(i);
      CHECK(km::all_finite(g[i]));
      expect_close(g[i], ref[i], dt, 8, "poisoned result " + std::to_string(i));
    }
    // The masked keys do not change the rest: the clean inputs give the same output bit for bit.
    auto clean = run(clean_k, clean_v, dt, kGpu);
    CHECK(km::max_abs_diff(g[0], clean[0]) == 0);
  }
}
