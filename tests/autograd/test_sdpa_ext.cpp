// scaled_dot_product_attention extensions, values: sliding window, ALiBi, attention sinks and
// their combinations with causal, masks, GQA, dropout and returned weights. Fused kernels
// against the composite reference on a table of shapes; both against host loops; each feature
// against its explicit equivalent (band mask, float bias, an appended zero-value key); empty
// rows, NaN outside the window, the slope helper and the errors.
#include "autograd/test_sdpa_ext_util.hpp"

using namespace kiln;
using namespace kx;

namespace {

// One combination of extension options for the shape table.
struct Feat {
  const char* name;
  bool causal;
  std::int64_t wl, wr;
  int alibi;  // 0 none, 1 (H,), 2 (batch..., H)
  bool sinks;
  int mask;  // 0 none, 1 bool (T, S), 2 float (H, T, S) with -inf, 3 key padding (batch..., 1, 1, S)
  double dropout;
  bool weights;
};

const Feat kFeats[] = {
    {"window causal", true, 20, 0, 0, false, 0, 0.0, false},
    {"window two-sided", false, 16, 16, 0, false, 0, 0.0, true},
    {"window zero", false, 0, 0, 0, false, 0, 0.0, false},
    {"window right only", false, -1, 5, 0, false, 0, 0.0, false},
    {"window left only + bool", false, 70, -1, 0, false, 1, 0.0, false},
    {"alibi", false, -1, -1, 1, false, 0, 0.0, true},
    {"alibi causal per-batch", true, -1, -1, 2, false, 0, 0.0, false},
    {"sinks", false, -1, -1, 0, true, 0, 0.0, true},
    {"sinks causal float", true, -1, -1, 0, true, 2, 0.0, false},
    {"all causal", true, 33, 0, 1, true, 2, 0.0, true},
    {"all two-sided dropout", false, 40, 7, 2, true, 1, 0.3, false},
    {"key padding window sinks", false, 9, 30, 0, true, 3, 0.0, true},
};

SdpaOptions feat_options(const Feat& f, const Shape& batch, std::int64_t H, std::int64_t T, std::int64_t S, DType dt,
                         std::uint64_t seed) {
  SdpaOptions o;
  Generator g(seed);
  o.is_causal(f.causal).window_left(f.wl).window_right(f.wr).need_weights(f.weights);
  if (f.alibi == 1) o.alibi_slopes(alibi_slopes(H));
  if (f.alibi == 2) o.alibi_slopes(mul(rand(cat_shape(batch, {H}), dt, &g), scalar_tensor(0.5, dt)));
  if (f.sinks) o.sinks(rnd({H}, seed + 7, dt, 2.0));
  if (f.mask == 1) o.attn_mask(gt(rand({T, S}, kFloat64, &g), scalar_tensor(0.3, kFloat64)));
  if (f.mask == 2) {
    Tensor drop = lt(rand({H, T, S}, kFloat64, &g), scalar_tensor(0.2, kFloat64));
    o.attn_mask(where(drop, Scalar(-kInf), randn({H, T, S}, dt, &g)));
  }
  if (f.mask == 3) {
    Tensor m = zeros(cat_shape(batch, {1, 1, S}), kBool);
    auto* mp = static_cast<bool*>(m.raw_data());
    const std::int64_t B = numel_of(batch);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t j = 0; j < S; ++j) mp[b * S + j] = j < std::max<std::int64_t>(1, S - 3 * b - 2);
    o.attn_mask(m);
  }
  if (f.dropout > 0) o.dropout_p(f.dropout);
  return o;
}

}  // namespace

