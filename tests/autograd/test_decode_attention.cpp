// The attention core's few-query path (T * G <= 16 query rows per kv head: KV-cache decoding,
// grouped-query heads) and its split of long key ranges into chunks whose softmax states merge:
// against the composite reference and host loops with every option (masks, causal, window, ALiBi,
// sinks, dropout, weights, GQA), empty rows and NaN, strided caches and head dims off the vector
// width and gradients through its logsumexp. (MultiHeadAttention decoding on this path:
// tests/nn/test_mha_kv_cache.cpp.)
#include "autograd/test_sdpa_ext_util.hpp"

using namespace kiln;
using namespace kx;

namespace {

struct Feat {
  const char* name;
  bool causal;
  std::int64_t wl, wr;
  bool alibi, sinks;
  int mask;  // 0 none, 1 bool (T, S), 2 float (H, T, S) with -inf, 3 key padding (B, 1, 1, S)
  double dropout;
  bool weights;
};

const Feat kFeats[] = {
    {"plain", false, -1, -1, false, false, 0, 0.0, true},
    {"causal", true, -1, -1, false, false, 0, 0.0, false},
    {"causal window", true, 70, 0, false, false, 0, 0.0, true},
    {"two-sided window bool", false, 40, 3, false, false, 1, 0.0, false},
    {"alibi", true, -1, -1, true, false, 0, 0.0, true},
    {"sinks float mask", false, -1, -1, false, true, 2, 0.0, true},
    {"key padding", false, -1, -1, false, false, 3, 0.0, false},
    {"dropout", true, -1, -1, false, false, 0, 0.3, false},
    {"all", true, 150, 0, true, true, 2, 0.2, true},
};

SdpaOptions feat_options(const Feat& f, std::int64_t B, std::int64_t H, std::int64_t T, std::int64_t S, DType dt,
                         std::uint64_t seed) {
  SdpaOptions o;
  Generator g(seed);
  o.is_causal(f.causal).window_left(f.wl).window_right(f.wr).need_weights(f.weights);
  if (f.alibi) o.alibi_slopes(mul(rand({B, H}, dt, &g), scalar_tensor(0.1, dt)));
  if (f.sinks) o.sinks(rnd({H}, seed + 7, dt, 2.0));
  if (f.mask == 1) o.attn_mask(gt(rand({T, S}, kFloat64, &g), scalar_tensor(0.3, kFloat64)));
  if (f.mask == 2)
    o.attn_mask(where(lt(rand({H, T, S}, kFloat64, &g), scalar_tensor(0.2, kFloat64)), Scalar(-kInf),
                      randn({H, T, S}, dt, &g)));
  if (f.mask == 3) {
    Tensor m = zeros({B, 1, 1, S}, kBool);
    auto* mp = static_cast<bool*>(m.raw_data());
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t j = 0; j < S; ++j) mp[b * S + j] = j < std::max<std::int64_t>(1, S - 70 * b - 1);
    o.attn_mask(m);
  }
  if (f.dropout > 0) o.dropout_p(f.dropout);
  return o;
}

}  // namespace

TEST_CASE("decode attention: few-query path and its key-chunk split match the reference") {
  const std::int64_t Ts[] = {1, 2, 3};
  const std::int64_t Ss[] = {1, 64, 65, 300};
  const std::pair<std::int64_t, std::int64_t> heads[] = {{4, 4}, {4, 2}, {8, 1}};
  int n = 0;
  for (bool split : {false, true})
    for (DType dt : {kFloat32, kFloat64})
      for (const Feat& f : kFeats)
        for (std::int64_t T : Ts)
          for (std::int64_t S : Ss)
            for (auto [H, Hkv] : heads) {
              ++n;
              if (split && S <= 64) continue;  // one key tile: nothing to split
              const std::int64_t B = n % 2 ? 1 : 2, Dk = n % 3 ? 16 : 8, Dv = n % 5 ? 32 : 20;
              CAPTURE(split);
              CAPTURE(dtype_name(dt));
              CAPTURE(f.name);
              CAPTURE(T);
              CAPTURE(S);
              CAPTURE(H);
              CAPTURE(Hkv);
              CAPTURE(B);
              Tensor q = rnd({B, H, T, Dk}, 100 + static_cast<std::uint64_t>(n), dt);
              Tensor k = rnd({B, Hkv, S, Dk}, 200 + static_cast<std::uint64_t>(n), dt);
              Tensor v = rnd({B, Hkv, S, Dv}, 300 + static_cast<std::uint64_t>(n), dt);
              SdpaOptions o = feat_options(f, B, H, T, S, dt, static_cast<std::uint64_t>(n));
              Generator g1(5), g2(5);
              SdpaResult a;
              {
                std::optional<SplitEverything> s;
                if (split) s.emplace();
                a = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).generator(&g1));
              }
              auto b = F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions(o).generator(&g2));
              kt::expect_shape(a.output, {B, H, T, Dv});
              const double tol = dt == kFloat32 ? 1e-5 : 1e-10;
              CHECK(max_abs_diff(a.output, b.output) <= tol);
              if (f.weights) CHECK(max_abs_diff(a.weights, b.weights) <= tol);
            }
}

