// nn::MultiHeadAttention: parameters and their names, initialization, shapes, the weights it
// returns, rows with nothing to attend to, NaN in padding, dropout, and error messages.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

nn::MultiHeadAttention make64(const O& o, std::uint64_t seed = 3) {
  nn::MultiHeadAttention m(o);
  m->to(kFloat64);
  randomize(*m, seed, 0.5);
  return m;
}

// Row t (over the last two dims) of every batch element of a (B, T, C) tensor.
Tensor row(const Tensor& x, std::int64_t b, std::int64_t t) { return x.select(0, b).select(0, t); }

}  // namespace

TEST_CASE("mha: parameter names, shapes and the options that size them") {
  nn::MultiHeadAttention m(O(8, 2));
  CHECK(m->state_dict().keys() == std::vector<std::string>{"q_proj.weight", "q_proj.bias", "k_proj.weight",
                                                           "k_proj.bias", "v_proj.weight", "v_proj.bias",
                                                           "out_proj.weight", "out_proj.bias"});
  kt::expect_shape(m->q_proj->weight, {8, 8});
  kt::expect_shape(m->out_proj->bias, {8});

  nn::MultiHeadAttention g(O(12, 4).num_kv_heads(2).head_dim(5).v_head_dim(3).kdim(7).vdim(6).out_dim(9));
  kt::expect_shape(g->q_proj->weight, {20, 12});   // (H * Dk, E)
  kt::expect_shape(g->k_proj->weight, {10, 7});    // (Hkv * Dk, kdim)
  kt::expect_shape(g->v_proj->weight, {6, 6});     // (Hkv * Dv, vdim)
  kt::expect_shape(g->out_proj->weight, {9, 12});  // (out_dim, H * Dv)
  Tensor y = g(randn({2, 3, 12}), randn({2, 5, 7}), randn({2, 5, 6}));
  kt::expect_shape(y, {2, 3, 9});

  nn::MultiHeadAttention n(O(8, 2).qk_norm(nn::Norm::LayerNorm).bias(false).v_bias(true));
  CHECK(n->state_dict().keys() == std::vector<std::string>{"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                           "v_proj.bias", "out_proj.weight", "q_norm.weight",
                                                           "q_norm.bias", "k_norm.weight", "k_norm.bias"});
  kt::expect_shape(n->q_norm->named_parameters()["weight"], {4});
  nn::MultiHeadAttention r(O(8, 2).qk_norm(nn::Norm::RMSNorm));
  CHECK(r->named_parameters().contains("k_norm.weight"));
  CHECK_FALSE(r->named_parameters().contains("k_norm.bias"));
  CHECK(fmt::format("{}", g).find("MultiHeadAttention(embed_dim=12, num_heads=4, num_kv_heads=2, head_dim=5") !=
        std::string::npos);
}

TEST_CASE("mha: default init is Xavier-uniform per projection matrix with zero biases") {
  Generator gen(1);
  nn::MultiHeadAttention m(O(256, 4).kdim(128).out_dim(64).generator(&gen));
  for (const char* name : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
    CAPTURE(name);
    Tensor w = m->named_parameters()[std::string(name) + ".weight"];
    const double bound = std::sqrt(6.0 / static_cast<double>(w.size(0) + w.size(1)));
    auto v = w.to_vector<double>();
    double mx = 0, s2 = 0;
    for (double x : v) {
      mx = std::max(mx, std::abs(x));
      s2 += x * x;
    }
    CHECK(mx <= bound);
    CHECK(mx >= 0.99 * bound);
    const double var = s2 / static_cast<double>(v.size());
    CHECK(var == doctest::Approx(bound * bound / 3.0).epsilon(0.05));
    CHECK(all_zero(m->named_parameters()[std::string(name) + ".bias"]));
  }
  // same generator seed, same parameters; reset_parameters re-draws from the generator
  Generator gen2(1);
  nn::MultiHeadAttention m2(O(256, 4).kdim(128).out_dim(64).generator(&gen2));
  CHECK(equal(m->q_proj->weight, m2->q_proj->weight));
  CHECK(equal(m->out_proj->weight, m2->out_proj->weight));
  m2->reset_parameters();
  CHECK_FALSE(equal(m->q_proj->weight, m2->q_proj->weight));
}