TEST_CASE("sdpa ext: alibi_slopes follows the ALiBi paper") {
  auto expect = [](std::int64_t n, const std::vector<double>& exps) {
    CAPTURE(n);
    Tensor s = alibi_slopes(n);
    CHECK(s.dtype() == kFloat32);
    kt::expect_shape(s, {n});
    std::vector<double> e;
    for (double x : exps) e.push_back(std::exp2(x));
    kt::expect_values(s, e, 0.0, 1e-7);
  };
  expect(1, {-8});
  expect(2, {-4, -8});
  expect(8, {-1, -2, -3, -4, -5, -6, -7, -8});
  // Not a power of two: the 4 slopes of n = 4, then every other slope of n = 8.
  expect(6, {-2, -4, -6, -8, -1, -3});
  expect(12, {-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5});
  auto s16 = alibi_slopes(16).to_vector<double>();
  CHECK(s16[15] == doctest::Approx(std::exp2(-8.0)).epsilon(1e-7));
  CHECK_KILN_ERROR(alibi_slopes(0), "[alibi_slopes] num_heads must be positive, got 0");
  CHECK_KILN_ERROR(alibi_slopes(-3), "got -3");
}

TEST_CASE("sdpa ext: fused matches reference on a table of shapes and feature combinations") {
  const std::vector<std::pair<std::int64_t, std::int64_t>> ts = {{1, 1},    {1, 130},   {7, 7},    {64, 64}, {130, 64},
                                                                 {64, 200}, {130, 130}, {33, 300}, {200, 33}};
  const std::vector<std::pair<std::int64_t, std::int64_t>> heads = {{4, 4}, {4, 2}};
  const std::vector<Shape> batches = {{2}, {}, {2, 3}};
  int n = 0;
  for (DType dt : {kFloat32, kFloat64})
    for (const Feat& f : kFeats)
      for (auto [T, S] : ts)
        for (auto [H, Hkv] : heads) {
          ++n;
          // Big shapes get fewer combinations (the reference is O(T * S) per head).
          if (T * S >= 64 * 64 && n % 3 != 0) continue;
          const Shape& batch = batches[static_cast<std::size_t>(n) % batches.size()];
          const std::int64_t D = n % 2 ? 8 : 64;
          CAPTURE(dtype_name(dt));
          CAPTURE(f.name);
          CAPTURE(T);
          CAPTURE(S);
          CAPTURE(H);
          CAPTURE(Hkv);
          CAPTURE(D);
          CAPTURE(shape_str(batch));
          Tensor q = rnd(cat_shape(batch, {H, T, D}), 100 + static_cast<std::uint64_t>(n), dt);
          Tensor k = rnd(cat_shape(batch, {Hkv, S, D}), 200 + static_cast<std::uint64_t>(n), dt);
          Tensor v = rnd(cat_shape(batch, {Hkv, S, D}), 300 + static_cast<std::uint64_t>(n), dt);
          if (n % 4 == 0)
            q = rnd(cat_shape(batch, {T, H, D}), 100 + static_cast<std::uint64_t>(n), dt).transpose(-3, -2);
          SdpaOptions o = feat_options(f, batch, H, T, S, dt, static_cast<std::uint64_t>(n));
          Generator g1(5), g2(5);
          auto a = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).generator(&g1));
          auto b = F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions(o).generator(&g2));
          kt::expect_shape(a.output, cat_shape(batch, {H, T, D}));
          const double tol = dt == kFloat32 ? 1e-5 : 1e-10;
          CHECK(max_abs_diff(a.output, b.output) <= tol);
          if (f.weights) CHECK(max_abs_diff(a.weights, b.weights) <= tol);
        }
}