TEST_CASE("decode attention: a long cache split over chunks matches host loops") {
  struct Case {
    std::int64_t T, S, H, Hkv;
    bool causal;
    std::int64_t wl;
    bool alibi, sinks;
  };
  const Case cases[] = {{1, 1000, 4, 1, true, -1, false, false},
                        {1, 1000, 4, 2, true, 300, true, true},
                        {2, 777, 2, 1, true, 500, false, true},
                        {3, 640, 6, 3, false, -1, true, false},
                        {1, 129, 8, 8, true, -1, true, true}};
  const std::int64_t B = 2, D = 5;
  SplitEverything split;
  int n = 0;
  for (const Case& c : cases) {
    ++n;
    CAPTURE(n);
    HostExt h{B, c.H, c.Hkv, c.T, c.S, D, D, 0.6, c.causal, c.wl, -1, {}, {}, {}, {}, false, {}, {}};
    Tensor q = rnd({B, c.H, c.T, D}, 1), k = rnd({B, c.Hkv, c.S, D}, 2), v = rnd({B, c.Hkv, c.S, D}, 3);
    h.q = q.to_vector<double>();
    h.k = k.to_vector<double>();
    h.v = v.to_vector<double>();
    SdpaOptions o = SdpaOptions().scale(0.6).is_causal(c.causal).window_left(c.wl).window_right(-1).need_weights(true);
    if (c.alibi) {
      Generator g(static_cast<std::uint64_t>(n));
      Tensor sl = mul(rand({B, c.H}, kFloat64, &g), scalar_tensor(0.05, kFloat64));
      o.alibi_slopes(sl);
      h.slopes = sl.to_vector<double>();
    }
    if (c.sinks) {
      Tensor sk = rnd({c.H}, 9, kFloat64, 2.0);
      o.sinks(sk);
      h.sinks = sk.unsqueeze(0).expand({B, c.H}).contiguous().to_vector<double>();
    }
    HostOut e = host_sdpa_ext(h);
    auto r = F::scaled_dot_product_attention(q, k, v, o);
    kt::expect_values(r.output, e.out, 1e-12, 1e-10);
    kt::expect_values(r.weights, e.weights, 1e-12, 1e-10);
  }
}

