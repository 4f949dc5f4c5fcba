// bfloat16 attention (the AVX512-BF16 kernel of core/cpu/attention_bf16.cpp where the CPU has it,
// the float32 kernels on converted inputs elsewhere) against the float32 fused kernel run on the
// same rounded inputs, over the documented semantics: masks, causal with T != S, GQA, windows,
// ALiBi, sinks, dropout, empty rows (exactly 0) and NaN/Inf in masked-out keys and values.
#include <kiln/core/cpu/bf16_dot.hpp>
#include <optional>

#include "autograd/test_sdpa_ext_util.hpp"

using namespace kiln;
using namespace kx;

namespace {

// bf16 rounds each probability and the output once (2^-9 relative each) and the float32
// accumulation over D and S adds far less: a few bf16 ulps of the largest |v|.
double out_tol(const Tensor& v) {
  double m = 0;
  for (double x : v.to(kFloat64).to_vector<double>())
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return 4.0 / 256.0 * std::max(m, 1e-30);
}

Tensor bf16(const Tensor& t) { return t.to(kBFloat16); }
Tensor f32(const Tensor& t) { return t.defined() ? t.to(kFloat32) : t; }

struct Opt {
  const char* name;
  bool causal;
  std::int64_t wl, wr;
  bool alibi, sinks;
  int mask;  // 0 none, 1 bool (T, S), 2 float (H, T, S) with -inf entries
  double dropout;
};

const Opt kOpts[] = {
    {"plain", false, -1, -1, false, false, 0, 0.0},       {"causal", true, -1, -1, false, false, 0, 0.0},
    {"window causal", true, 20, 0, false, false, 0, 0.0}, {"window two-sided", false, 16, 5, false, false, 1, 0.0},
    {"alibi causal", true, -1, -1, true, false, 0, 0.0},  {"sinks float mask", false, -1, -1, false, true, 2, 0.0},
    {"all + dropout", true, 33, 0, true, true, 2, 0.25},
};

// T * G > 16 everywhere: the few-query (decode) calls keep the float32 path in the forward.
const std::array<std::int64_t, 5> kShapes[] = {  // T, S, H, Hkv, D
    {64, 64, 2, 2, 64},
    {130, 70, 4, 2, 32},
    {33, 300, 2, 1, 8},
    {200, 33, 2, 2, 17},
    {17, 129, 4, 4, 80}};

// The options for bf16 inputs and for their float32 twin (float tensors in the matching dtype).
std::pair<SdpaOptions, SdpaOptions> make_options(const Opt& f, std::int64_t H, std::int64_t T, std::int64_t S,
                                                 std::uint64_t seed) {
  SdpaOptions o;
  Generator g(seed);
  o.is_causal(f.causal).window_left(f.wl).window_right(f.wr).dropout_p(f.dropout);
  Tensor slopes, sinks, fmask;
  if (f.alibi) slopes = bf16(alibi_slopes(H));
  if (f.sinks) sinks = bf16(rnd({H}, seed + 7, kFloat32, 2.0));
  if (f.mask == 1) o.attn_mask(gt(rand({T, S}, kFloat64, &g), scalar_tensor(0.3, kFloat64)));
  if (f.mask == 2) {
    Tensor drop = lt(rand({H, T, S}, kFloat64, &g), scalar_tensor(0.2, kFloat64));
    fmask = bf16(where(drop, Scalar(-kInf), randn({H, T, S}, kFloat32, &g)));
  }
  SdpaOptions lo = o, fo = o;
  lo.alibi_slopes(slopes).sinks(sinks);
  fo.alibi_slopes(f32(slopes)).sinks(f32(sinks));
  if (fmask.defined()) {
    lo.attn_mask(fmask);
    fo.attn_mask(f32(fmask));
  }
  return {lo, fo};
}

}  // namespace