TEST_CASE("sdpa ext: fused and reference match host loops") {
  struct Case {
    std::int64_t T, S;
    bool causal;
    std::int64_t wl, wr;
    bool alibi, sinks;
    int mask;  // 0 none, 1 bool, 2 float
  };
  const Case cases[] = {{5, 9, true, 2, 0, true, true, 1},        {5, 9, false, 1, 3, true, false, 2},
                        {9, 5, true, -1, -1, false, true, 0},     {40, 150, true, 30, 0, true, true, 2},
                        {40, 150, false, 10, 70, false, true, 1}, {70, 70, false, 0, 0, true, true, 0}};
  const std::int64_t B = 2, H = 4, Hkv = 2, D = 3;
  int n = 0;
  for (const Case& c : cases) {
    ++n;
    CAPTURE(n);
    HostExt h{B, H, Hkv, c.T, c.S, D, D, 0.7, c.causal, c.wl, c.wr, {}, {}, {}, {}, false, {}, {}};
    Tensor q = rnd({B, H, c.T, D}, 1), k = rnd({B, Hkv, c.S, D}, 2), v = rnd({B, Hkv, c.S, D}, 3);
    h.q = q.to_vector<double>();
    h.k = k.to_vector<double>();
    h.v = v.to_vector<double>();
    SdpaOptions o =
        SdpaOptions().scale(0.7).is_causal(c.causal).window_left(c.wl).window_right(c.wr).need_weights(true);
    Generator g(static_cast<std::uint64_t>(n));
    if (c.alibi) {
      Tensor sl = rand({B, H}, kFloat64, &g);  // per example and head
      o.alibi_slopes(sl);
      h.slopes = sl.to_vector<double>();
    }
    if (c.sinks) {
      Tensor sk = rnd({H}, 9, kFloat64, 2.0);
      o.sinks(sk);
      h.sinks = sk.unsqueeze(0).expand({B, H}).contiguous().to_vector<double>();
    }
    if (c.mask == 1) {
      Tensor m = gt(rand({B, 1, c.T, c.S}, kFloat64, &g), scalar_tensor(0.3, kFloat64));
      o.attn_mask(m);
      h.mask = m.expand({B, H, c.T, c.S}).to(kFloat64).contiguous().to_vector<double>();
      h.bool_mask = true;
    }
    if (c.mask == 2) {
      Tensor m = where(lt(rand({H, c.T, c.S}, kFloat64, &g), scalar_tensor(0.2, kFloat64)), Scalar(-kInf),
                       randn({H, c.T, c.S}, kFloat64, &g));
      o.attn_mask(m);
      h.mask = m.expand({B, H, c.T, c.S}).contiguous().to_vector<double>();
    }
    HostOut e = host_sdpa_ext(h);
    for (bool ref : {false, true}) {
      CAPTURE(ref);
      auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).use_reference(ref));
      kt::expect_values(r.output, e.out, 1e-12, 1e-10);
      kt::expect_values(r.weights, e.weights, 1e-12, 1e-10);
    }
  }
}

TEST_CASE("sdpa ext: a window equals the explicit bool band mask") {
  struct Case {
    std::int64_t T, S, l, r;
    bool causal;
  };
  const Case cases[] = {{7, 7, 2, 0, true},      {130, 130, 20, 0, true},    {130, 130, 16, 16, false},
                        {10, 300, 64, 3, false}, {300, 40, 5, -1, false},    {64, 200, -1, 0, false},
                        {33, 150, 0, 0, false},  {100, 100, 130, 1000, true}};
  for (DType dt : {kFloat64, kFloat32})
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.T);
      CAPTURE(c.S);
      CAPTURE(c.l);
      CAPTURE(c.r);
      CAPTURE(c.causal);
      Tensor q = rnd({2, 2, c.T, 16}, 1, dt).requires_grad_(), k = rnd({2, 1, c.S, 16}, 2, dt).requires_grad_();
      Tensor v = rnd({2, 1, c.S, 8}, 3, dt).requires_grad_();
      Tensor go = rnd({2, 2, c.T, 8}, 4, dt);
      auto run = [&](const SdpaOptions& o) {
        auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).need_weights(true));
        auto gs = autograd::grad({r.output}, {q, k, v}, {go});
        return std::vector<Tensor>{r.output, r.weights, gs[0], gs[1], gs[2]};
      };
      auto a = run(SdpaOptions().window_left(c.l).window_right(c.r).is_causal(c.causal));
      auto b = run(SdpaOptions().attn_mask(band_mask(c.T, c.S, c.causal, c.l, c.r)));
      const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
      for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        CHECK(max_abs_diff(a[i], b[i]) <= tol);
      }
    }
}