TEST_CASE("mha: injected initializers are used, with the module's generator") {
  Generator gen(9);
  std::vector<Generator*> seen;
  nn::MultiHeadAttention m(O(4, 2)
                               .generator(&gen)
                               .kernel_init([&](Tensor w, Generator* g) {
                                 seen.push_back(g);
                                 nn::init::constant_(w, 0.5);
                               })
                               .out_kernel_init([](Tensor w, Generator*) { nn::init::constant_(w, 0.25); })
                               .bias_init([](Tensor b, Generator*) { nn::init::constant_(b, -1.0); }));
  CHECK(seen == std::vector<Generator*>{&gen, &gen, &gen});
  for (const char* n : {"q_proj.weight", "k_proj.weight", "v_proj.weight"})
    CHECK(m->state_dict()[n].to_vector<float>() == std::vector<float>(16, 0.5f));
  CHECK(m->out_proj->weight.to_vector<float>() == std::vector<float>(16, 0.25f));
  CHECK(m->v_proj->bias.to_vector<float>() == std::vector<float>(4, -1.0f));
  CHECK(m->out_proj->bias.to_vector<float>() == std::vector<float>(4, -1.0f));
  // reset_parameters runs them again
  {
    NoGradGuard ng;
    m->q_proj->weight.fill_(3.0);
  }
  m->reset_parameters();
  CHECK(m->q_proj->weight.to_vector<float>() == std::vector<float>(16, 0.5f));
  CHECK(seen.size() == 6);
}

TEST_CASE("mha: call forms, extra leading batch dims and unbatched input agree") {
  nn::MultiHeadAttention m = make64(O(6, 3));
  Tensor x = rnd({2, 3, 4, 6}, 1), kv = rnd({2, 3, 5, 6}, 2);
  Tensor lengths = tensor({5, 2, 3, 4, 1, 5}).reshape({2, 3});
  nn::MhaForward f = nn::MhaForward().key_padding(lengths).is_causal(true);
  Tensor y = m(x, kv, f);
  kt::expect_shape(y, {2, 3, 4, 6});
  // same as the flattened batch
  Tensor yf = m(x.reshape({6, 4, 6}), kv.reshape({6, 5, 6}),
                nn::MhaForward().key_padding(lengths.reshape({6})).is_causal(true));
  CHECK(max_abs_diff(y.reshape({6, 4, 6}), yf) < 1e-14);
  // mha(q, kv) == mha(q, kv, kv); mha(x) == mha(x, x, x)
  CHECK(max_abs_diff(y, m(x, kv, kv, f)) == 0.0);
  Tensor xs = rnd({2, 4, 6}, 3);
  CHECK(max_abs_diff(m(xs), m(xs, xs, xs)) == 0.0);
  // unbatched (T, E) == a batch of one
  Tensor u = m(xs.select(0, 1), nn::MhaForward().key_padding(full({}, 3, kInt64)));
  kt::expect_shape(u, {4, 6});
  CHECK(max_abs_diff(u, m(xs, nn::MhaForward().key_padding(tensor({4, 3}))).select(0, 1)) < 1e-14);
  // a float32 module on float32 input
  nn::MultiHeadAttention m32(O(6, 3));
  kt::expect_shape(m32(randn({2, 4, 6})), {2, 4, 6});
}

TEST_CASE("mha: need_weights returns per-head probabilities, rows summing to 1, or their head mean") {
  nn::MultiHeadAttention m = make64(O(8, 4).num_kv_heads(2));
  Tensor q = rnd({2, 3, 8}, 1), kv = rnd({2, 5, 8}, 2);
  nn::MhaForward f = nn::MhaForward().key_padding(tensor({5, 2})).need_weights(true);
  nn::MhaResult r = m->forward_with_weights(q, kv, f);
  kt::expect_shape(r.weights, {2, 4, 3, 5});
  Tensor sums = sum(r.weights, {-1});
  CHECK(max_abs_diff(sums, ones_like(sums)) < 1e-14);
  CHECK(all_zero(r.weights.select(0, 1).slice(-1, 2, 5)));  // padded keys get 0
  nn::MhaResult a = m->forward_with_weights(q, kv, f.average_attn_weights(true));
  kt::expect_shape(a.weights, {2, 3, 5});
  CHECK(max_abs_diff(a.weights, mean(r.weights, {1})) < 1e-15);
  CHECK(max_abs_diff(a.output, r.output) == 0.0);
  CHECK_FALSE(m->forward_with_weights(q, kv).weights.defined());  // not computed unless asked
}