namespace {
// Runs body once per bf16 path this CPU has: the tile products on AMX, on vdpbf16ps (forced on,
// whatever the measured speed), and the float32 kernels on converted inputs.
template <typename Body>
void each_path(Body&& body) {
  const int prev = cpu::set_bf16_dot(1), prev_amx = cpu::set_bf16_amx(1);
  for (int mode : {2, 1, 0}) {
    if (mode == 2 && !cpu::amx_bf16_usable()) continue;
    if (mode == 1 && !cpu::cpu_has_avx512_bf16()) continue;
    cpu::set_bf16_dot(mode > 0 ? 1 : 0);
    cpu::set_bf16_amx(mode == 2 ? 1 : 0);
    CAPTURE(mode);
    body();
  }
  cpu::set_bf16_dot(prev);
  cpu::set_bf16_amx(prev_amx);
}

// The tile-product engines to run the bf16 kernels on here: AMX (where usable), then vdpbf16ps.
std::vector<int> amx_modes() { return cpu::amx_bf16_usable() ? std::vector<int>{1, 0} : std::vector<int>{0}; }
}  // namespace

TEST_CASE("attention bf16: matches float32 on the same rounded inputs (shapes x semantics)") {
  MESSAGE("bf16 dot products: " << std::string(cpu::bf16_dot_reason()));
  each_path([] {
    int n = 0;
    double worst = 0;  // largest err / tol seen, reported
    for (const Opt& f : kOpts)
      for (const auto& [T, S, H, Hkv, D] : kShapes) {
        ++n;
        CAPTURE(f.name);
        CAPTURE(T);
        CAPTURE(S);
        CAPTURE(H);
        CAPTURE(Hkv);
        CAPTURE(D);
        Tensor q = bf16(rnd({2, H, T, D}, 100 + static_cast<std::uint64_t>(n), kFloat32));
        Tensor k = bf16(rnd({2, Hkv, S, D}, 200 + static_cast<std::uint64_t>(n), kFloat32));
        Tensor v = bf16(rnd({2, Hkv, S, D}, 300 + static_cast<std::uint64_t>(n), kFloat32));
        if (n % 3 == 0) q = bf16(rnd({2, T, H, D}, 100 + static_cast<std::uint64_t>(n), kFloat32)).transpose(1, 2);
        auto [lo, fo] = make_options(f, H, T, S, static_cast<std::uint64_t>(n));
        Generator g1(5), g2(5);
        auto a = F::scaled_dot_product_attention(q, k, v, SdpaOptions(lo).generator(&g1));
        auto b = F::scaled_dot_product_attention(f32(q), f32(k), f32(v), SdpaOptions(fo).generator(&g2));
        REQUIRE(a.output.dtype() == kBFloat16);
        kt::expect_shape(a.output, {2, H, T, D});
        const double err = max_abs_diff(a.output, b.output), tol = out_tol(v);
        CAPTURE(err);
        CHECK(err <= tol);
        worst = std::max(worst, err / tol);
      }
    MESSAGE("worst error / tolerance: " << worst);
  });
}

TEST_CASE("attention bf16: rows with no key left are exactly 0") {
  each_path([] {
    const std::int64_t H = 2, T = 40, S = 70, D = 16;
    Tensor q = bf16(rnd({1, H, T, D}, 1, kFloat32)), k = bf16(rnd({1, H, S, D}, 2, kFloat32));
    Tensor v = bf16(rnd({1, H, S, D}, 3, kFloat32));
    Tensor keep = ones({H, T, S}, kBool);
    auto* mp = static_cast<bool*>(keep.raw_data());
    for (std::int64_t j = 0; j < T * S; ++j) mp[j] = false;            // head 0: every row
    for (std::int64_t j = 0; j < S; ++j) mp[(T + 5) * S + j] = false;  // head 1, row 5
    for (Tensor* t : {&q, &k, &v}) t->requires_grad_();
    auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions().attn_mask(keep).sinks(bf16(rnd({H}, 4, kFloat32))));
    CHECK(max_abs_diff(r.output.select(1, 0), zeros({1, T, D}, kBFloat16)) == 0.0);
    CHECK(max_abs_diff(r.output.select(1, 1).select(1, 5), zeros({1, D}, kBFloat16)) == 0.0);
    CHECK(all_finite(r.output));
    // ... and get exactly 0 gradients: head 0 (no key seen: dK, dV 0 too), row 5 of head 1.
    auto gr = autograd::grad({r.output}, {q, k, v}, {bf16(rnd({1, H, T, D}, 6, kFloat32))});
    for (const Tensor& gx : gr) {
      CHECK(gx.dtype() == kBFloat16);
      CHECK(all_finite(gx));
      CHECK(max_abs_diff(gx.select(1, 0), zeros_like(gx.select(1, 0))) == 0.0);
    }
    CHECK(max_abs_diff(gr[0].select(1, 1).select(1, 5), zeros({1, D}, kBFloat16)) == 0.0);
    // Causal with T > S: the first T - S queries see nothing.
    Tensor q2 = bf16(rnd({1, H, S + 20, D}, 5, kFloat32));
    auto c = F::scaled_dot_product_attention(q2, k, v, SdpaOptions().is_causal(true));
    CHECK(max_abs_diff(c.output.narrow(2, 0, 20), zeros({1, H, 20, D}, kBFloat16)) == 0.0);
    CHECK(all_finite(c.output));
  });
}