TEST_CASE("sdpa ext: ALiBi equals the explicit float bias") {
  const std::int64_t H = 4;
  const std::vector<double> sl = alibi_slopes(H).to_vector<double>();
  for (auto [T, S] : {std::pair<std::int64_t, std::int64_t>{6, 6}, {1, 200}, {150, 90}, {70, 300}})
    for (bool causal : {false, true})
      for (bool with_mask : {false, true}) {
        CAPTURE(T);
        CAPTURE(S);
        CAPTURE(causal);
        CAPTURE(with_mask);
        Tensor q = rnd({2, H, T, 8}, 1), k = rnd({2, 2, S, 8}, 2), v = rnd({2, 2, S, 8}, 3);
        Tensor bias = alibi_bias(sl, T, S);
        SdpaOptions o = SdpaOptions().is_causal(causal).need_weights(true);
        SdpaOptions a = SdpaOptions(o).alibi_slopes(alibi_slopes(H)), b = o;
        if (with_mask) {
          Tensor m = rnd({T, S}, 6);
          a.attn_mask(m);
          b.attn_mask(add(bias, m));
        } else {
          b.attn_mask(bias);
        }
        for (bool ref : {false, true}) {
          CAPTURE(ref);
          auto x = F::scaled_dot_product_attention(q, k, v, SdpaOptions(a).use_reference(ref));
          auto y = F::scaled_dot_product_attention(q, k, v, SdpaOptions(b).use_reference(ref));
          CHECK(max_abs_diff(x.output, y.output) <= 1e-12);
          CHECK(max_abs_diff(x.weights, y.weights) <= 1e-12);
        }
      }
}

TEST_CASE("sdpa ext: sinks equal an appended zero-value key whose logit is the sink") {
  const std::int64_t B = 2, H = 4, Hkv = 2, D = 8;
  for (auto [T, S] : {std::pair<std::int64_t, std::int64_t>{5, 9}, {70, 130}, {1, 64}})
    for (int mode = 0; mode < 3; ++mode)
      for (bool ref : {false, true}) {
        CAPTURE(T);
        CAPTURE(S);
        CAPTURE(mode);
        CAPTURE(ref);
        Tensor q = rnd({B, H, T, D}, 1).requires_grad_(), k = rnd({B, Hkv, S, D}, 2).requires_grad_();
        Tensor v = rnd({B, Hkv, S, D}, 3).requires_grad_();
        Tensor sinks = rnd({H}, 4, kFloat64, 3.0).requires_grad_();
        Tensor go = rnd({B, H, T, D}, 5);
        Tensor keep = gt(rand({T, S}, kFloat64), scalar_tensor(0.3, kFloat64));
        SdpaOptions o = SdpaOptions().need_weights(true).use_reference(ref);
        if (mode == 1) o.is_causal(true);
        if (mode == 2) o.attn_mask(keep);
        auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).sinks(sinks));
        auto g = autograd::grad({r.output}, {q, k, v, sinks}, {go});
        // The equivalent: key 0 is a zero vector with value 0 and logit sink_h (float mask column);
        // prepending keeps causal alignment (query t still sits right of key S - T + t).
        Tensor k1 = cat({zeros({B, Hkv, 1, D}, kFloat64), k}, 2), v1 = cat({zeros({B, Hkv, 1, D}, kFloat64), v}, 2);
        Tensor col = sinks.detach().reshape({H, 1, 1}).expand({H, T, 1});
        Tensor rest = zeros({H, T, S}, kFloat64);
        if (mode == 2) rest = sel(keep, 0.0, -kInf).unsqueeze(0).expand({H, T, S});
        Tensor bias = cat({col, rest}, 2).contiguous().requires_grad_();
        SdpaOptions o1 = SdpaOptions().need_weights(true).attn_mask(bias).is_causal(mode == 1);
        auto e = F::scaled_dot_product_attention(q, k1, v1, o1);
        auto ge = autograd::grad({e.output}, {q, k1, v1, bias}, {go});
        CHECK(max_abs_diff(r.output, e.output) <= 1e-12);
        CHECK(max_abs_diff(r.weights, e.weights.narrow(-1, 1, S)) <= 1e-12);
        CHECK(max_abs_diff(g[0], ge[0]) <= 1e-12);
        CHECK(max_abs_diff(g[1], ge[1].narrow(2, 1, S)) <= 1e-12);
        CHECK(max_abs_diff(g[2], ge[2].narrow(2, 1, S)) <= 1e-12);
        // d sink_h = d bias[h, :, 0] summed over the queries.
        CHECK(max_abs_diff(g[3], sum(ge[3].narrow(2, 0, 1), {1, 2})) <= 1e-12);
        // The weights sum to 1 - P(sink) < 1.
        Tensor psink = e.weights.narrow(-1, 0, 1).squeeze(-1);
        CHECK(max_abs_diff(sum(r.weights, {-1}), sub(ones_like(psink), psink)) <= 1e-12);
      }
}