TEST_CASE("mha: a fully masked row outputs exactly out_proj.bias and gets exactly zero gradient") {
  SUBCASE("lengths = 0 for one example (cross- and self-attention)") {
    nn::MultiHeadAttention m = make64(O(6, 2).num_kv_heads(1));
    Tensor q = kt::leaf({2, 3, 6}, 1), kv = kt::leaf({2, 4, 6}, 2);
    nn::MhaForward f = nn::MhaForward().key_padding(tensor({4, 0})).need_weights(true);
    nn::MhaResult r = m->forward_with_weights(q, kv, f);
    for (std::int64_t t = 0; t < 3; ++t) CHECK(equal(row(r.output, 1, t), m->out_proj->bias));
    CHECK(all_zero(r.weights.select(0, 1)));
    (sum(r.output * rnd({2, 3, 6}, 5)) + sum(r.weights * rnd({2, 2, 3, 4}, 6))).backward();
    CHECK(all_zero(q.grad().select(0, 1)));
    CHECK(all_zero(kv.grad().select(0, 1)));
    CHECK_FALSE(all_zero(q.grad().select(0, 0)));
    for (Tensor p : m->parameters()) CHECK(all_finite(p.grad()));

    Tensor x = kt::leaf({2, 3, 6}, 3);
    Tensor y = m(x, nn::MhaForward().key_padding(tensor({0, 3})).is_causal(true));
    for (std::int64_t t = 0; t < 3; ++t) CHECK(equal(row(y, 0, t), m->out_proj->bias));
    sum(y * rnd({2, 3, 6}, 7)).backward();
    CHECK(all_zero(x.grad().select(0, 0)));
  }
  SUBCASE("causal with a mask removing the diagonal: query 0 has nothing left") {
    nn::MultiHeadAttention m = make64(O(4, 2));
    Tensor q = kt::leaf({2, 3, 4}, 1), k = kt::leaf({2, 3, 4}, 2), v = kt::leaf({2, 3, 4}, 3);
    Tensor keep = logical_not(eye(3, 3, kBool));
    nn::MhaResult r =
        m->forward_with_weights(q, k, v, nn::MhaForward().attn_mask(keep).is_causal(true).need_weights(true));
    for (std::int64_t b = 0; b < 2; ++b) {
      CHECK(equal(row(r.output, b, 0), m->out_proj->bias));
      CHECK_FALSE(equal(row(r.output, b, 1), m->out_proj->bias));
    }
    sum(r.output * rnd({2, 3, 4}, 5)).backward();
    for (std::int64_t b = 0; b < 2; ++b) {
      CHECK(all_zero(row(q.grad(), b, 0)));
      CHECK_FALSE(all_zero(row(q.grad(), b, 2)));  // (query 1 sees one key: its softmax is constant)
      CHECK(all_zero(row(k.grad(), b, 2)));        // key 2 is nobody's: causal allows it only to query 2
    }
  }
  SUBCASE("a float mask of -inf, and no output bias: exactly zero") {
    nn::MultiHeadAttention m = make64(O(4, 2).out_bias(false));
    Tensor mask = tensor({0.0, 0.0, -kInf, -kInf, -kInf, -kInf}, kFloat64).reshape({2, 3});
    Tensor y = m(rnd({1, 2, 4}, 1), rnd({1, 3, 4}, 2), nn::MhaForward().attn_mask(mask));
    CHECK(all_zero(row(y, 0, 1)));
    CHECK_FALSE(all_zero(row(y, 0, 0)));
  }
}