TEST_CASE("attention bf16: NaN/Inf in masked-out keys and values never leaks") {
  each_path([] {
    // Causal window(20, 0), 64 queries at positions 236..299: keys < 216 are outside every window
    // (including part of the key tile 192..255); a bool key-padding mask hides the last 10 keys.
    const std::int64_t T = 64, S = 300, D = 32;
    Tensor q = bf16(rnd({2, 2, T, D}, 1, kFloat32)), k = bf16(rnd({2, 1, S, D}, 2, kFloat32));
    Tensor v = bf16(rnd({2, 1, S, D}, 3, kFloat32));
    Tensor kd = k.clone(), vd = v.clone();
    {
      NoGradGuard ng;
      kd.narrow(2, 0, 216).fill_(std::nan(""));
      kd.narrow(2, 0, 3).fill_(kInf);
      vd.narrow(2, 0, 216).fill_(-kInf);
      vd.narrow(2, 1, 2).fill_(std::nan(""));
      vd.narrow(2, 200, 1).fill_(std::nan(""));  // inside the tile the window reaches
    }
    SdpaOptions o = SdpaOptions().is_causal(true).window_left(20).window_right(0).alibi_slopes(bf16(alibi_slopes(2)));
    for (Tensor* t : {&q, &k, &v, &kd, &vd}) t->requires_grad_();
    auto clean = F::scaled_dot_product_attention(q, k, v, o).output;
    auto dirty = F::scaled_dot_product_attention(q, kd, vd, o).output;
    // A tile holding NaN/Inf takes the exact path that skips masked keys (float32 probabilities,
    // not bf16-rounded ones): equal within the bf16 tolerance, and finite.
    CHECK(all_finite(dirty));
    CHECK(max_abs_diff(clean, dirty) <= out_tol(v));
    // Gradients likewise (the backward's exact path for a K tile with NaN/Inf).
    const Tensor go = bf16(rnd({2, 2, T, D}, 9, kFloat32));
    auto gc = autograd::grad({clean}, {q, k, v}, {go}), gd = autograd::grad({dirty}, {q, kd, vd}, {go});
    for (std::size_t i = 0; i < 3; ++i) {
      CAPTURE(i);
      CHECK(all_finite(gd[i]));
      CHECK(max_abs_diff(gc[i], gd[i]) <= 4.0 * out_tol(gc[i]));
    }
    // NaN in query row 0 and in its output gradient (the q / dO tiles' exact paths): only the
    // keys row 0 sees (216 .. 236) get NaN gradients, other rows' dQ none.
    Tensor qn = q.detach().clone(), gon = go.clone();
    {
      NoGradGuard ng;
      qn.narrow(2, 0, 1).fill_(std::nan(""));
      gon.narrow(2, 0, 1).fill_(std::nan(""));
    }
    qn.requires_grad_();
    auto gn = autograd::grad({F::scaled_dot_product_attention(qn, k, v, o).output}, {qn, k, v}, {gon});
    CHECK(all_finite(gn[0].narrow(2, 1, T - 1)));
    for (std::size_t i = 1; i < 3; ++i) {
      CAPTURE(i);
      CHECK(all_finite(gn[i].narrow(2, 0, 216)));
      CHECK(all_finite(gn[i].narrow(2, 237, S - 237)));
      CHECK_FALSE(all_finite(gn[i].narrow(2, 216, 21)));
    }
    Tensor pad = ones({2, 1, 1, S}, kBool);
    {
      NoGradGuard ng;
      pad.narrow(3, S - 10, 10).fill_(false);
    }
    Tensor kp = k.clone(), vp = v.clone();
    {
      NoGradGuard ng;
      kp.narrow(2, S - 10, 10).fill_(std::nan(""));
      vp.narrow(2, S - 10, 10).fill_(kInf);
    }
    Tensor q2 = bf16(rnd({2, 2, 40, D}, 4, kFloat32));
    auto pc = F::scaled_dot_product_attention(q2, k, v, SdpaOptions().attn_mask(pad)).output;
    auto pd = F::scaled_dot_product_attention(q2, kp, vp, SdpaOptions().attn_mask(pad)).output;
    CHECK(all_finite(pd));
    CHECK(max_abs_diff(pc, pd) <= out_tol(v));
  });
}