TEST_CASE("sdpa ext: rows with no key left output exactly 0 and get 0 gradient, sinks too") {
  // Head 0 masks every key (so its sink gets 0 gradient); row 2 is empty in every head; under
  // causal + window(1, 0) with T > S the first T - S rows are empty as well.
  const std::int64_t B = 2, H = 2, T = 8, S = 70, D = 5;
  for (DType dt : {kFloat32, kFloat64})
    for (int how = 0; how < 2; ++how)
      for (bool ref : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(how);
        CAPTURE(ref);
        const std::int64_t Tq = how == 0 ? T : S + 6;
        Tensor q = rnd({B, H, Tq, D}, 1, dt).requires_grad_(), k = rnd({B, H, S, D}, 2, dt).requires_grad_();
        Tensor v = rnd({B, H, S, D}, 3, dt).requires_grad_();
        Tensor sinks = rnd({H}, 4, dt).requires_grad_();
        Tensor slopes = rand({H}, dt).requires_grad_();
        std::vector<std::int64_t> empty_rows;
        SdpaOptions o = SdpaOptions().sinks(sinks).alibi_slopes(slopes).use_reference(ref).need_weights(true);
        if (how == 0) {
          Tensor km = ones({H, Tq, S}, kBool);
          auto* mp = static_cast<bool*>(km.raw_data());
          for (std::int64_t j = 0; j < Tq * S; ++j) mp[j] = false;            // head 0
          for (std::int64_t j = 0; j < S; ++j) mp[(Tq + 2) * S + j] = false;  // head 1, row 2
          o.attn_mask(km).window_left(20).window_right(3);
          empty_rows = {2};
        } else {
          o.is_causal(true).window_left(1).window_right(0);
          for (std::int64_t t = 0; t < Tq - S; ++t) empty_rows.push_back(t);
        }
        Tensor go = rnd({B, H, Tq, D}, 9, dt);
        auto r = F::scaled_dot_product_attention(q, k, v, o);
        auto gs = autograd::grad({r.output}, {q, k, v, sinks, slopes}, {go}, true);
        for (auto& g : gs) CHECK(all_finite(g));
        for (std::int64_t t : empty_rows) {
          CAPTURE(t);
          CHECK(max_abs_diff(r.output.select(2, t), zeros({B, H, D}, dt)) == 0.0);
          CHECK(max_abs_diff(r.weights.select(2, t), zeros({B, H, S}, dt)) == 0.0);
          CHECK(max_abs_diff(gs[0].select(2, t), zeros({B, H, D}, dt)) == 0.0);
        }
        if (how == 0) {
          CHECK(max_abs_diff(r.output.select(1, 0), zeros({B, Tq, D}, dt)) == 0.0);
          CHECK(gs[3].to_vector<double>()[0] == 0.0);
          CHECK(gs[4].to_vector<double>()[0] == 0.0);
          CHECK(gs[3].to_vector<double>()[1] != 0.0);
        }
        // The empty rows' upstream gradient has no effect on anything.
        Tensor go2 = go.clone();
        {
          NoGradGuard ng;
          for (std::int64_t t : empty_rows) go2.select(2, t).fill_(1e30);
        }
        auto gs2 = autograd::grad({r.output}, {q, k, v, sinks, slopes}, {go2});
        for (std::size_t i = 1; i < gs.size(); ++i) {
          CAPTURE(i);
          CHECK(max_abs_diff(gs[i], gs2[i]) == 0.0);
        }
      }
}