TEST_CASE("mha: NaN/Inf in padded keys and values never reaches outputs or gradients") {
  const double bad[] = {kNaN, kInf, -kInf};
  for (int mode = 0; mode < 4; ++mode) {
    CAPTURE(mode);
    // 0: lengths, 1: (B, S) keep-mask, 2: a bool attn_mask with dead columns, 3: GQA + qk_norm + need_weights
    O o = mode == 3 ? O(8, 4).num_kv_heads(2).qk_norm(nn::Norm::RMSNorm).kdim(5).vdim(3) : O(6, 2).kdim(5).vdim(3);
    nn::MultiHeadAttention m = make64(o);
    nn::MhaForward f;
    Tensor keep = tensor({true, true, true, false, false, true, true, false, true, false}).reshape({2, 5});
    if (mode == 1) f.key_padding(keep);
    else if (mode == 2) f.attn_mask(keep.unsqueeze(1).unsqueeze(1)).is_causal(true);
    else f.key_padding(tensor({3, 2}));
    if (mode == 3) f.need_weights(true);
    const std::int64_t E = o.embed_dim();
    Tensor q0 = rnd({2, 4, E}, 1), k0 = rnd({2, 5, 5}, 2), v0 = rnd({2, 5, 3}, 3);
    Tensor gy = rnd({2, 4, E}, 4);
    auto run = [&](bool poison) {
      Tensor k = k0.clone(), v = v0.clone();
      if (poison) {
        NoGradGuard ng;
        auto kk = k.to_vector<double>();
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t s = 0; s < 5; ++s) {
            const bool padded =
                mode == 0 || mode == 3 ? s >= (b == 0 ? 3 : 2) : !keep.select(0, b).select(0, s).item<bool>();
            if (!padded) continue;
            k.select(0, b).select(0, s).fill_(bad[(b + s) % 3]);
            v.select(0, b).select(0, s).fill_(bad[(b + s + 1) % 3]);
          }
      }
      Tensor q = q0.clone().requires_grad_();
      k.requires_grad_();
      v.requires_grad_();
      m->zero_grad();
      nn::MhaResult r = m->forward_with_weights(q, k, v, f);
      Tensor loss = sum(r.output * gy);
      if (r.weights.defined()) loss = loss + sum(r.weights);
      loss.backward();
      std::vector<Tensor> out{r.output, q.grad(), k.grad(), v.grad()};
      if (r.weights.defined()) out.push_back(r.weights);
      for (Tensor p : m->parameters()) out.push_back(p.grad());
      return out;
    };
    auto clean = run(false), poisoned = run(true);
    REQUIRE(clean.size() == poisoned.size());
    for (std::size_t i = 0; i < clean.size(); ++i) {
      CAPTURE(i);
      CHECK(all_finite(poisoned[i]));
      CHECK(max_abs_diff(clean[i], poisoned[i]) == 0.0);
    }
  }
}

TEST_CASE("mha: dropout is deterministic with a seeded generator and off in eval mode") {
  auto build = [](Generator* g, double p, double po) {
    nn::MultiHeadAttention m(O(8, 2).dropout(p).out_dropout(po).generator(g));
    randomize(*m, 3);
    return m;
  };
  Tensor x = randn({2, 6, 8});
  Generator g1(42), g2(42);
  nn::MultiHeadAttention a = build(&g1, 0.3, 0.2), b = build(&g2, 0.3, 0.2), plain = build(nullptr, 0.0, 0.0);
  CHECK(a->is_training());
  Tensor ya = a(x), yb = b(x);
  CHECK(equal(ya, yb));          // same seed, same masks
  CHECK_FALSE(equal(ya, a(x)));  // the generator moved on
  Tensor ref = plain(x);
  CHECK_FALSE(allclose(ya, ref, 1e-5, 1e-6));
  a->eval();  // switches both dropouts off
  CHECK(equal(a(x), ref));
  a->train();
  CHECK_FALSE(allclose(a(x), ref, 1e-5, 1e-6));
  // out_dropout alone zeroes whole output elements
  Generator g3(1);
  nn::MultiHeadAttention od = build(&g3, 0.0, 0.5);
  Tensor yo = od(x);
  std::int64_t zeros_seen = 0;
  auto vo = yo.to_vector<float>(), vr = ref.to_vector<float>();
  for (std::size_t i = 0; i < vo.size(); ++i) {
    if (vo[i] == 0.0f) ++zeros_seen;
    else CHECK(vo[i] == doctest::Approx(2.0f * vr[i]).epsilon(1e-4));
  }
  CHECK(zeros_seen > 10);
}