TEST_CASE("attention bf16: gradients match float32 on the same rounded inputs") {
  each_path([] {
    const std::int64_t H = 4, Hkv = 2, T = 70, S = 90, D = 32;
    Tensor q = bf16(rnd({2, H, T, D}, 1, kFloat32)), k = bf16(rnd({2, Hkv, S, D}, 2, kFloat32));
    Tensor v = bf16(rnd({2, Hkv, S, D}, 3, kFloat32)), go = bf16(rnd({2, H, T, D}, 4, kFloat32));
    auto run = [&](DType dt) {
      Tensor qq = q.to(dt).detach().requires_grad_(), kk = k.to(dt).detach().requires_grad_();
      Tensor vv = v.to(dt).detach().requires_grad_();
      auto r = F::scaled_dot_product_attention(qq, kk, vv, SdpaOptions().is_causal(true).window_left(40));
      auto g = autograd::grad({r.output}, {qq, kk, vv}, {go.to(dt)});
      return std::vector<Tensor>{r.output, g[0], g[1], g[2]};
    };
    auto lo = run(kBFloat16), hi = run(kFloat32);
    for (std::size_t i = 0; i < lo.size(); ++i) {
      CAPTURE(i);
      CHECK(lo[i].dtype() == kBFloat16);
      // Gradients sum over up to S (or T * G) terms of O(1): a looser relative bound than the output.
      const double scale = i == 0 ? 1.0 : 4.0;
      double m = 0;
      for (double x : hi[i].to(kFloat64).to_vector<double>()) m = std::max(m, std::abs(x));
      const double err = max_abs_diff(lo[i], hi[i]);
      CAPTURE(err);
      CHECK(err <= scale * 4.0 / 256.0 * std::max(m, 1.0));
    }
  });
}

namespace {
constexpr double kU = 1.0 / 256;  // bf16 unit roundoff (8 significand bits)

// |x1 - x0| <= tol elementwise (float64); returns the largest |x1 - x0| / tol.
double check_within(const char* what, const Tensor& x1, const Tensor& x0, const Tensor& tol) {
  CAPTURE(what);
  REQUIRE(x1.defined());
  REQUIRE(x0.defined());
  CHECK(x1.dtype() == kBFloat16);
  const Tensor d = abs(sub(x1.to(kFloat64), x0.to(kFloat64)));
  const Tensor t = tol.expand(d.shape());
  const bool ok = all(le(d, t)).item<bool>();
  const double ratio = amax(div(d, add(t, full({}, 1e-300, kFloat64)))).item<double>();
  CAPTURE(ratio);
  CHECK(ok);
  return ratio;
}
}  // namespace