TEST_CASE("sdpa ext: NaN/Inf in keys and values outside the window never leaks") {
  for (DType dt : {kFloat32, kFloat64})
    for (int how = 0; how < 2; ++how)
      for (bool ref : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(how);
        CAPTURE(ref);
        // how 0: causal window(20, 0), 64 queries at positions 236..299: keys < 216 are outside
        // every window (including part of the key tile 192..255). how 1: window(4, 4) over
        // 300 x 300; keys 150..159 are dirty and rows whose window misses them are checked.
        const std::int64_t T = how == 0 ? 64 : 300, S = 300, D = 4;
        const std::int64_t d0 = how == 0 ? 0 : 150, dn = how == 0 ? 216 : 10;
        SdpaOptions o = SdpaOptions().use_reference(ref).need_weights(true).sinks(rnd({2}, 8, dt));
        o.alibi_slopes(alibi_slopes(2).to(dt));
        if (how == 0) o.is_causal(true).window_left(20).window_right(0);
        else o.window_left(4).window_right(4);
        Tensor q = rnd({2, 2, T, D}, 1, dt), k = rnd({2, 1, S, D}, 2, dt), v = rnd({2, 1, S, D}, 3, dt);
        Tensor kd = k.clone(), vd = v.clone();
        {
          NoGradGuard ng;
          kd.narrow(2, d0, dn).fill_(std::nan(""));
          kd.narrow(2, d0, 3).fill_(kInf);
          vd.narrow(2, d0, dn).fill_(-kInf);
          vd.narrow(2, d0 + 1, 2).fill_(std::nan(""));
        }
        Tensor go = rnd({2, 2, T, D}, 7, dt);
        auto run = [&](const Tensor& kk, const Tensor& vv) {
          Tensor qq = q.detach().requires_grad_(), kl = kk.detach().requires_grad_(), vl = vv.detach().requires_grad_();
          auto r = F::scaled_dot_product_attention(qq, kl, vl, o);
          auto g = autograd::grad({r.output}, {qq, kl, vl}, {go});
          return std::vector<Tensor>{r.output, r.weights, g[0], g[1], g[2]};
        };
        auto clean = run(k, v), dirty = run(kd, vd);
        const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
        if (how == 0) {
          for (std::size_t i = 0; i < clean.size(); ++i) {
            CAPTURE(i);
            CHECK(all_finite(dirty[i]));
            CHECK(max_abs_diff(clean[i], dirty[i]) <= tol);
          }
          CHECK(max_abs_diff(dirty[3].narrow(2, 0, dn), zeros({2, 1, dn, D}, dt)) == 0.0);
          CHECK(max_abs_diff(dirty[4].narrow(2, 0, dn), zeros({2, 1, dn, D}, dt)) == 0.0);
        } else {
          // Rows t < 146 and t > 163 never see keys 150..159 (output, weights and dq rows).
          for (auto [t0, n] : {std::pair<std::int64_t, std::int64_t>{0, 146}, {164, 136}})
            for (std::size_t i : {0u, 1u, 2u}) {
              CAPTURE(t0);
              CAPTURE(i);
              CHECK(all_finite(dirty[i].narrow(2, t0, n)));
              CHECK(max_abs_diff(clean[i].narrow(2, t0, n), dirty[i].narrow(2, t0, n)) <= tol);
            }
        }
      }
}