TEST_CASE("mha: broadcast_dropout shares one (T, S) mask over batch and heads") {
  // Values are one-hot in the key position and the value/output projections are identities, so
  // output[b, t, h*S + s] is the dropped-out probability of (b, h, t, s).
  const std::int64_t B = 3, H = 2, T = 4, S = 6;
  for (std::int64_t Hkv : {2, 1})
    for (bool bcast : {true, false}) {
      CAPTURE(Hkv);
      CAPTURE(bcast);
      Generator gen(7);
      nn::MultiHeadAttention m(O(8, H)
                                   .num_kv_heads(Hkv)
                                   .head_dim(3)
                                   .v_head_dim(S)
                                   .kdim(5)
                                   .vdim(Hkv * S)
                                   .out_dim(H * S)
                                   .dropout(0.5)
                                   .broadcast_dropout(bcast)
                                   .generator(&gen)
                                   .bias(false));
      m->to(kFloat64);
      {
        NoGradGuard ng;
        m->v_proj->weight.copy_(eye(Hkv * S, Hkv * S, kFloat64));
        m->out_proj->weight.copy_(eye(H * S, H * S, kFloat64));
      }
      Tensor value = zeros({B, S, Hkv * S}, kFloat64);
      for (std::int64_t h = 0; h < Hkv; ++h)
        value.slice(-1, h * S, (h + 1) * S).copy_(eye(S, S, kFloat64).expand({B, S, S}));
      Tensor q = rnd({B, T, 8}, 1), k = rnd({B, S, 5}, 2);
      nn::MhaResult r = m->forward_with_weights(q, k, value, nn::MhaForward().need_weights(true));
      Tensor P = r.weights;                                        // (B, H, T, S), pre-dropout
      Tensor Pd = r.output.reshape({B, T, H, S}).transpose(1, 2);  // (B, H, T, S), dropped out
      auto p = P.contiguous().to_vector<double>(), pd = Pd.contiguous().to_vector<double>();
      // recover each (b, h) keep pattern over (T, S)
      std::vector<std::vector<int>> patterns;
      for (std::int64_t bh = 0; bh < B * H; ++bh) {
        std::vector<int> pat;
        for (std::int64_t i = 0; i < T * S; ++i) {
          const std::size_t e = static_cast<std::size_t>(bh * T * S + i);
          REQUIRE(p[e] > 0.0);
          const bool kept = pd[e] != 0.0;
          if (kept) CHECK(pd[e] == doctest::Approx(2.0 * p[e]).epsilon(1e-12));
          pat.push_back(kept);
        }
        patterns.push_back(pat);
      }
      bool all_same = true;
      for (const auto& pat : patterns) all_same = all_same && pat == patterns[0];
      CHECK(all_same == bcast);
      int kept = 0;
      for (int v : patterns[0]) kept += v;
      CHECK(kept > 0);
      CHECK(kept < T * S);
      // eval: no dropout at all, so the output equals the weights
      m->eval();
      nn::MhaResult e = m->forward_with_weights(q, k, value, nn::MhaForward().need_weights(true));
      CHECK(max_abs_diff(e.output.reshape({B, T, H, S}).transpose(1, 2), e.weights) < 1e-15);
    }
}

TEST_CASE("mha: broadcast_dropout with a vanishing rate equals eval mode (grouped heads, masks)") {
  Generator gen(1);
  nn::MultiHeadAttention m = make64(O(8, 4).num_kv_heads(2).dropout(1e-12).broadcast_dropout(true).generator(&gen));
  Tensor q = rnd({2, 3, 8}, 1), kv = rnd({2, 5, 8}, 2);
  nn::MhaForward f = nn::MhaForward().key_padding(tensor({5, 0})).is_causal(true).need_weights(true);
  m->train();
  nn::MhaResult a = m->forward_with_weights(q, kv, f);
  m->eval();
  nn::MhaResult b = m->forward_with_weights(q, kv, f);
  CHECK(max_abs_diff(a.output, b.output) < 1e-10);
  CHECK(max_abs_diff(a.weights, b.weights) == 0.0);
  for (std::int64_t t = 0; t < 3; ++t) CHECK(equal(row(a.output, 1, t), m->out_proj->bias));
}

TEST_CASE("mha: broadcast_dropout keeps non-finite values out of rows that do not attend to them") {
  Generator gen(3);
  nn::MultiHeadAttention m(O(4, 2).dropout(0.3).broadcast_dropout(true).generator(&gen));
  m->to(kFloat64);
  randomize(*m, 2);
  Tensor q = rnd({1, 3, 4}, 1), kv = rnd({1, 3, 4}, 2);
  {
    NoGradGuard ng;
    m->v_proj->weight.select(0, 0).fill_(kInf);  // every value of kv head 0, feature 0 is non-finite
  }
  // rows attend; the core's semantics: an attended non-finite value makes the row NaN
  Tensor y = m(q, kv);
  CHECK_FALSE(all_finite(y));
  // a row with nothing to attend to stays exactly the bias
  Tensor keep = tensor({false, false, false, true, true, true, true, true, true}).reshape({3, 3});
  Tensor y2 = m(q, kv, nn::MhaForward().attn_mask(keep));
  CHECK(equal(row(y2, 0, 0), m->out_proj->bias));
}