// The bf16 backward kernel (vdpbf16ps) against the float32 backward (bf16 dot products off: the
// float32 kernels on the same bf16 values) of one and the same forward, so both read the same
// out and lse. Each gradient sums products one of whose factors (P or dS) the bf16 kernel rounds
// to bf16 (relative error <= u = 2^-8) and both round the result once, so per element
// |err| <= 2u |ref| + u sum_k |a_k| |b_k|; the sums are bounded from the float32 weights P:
// dV by P^T |dO| / keep, dK and dQ through |dS| <= P (|dO| |V|^T / keep + |dO| . |O|).
TEST_CASE("attention bf16: backward on bf16 dot products matches the float32 backward (shapes x semantics)") {
  if (!cpu::cpu_has_avx512_bf16()) {
    MESSAGE("no AVX512-BF16 here: the float32 backward is the only bf16 path");
    return;
  }
  const int prev = cpu::set_bf16_dot(1), prev_amx = cpu::set_bf16_amx(1);
  for (int amx : amx_modes()) {
    cpu::set_bf16_amx(amx);
    CAPTURE(amx);
    int n = 0;
    double worst = 0;
    for (const Opt& f : kOpts)
      for (const auto& [T, S, H, Hkv, D] : kShapes) {
        ++n;
        CAPTURE(f.name);
        CAPTURE(T);
        CAPTURE(S);
        CAPTURE(H);
        CAPTURE(Hkv);
        CAPTURE(D);
        const std::int64_t G = H / Hkv;
        const auto sd = static_cast<std::uint64_t>(n);
        Tensor q = bf16(rnd({2, H, T, D}, 100 + sd, kFloat32));
        if (n % 3 == 0) q = bf16(rnd({2, T, H, D}, 100 + sd, kFloat32)).transpose(1, 2);
        q.requires_grad_();
        Tensor k = bf16(rnd({2, Hkv, S, D}, 200 + sd, kFloat32)).requires_grad_();
        Tensor v = bf16(rnd({2, Hkv, S, D}, 300 + sd, kFloat32)).requires_grad_();
        auto [lo, fo] = make_options(f, H, T, S, sd);
        std::vector<Tensor> in{q, k, v};
        Tensor m, slopes, sinks;
        if (lo.attn_mask().defined() && lo.attn_mask().dtype() == kBFloat16) {
          m = lo.attn_mask().detach().requires_grad_();
          lo.attn_mask(m);
          in.push_back(m);
        }
        if (f.alibi) {
          slopes = lo.alibi_slopes().detach().requires_grad_();
          lo.alibi_slopes(slopes);
          in.push_back(slopes);
        }
        if (f.sinks) {
          sinks = lo.sinks().detach().requires_grad_();
          lo.sinks(sinks);
          in.push_back(sinks);
        }
        Generator g1(5), g2(5);
        auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions(lo).generator(&g1));
        const Tensor go = bf16(rnd({2, H, T, D}, 400 + sd, kFloat32));
        cpu::set_bf16_dot(1);
        auto g_new = autograd::grad({r.output}, in, {go}, true);
        cpu::set_bf16_dot(0);
        auto g_ref = autograd::grad({r.output}, in, {go}, true);
        cpu::set_bf16_dot(1);

        NoGradGuard ng;
        const double keep = 1.0 - f.dropout, scale = 1.0 / std::sqrt(static_cast<double>(D));
        const Tensor P = F::scaled_dot_product_attention(f32(q.detach()), f32(k.detach()), f32(v.detach()),
                                                         SdpaOptions(fo).need_weights(true).generator(&g2))
                             .weights.to(kFloat64);
        auto A = [](const Tensor& t) { return abs(t.detach().to(kFloat64)); };
        auto heads = [&](const Tensor& x) {  // (2, Hkv, S, D) -> (2, H, S, D)
          return x.unsqueeze(2).expand({2, Hkv, G, S, D}).reshape({2, H, S, D});
        };
        auto fold = [&](const Tensor& x) { return sum(x.reshape({2, Hkv, G, S, D}), {2}); };
        const Tensor ado = A(go), ak = heads(A(k)), av = heads(A(v));
        const Tensor dS = mul(P, add(div(matmul(ado, transpose(av, -1, -2)), full({}, keep, kFloat64)),
                                     sum(mul(ado, A(r.output)), {-1}, true)));
        auto tol = [&](const Tensor& ref, const Tensor& bound) {
          return add(mul(A(ref), full({}, 2 * kU, kFloat64)), mul(bound, full({}, 1.05 * kU + 1e-5, kFloat64)));
        };
        const Tensor sc = full({}, scale, kFloat64);
        worst = std::max(worst, check_within("dq", g_new[0], g_ref[0], tol(g_ref[0], mul(matmul(dS, ak), sc))));
        worst = std::max(worst, check_within("dk", g_new[1], g_ref[1],
                                             tol(g_ref[1], mul(fold(matmul(transpose(dS, -1, -2), A(q))), sc))));
        worst = std::max(worst, check_within("dv", g_new[2], g_ref[2],
                                             tol(g_ref[2], div(fold(matmul(transpose(P, -1, -2), ado)),
                                                               full({}, keep, kFloat64)))));
        std::size_t i = 3;
        // The mask, slope and sink gradients are float32 sums of dS in both kernels, rounded per
        // batch element and summed over the batch (2u each, on bounds of the summed magnitudes).
        if (m.defined()) {
          const Tensor b = mul(sum(dS, {0}), full({}, 2.0, kFloat64));
          worst = std::max(worst, check_within("dmask", g_new[i], g_ref[i], tol(g_ref[i], b)));
          ++i;
        }
        if (slopes.defined()) {
          Tensor dist = zeros({T, S}, kFloat64);
          auto* dp = static_cast<double*>(dist.raw_data());
          for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < S; ++j) dp[t * S + j] = std::abs(static_cast<double>(S - T + t - j));
          const Tensor b = mul(sum(mul(dS, dist), {0, 2, 3}), full({}, 2.0, kFloat64));
          worst = std::max(worst, check_within("dslopes", g_new[i], g_ref[i], tol(g_ref[i], b)));
          ++i;
        }
        if (sinks.defined()) {
          const Tensor b = mul(sum(mul(ado, A(r.output)), {0, 2, 3}), full({}, 2.0, kFloat64));
          worst = std::max(worst, check_within("dsinks", g_new[i], g_ref[i], tol(g_ref[i], b)));
        }
      }
    MESSAGE(std::string(amx ? "AMX" : "vdpbf16ps") << " tiles: worst error / tolerance: " << worst);
  }
  cpu::set_bf16_dot(prev);
  cpu::set_bf16_amx(prev_amx);
}