TEST_CASE("sdpa ext: dropout draws are the same with the extensions, fused and reference") {
  Tensor q = rnd({2, 4, 40, 8}, 1, kFloat32), k = rnd({2, 2, 150, 8}, 2, kFloat32),
         v = rnd({2, 2, 150, 8}, 3, kFloat32);
  SdpaOptions o = SdpaOptions()
                      .is_causal(true)
                      .window_left(50)
                      .window_right(0)
                      .alibi_slopes(alibi_slopes(4))
                      .sinks(rnd({4}, 4, kFloat32));
  o.dropout_p(0.4).need_weights(true);
  Generator g1(3), g2(3), g3(3);
  auto a = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).generator(&g1));
  auto b = F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions(o).generator(&g2));
  auto c = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).generator(&g3).training(false));
  CHECK(max_abs_diff(a.output, b.output) <= 1e-5);
  CHECK(max_abs_diff(a.weights, c.weights) == 0.0);  // weights are pre-dropout
  CHECK(max_abs_diff(a.output, c.output) > 1e-3);
}

TEST_CASE("sdpa ext: unbounded and huge windows equal no window") {
  Tensor q = rnd({2, 2, 70, 8}, 1), k = rnd({2, 2, 90, 8}, 2), v = rnd({2, 2, 90, 8}, 3);
  auto base = F::scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true)).output;
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  for (auto [l, r] : {std::pair<std::int64_t, std::int64_t>{-1, -1}, {-7, -100}, {big, big}, {89, 0}, {90, 70}})
    for (bool ref : {false, true}) {
      CAPTURE(l);
      CAPTURE(r);
      CAPTURE(ref);
      auto o = F::scaled_dot_product_attention(
          q, k, v, SdpaOptions().is_causal(true).window_left(l).window_right(r).use_reference(ref));
      CHECK(max_abs_diff(o.output, base) <= 1e-12);
    }
  // The most negative width is unbounded too (no overflow in p - left).
  const std::int64_t small = std::numeric_limits<std::int64_t>::min();
  auto o =
      F::scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true).window_left(small).window_right(small));
  CHECK(max_abs_diff(o.output, base) <= 1e-12);
}

TEST_CASE("sdpa ext: errors name the problem") {
  Tensor q = rnd({2, 4, 6, 8}, 1), k = rnd({2, 2, 7, 8}, 2), v = rnd({2, 2, 7, 5}, 3);
  auto call = [&](const SdpaOptions& o) { return F::scaled_dot_product_attention(q, k, v, o).output; };
  CHECK_KILN_ERROR(call(SdpaOptions().alibi_slopes(tensor({1, 2, 3, 4}))),
                   "[scaled_dot_product_attention] alibi_slopes must be floating point, got int64");
  CHECK_KILN_ERROR(call(SdpaOptions().alibi_slopes(zeros({3}))),
                   "[scaled_dot_product_attention] alibi_slopes of shape (3,) cannot be broadcast to (batch..., H) = "
                   "(2, 4)");
  CHECK_KILN_ERROR(call(SdpaOptions().alibi_slopes(zeros({3, 4}))), "alibi_slopes of shape (3, 4) cannot be broadcast");
  CHECK_KILN_ERROR(call(SdpaOptions().alibi_slopes(zeros({1, 2, 4}))), "cannot be broadcast to (batch..., H) = (2, 4)");
  CHECK_KILN_ERROR(call(SdpaOptions().sinks(zeros({2}))),
                   "[scaled_dot_product_attention] sinks of shape (2,) cannot be broadcast to (batch..., H) = (2, 4)");
  CHECK_KILN_ERROR(call(SdpaOptions().sinks(zeros({4}, kBool))), "sinks must be floating point, got bool");
  CHECK_KILN_ERROR(call(SdpaOptions().sinks(zeros({4}, kInt64)).use_reference(true)), "sinks must be floating point");
  CHECK_KILN_ERROR(F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions().alibi_slopes(zeros({5}))),
                   "alibi_slopes of shape (5,)");
  // Accepted: (H,), (batch..., H), size-1 broadcast, float32 on float64 inputs (converted).
  auto a = call(SdpaOptions().alibi_slopes(alibi_slopes(4)).sinks(zeros({2, 1})));
  auto b = call(SdpaOptions().alibi_slopes(alibi_slopes(4).to(kFloat64).expand({2, 4})).sinks(zeros({1}, kFloat64)));
  CHECK(max_abs_diff(a, b) <= 1e-6);
}