TEST_CASE("mha: scale and qk_norm") {
  nn::MultiHeadAttention m = make64(O(4, 2));
  nn::MhaResult r = m->forward_with_weights(rnd({1, 3, 4}, 1), rnd({1, 5, 4}, 2), nn::MhaForward().need_weights(true));
  nn::MultiHeadAttention z(O(4, 2).scale(0.0));
  nn::MhaResult rz = z->forward_with_weights(randn({1, 3, 4}), randn({1, 5, 4}), nn::MhaForward().need_weights(true));
  CHECK(max_abs_diff(rz.weights, full({1, 2, 3, 5}, 0.2)) < 1e-7);  // uniform
  CHECK_FALSE(max_abs_diff(r.weights, full({1, 2, 3, 5}, 0.2, kFloat64)) < 1e-3);
  // a per-head norm makes the logits invariant to the scale of the q/k projections
  for (auto kind : {nn::Norm::LayerNorm, nn::Norm::RMSNorm}) {
    nn::MultiHeadAttention n = make64(O(4, 2).qk_norm(kind).q_bias(false).k_bias(false).qk_norm_eps(0.0));
    Tensor q = rnd({2, 3, 4}, 1), kv = rnd({2, 5, 4}, 2);
    Tensor y0 = n(q, kv);
    {
      NoGradGuard ng;
      n->q_proj->weight.mul_(3.0);
      n->k_proj->weight.mul_(0.5);
    }
    CHECK(max_abs_diff(n(q, kv), y0) < 1e-12);
  }
}

TEST_CASE("mha: errors name the module and the offending values") {
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(10, 3)), "embed_dim=10 is not divisible by num_heads=3");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 4).num_kv_heads(3)),
                   "num_heads=4 must be a positive multiple of num_kv_heads=3");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).dropout(1.5)), "dropout must be in [0, 1], got 1.5");
  CHECK_NOTHROW(nn::MultiHeadAttention(O(10, 3).head_dim(4)));
  nn::MultiHeadAttention m(O(8, 2).kdim(6));
  CHECK_KILN_ERROR(m(randn({2, 3, 7})),
                   "[MultiHeadAttention] query must be (batch..., T, embed_dim=8), got shape (2, 3, 7)");
  CHECK_KILN_ERROR(m(randn({2, 3, 8}), randn({2, 4, 6}), randn({2, 4, 6})), "value must be (batch..., S, vdim=8)");
  CHECK_KILN_ERROR(m(randn({2, 3, 8}), randn({2, 4, 6})),
                   "one key/value input needs kdim == vdim, got kdim=6 and vdim=8");
  CHECK_KILN_ERROR(m(randn({2, 3, 8}), randn({3, 4, 6}), randn({3, 4, 8})), "must share the batch dims");
  CHECK_KILN_ERROR(m(randn({2, 3, 8}), randn({2, 4, 6}), randn({2, 5, 8})), "key and value must have the same length");
  nn::MultiHeadAttention s(O(8, 2));
  Tensor x = randn({2, 3, 8});
  CHECK_KILN_ERROR(s(x, nn::MhaForward().key_padding(tensor({3, 3, 3}))),
                   "key_padding lengths must have the batch shape (2,), got shape (3,)");
  CHECK_KILN_ERROR(
      s(x, nn::MhaForward().key_padding(ones({2, 4}, kBool))),
      "key_padding must be int64 lengths of shape (2,) or a bool keep-mask of shape (2, 3), got bool of shape (2, 4)");
  CHECK_KILN_ERROR(s(x, nn::MhaForward().attn_mask(ones({3, 4}, kBool))),
                   "attn_mask of shape (3, 4) cannot be broadcast to (batch..., H, T, S) = (2, 2, 3, 3)");
  CHECK_KILN_ERROR(s(x, nn::MhaForward().attn_mask(ones({3, 3}, kInt64))), "attn_mask must be bool");
}