TEST_CASE("decode attention: empty rows and NaN in masked keys stay exact across chunks") {
  const std::int64_t B = 2, H = 2, Hkv = 1, S = 600, D = 4;
  for (DType dt : {kFloat32, kFloat64})
    for (bool split : {false, true}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(split);
      std::optional<SplitEverything> guard;
      if (split) guard.emplace();
      // Example 0 keeps keys < 100 (all in the first chunk), example 1 keys >= 500 (the last);
      // head 1 of example 0 keeps nothing.
      Tensor keep = zeros({B, H, 1, S}, kBool);
      auto* kp = static_cast<bool*>(keep.raw_data());
      for (std::int64_t j = 0; j < S; ++j) {
        kp[j] = j < 100;
        kp[(2 + 0) * S + j] = j >= 500;
        kp[(2 + 1) * S + j] = j >= 500;
      }
      Tensor q = rnd({B, H, 1, D}, 1, dt), k = rnd({B, Hkv, S, D}, 2, dt), v = rnd({B, Hkv, S, D}, 3, dt);
      Tensor kd = k.clone(), vd = v.clone();
      {
        NoGradGuard ng;
        kd.select(0, 0).narrow(1, 100, 300).fill_(std::nan(""));
        vd.select(0, 0).narrow(1, 250, 350).fill_(kInf);
        kd.select(0, 1).narrow(1, 0, 500).fill_(-kInf);
        vd.select(0, 1).narrow(1, 10, 100).fill_(std::nan(""));
      }
      Tensor sinks = rnd({H}, 4, dt);
      for (bool with_sinks : {false, true}) {
        CAPTURE(with_sinks);
        SdpaOptions o = SdpaOptions().attn_mask(keep).need_weights(true);
        if (with_sinks) o.sinks(sinks);
        Tensor go = rnd({B, H, 1, D}, 7, dt);
        auto run = [&](const Tensor& kk, const Tensor& vv) {
          Tensor qq = q.detach().requires_grad_(), kl = kk.detach().requires_grad_(), vl = vv.detach().requires_grad_();
          auto r = F::scaled_dot_product_attention(qq, kl, vl, o);
          auto g = autograd::grad({r.output}, {qq, kl, vl}, {go});
          return std::vector<Tensor>{r.output, r.weights, g[0], g[1], g[2]};
        };
        auto clean = run(k, v), dirty = run(kd, vd);
        const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
        for (std::size_t i = 0; i < clean.size(); ++i) {
          CAPTURE(i);
          CHECK(all_finite(dirty[i]));
          CHECK(max_abs_diff(clean[i], dirty[i]) <= tol);
        }
        // The empty row: output, weights and query gradient exactly 0.
        CHECK(max_abs_diff(dirty[0].select(0, 0).select(0, 1), zeros({1, D}, dt)) == 0.0);
        CHECK(max_abs_diff(dirty[1].select(0, 0).select(0, 1), zeros({1, S}, dt)) == 0.0);
        CHECK(max_abs_diff(dirty[2].select(0, 0).select(0, 1), zeros({1, D}, dt)) == 0.0);
        auto ref = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).use_reference(true));
        CHECK(max_abs_diff(clean[0], ref.output) <= tol);
        CHECK(max_abs_diff(clean[1], ref.weights) <= tol);
      }
      // NaN in one attended value (in the last chunk) makes exactly the rows attending it NaN.
      Tensor vn = v.clone();
      {
        NoGradGuard ng;
        vn.select(0, 1).select(1, 550).fill_(std::nan(""));
      }
      auto out = F::scaled_dot_product_attention(q, k, vn, SdpaOptions().attn_mask(keep)).output;
      auto vals = out.to_vector<double>();  // (B, H, 1, D)
      for (std::int64_t i = 0; i < B * H * D; ++i) {
        CAPTURE(i);
        CHECK(std::isnan(vals[static_cast<std::size_t>(i)]) == (i >= 2 * D));
      }
    }
}

TEST_CASE("decode attention: strided caches and head dims off the vector width") {
  const std::int64_t B = 2, H = 6, Hkv = 2, Smax = 400, S = 333, T = 2;
  for (DType dt : {kFloat32, kFloat64})
    for (bool split : {false, true})
      for (auto [Dk, Dv] : {std::pair<std::int64_t, std::int64_t>{16, 16}, {24, 40}, {3, 5}}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(split);
        CAPTURE(Dk);
        CAPTURE(Dv);
        std::optional<SplitEverything> guard;
        if (split) guard.emplace();
        // Keys as the first S positions of a (B, Hkv, Smax, Dk) cache buffer; values stored
        // (B, Hkv, Dv, Smax), i.e. read with a stride along the head dim.
        Tensor kbuf = rnd({B, Hkv, Smax, Dk}, 2, dt), vbuf = rnd({B, Hkv, Dv, Smax}, 3, dt);
        Tensor k = kbuf.narrow(2, 0, S), v = vbuf.transpose(2, 3).narrow(2, 0, S);
        Tensor q = rnd({B, T, H, Dk}, 1, dt).transpose(1, 2);
        REQUIRE(!v.is_contiguous());
        SdpaOptions o =
            SdpaOptions().is_causal(true).window_left(250).window_right(0).sinks(rnd({H}, 4, dt)).need_weights(true);
        auto a = F::scaled_dot_product_attention(q, k, v, o);
        auto b = F::scaled_dot_product_attention_reference(q, k.contiguous(), v.contiguous(), o);
        const double tol = dt == kFloat32 ? 1e-5 : 1e-10;
        CHECK(max_abs_diff(a.output, b.output) <= tol);
        CHECK(max_abs_diff(a.weights, b.weights) <= tol);
      }
}

TEST_CASE("decode attention: gradients through the split forward's logsumexp (float64 gradcheck)") {
  SplitEverything split;
  const std::int64_t H = 2, Hkv = 1, T = 1, S = 200, D = 3;
  Tensor q = kt::leaf({1, H, T, D}, 1), k = kt::leaf({1, Hkv, S, D}, 2), v = kt::leaf({1, Hkv, S, D}, 3);
  Tensor sinks = kt::leaf({H}, 4), slopes = kt::leaf({H}, 5, 0.01);
  kt::grad_ok(
      [](const std::vector<Tensor>& x) {
        SdpaOptions o = SdpaOptions().is_causal(true).window_left(150).window_right(0).sinks(x[3]).alibi_slopes(x[4]);
        return F::scaled_dot_product_attention(x[0], x[1], x[2], o).output;
      },
      {q, k, v, sinks, slopes});
}