// Few-query calls (KV-cache decoding: T * G <= 16) read bf16 K and V in place, tile by tile, in
// the float32 decode kernel: the same float32 arithmetic as that kernel on the float32 values of
// the same inputs, so the outputs are equal after the one rounding to bf16, on every CPU. The
// cache is a prefix of a longer buffer (strided, as a KV cache is), split over chunks or not.
TEST_CASE("attention bf16: decode calls read the bf16 cache in place and equal the float32 kernel") {
  const std::array<std::int64_t, 5> shapes[] = {// T, S, H, Hkv, D
                                                {1, 300, 4, 2, 32},
                                                {3, 129, 8, 2, 17},
                                                {1, 70, 2, 1, 64},
                                                {4, 200, 4, 4, 80},
                                                {16, 90, 2, 2, 16}};
  int n = 0;
  for (bool split : {false, true})
    for (const Opt& f : kOpts)
      for (const auto& [T, S, H, Hkv, D] : shapes) {
        ++n;
        CAPTURE(split);
        CAPTURE(f.name);
        CAPTURE(T);
        CAPTURE(S);
        CAPTURE(H);
        CAPTURE(Hkv);
        std::optional<SplitEverything> se;
        if (split) se.emplace();
        const auto sd = static_cast<std::uint64_t>(n);
        Tensor q = bf16(rnd({2, H, T, D}, 100 + sd, kFloat32));
        Tensor k = bf16(rnd({2, Hkv, S + 40, D}, 200 + sd, kFloat32)).narrow(2, 0, S);
        Tensor v = bf16(rnd({2, Hkv, S + 40, D}, 300 + sd, kFloat32)).narrow(2, 0, S);
        auto [lo, fo] = make_options(f, H, T, S, sd);
        Generator g1(5), g2(5);
        auto a = F::scaled_dot_product_attention(q, k, v, SdpaOptions(lo).generator(&g1));
        auto b = F::scaled_dot_product_attention(f32(q), f32(k), f32(v), SdpaOptions(fo).generator(&g2));
        REQUIRE(a.output.dtype() == kBFloat16);
        CHECK(max_abs_diff(a.output, b.output.to(kBFloat16)) == 0.0);
      }
}
