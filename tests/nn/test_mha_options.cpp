// nn::MultiHeadAttention options beyond the default path: add_bias_kv / add_zero_attn (semantics
// with masks and causal, gradients), the additive attn_bias, reslink, replaceable projection and
// attention functions, and nn::functional::multi_head_attention (Ivy's functional form).
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;
namespace F = nn::functional;

nn::MultiHeadAttention make64(const O& o, std::uint64_t seed = 3) {
  nn::MultiHeadAttention m(o);
  m->to(kFloat64);
  randomize(*m, seed, 0.5);
  m->eval();
  return m;
}

// (B, L, n * d) -> (B, n, L, d)
Tensor heads(const Tensor& t, std::int64_t n) {
  return t.reshape({t.size(0), t.size(1), n, t.size(2) / n}).transpose(1, 2);
}

Tensor merge(const Tensor& o) { return o.transpose(1, 2).reshape({o.size(0), o.size(2), o.size(1) * o.size(3)}); }

Tensor causal_keep(std::int64_t T, std::int64_t S) {
  return arange(0, S, 1, kInt64).unsqueeze(0) <= arange(S - T, S, 1, kInt64).unsqueeze(1);
}

}  // namespace

TEST_CASE("mha add_bias_kv / add_zero_attn: parameters, and the same numbers as appending by hand") {
  nn::MultiHeadAttention g(O(8, 4).num_kv_heads(2).v_head_dim(3).add_bias_kv(true));
  kt::expect_shape(g->bias_k, {1, 1, 4});  // (1, 1, Hkv * head_dim)
  kt::expect_shape(g->bias_v, {1, 1, 6});  // (1, 1, Hkv * v_head_dim)
  CHECK(g->named_parameters().contains("bias_k"));
  CHECK_FALSE(nn::MultiHeadAttention(O(8, 2))->named_parameters().contains("bias_k"));
  CHECK(fmt::format("{}", g).find("add_bias_kv=true") != std::string::npos);
  // init: Xavier-normal, redrawn by reset_parameters
  Tensor before = g->bias_k.clone();
  g->reset_parameters();
  CHECK_FALSE(equal(before, g->bias_k));

  const std::int64_t B = 2, T = 3, S = 4, E = 8, H = 4, Hkv = 2, D = 2;
  nn::MultiHeadAttention m = make64(O(E, H).num_kv_heads(Hkv).add_bias_kv(true).add_zero_attn(true));
  Tensor q = rnd({B, T, E}, 1), kv = rnd({B, S, E}, 2);
  Tensor keep = rnd({T, S}, 3) > Scalar(0.0);
  Tensor lengths = tensor({4, 0});  // example 1: only the extra keys remain
  nn::MhaForward f = nn::MhaForward().attn_mask(keep).key_padding(lengths).is_causal(true).need_weights(true);
  nn::MhaResult r = m->forward_with_weights(q, kv, f);
  kt::expect_shape(r.weights, {B, H, T, S + 2});
  CHECK(all_finite(r.output));
  // by hand: projected keys + bias_k + a zero key; masks ANDed over the real keys, extras always kept
  Tensor kh = cat({heads(m->k_proj(kv), Hkv), m->bias_k.reshape({1, Hkv, 1, D}).expand({B, Hkv, 1, D}),
                   zeros({B, Hkv, 1, D}, kFloat64)},
                  2);
  Tensor vh = cat({heads(m->v_proj(kv), Hkv), m->bias_v.reshape({1, Hkv, 1, D}).expand({B, Hkv, 1, D}),
                   zeros({B, Hkv, 1, D}, kFloat64)},
                  2);
  Tensor pad = arange(0, S, 1, kInt64).unsqueeze(0) < lengths.unsqueeze(1);                        // (B, S)
  Tensor real = logical_and(logical_and(keep, causal_keep(T, S)).unsqueeze(0), pad.unsqueeze(1));  // (B, T, S)
  Tensor mask = cat({real, ones({B, T, 2}, kBool)}, -1).unsqueeze(1);
  auto ref = F::scaled_dot_product_attention_reference(heads(m->q_proj(q), H), kh, vh,
                                                       SdpaOptions().attn_mask(mask).need_weights(true));
  CHECK(max_abs_diff(r.output, m->out_proj(merge(ref.output))) < 1e-13);
  CHECK(max_abs_diff(r.weights, ref.weights) < 1e-14);
  // the fully padded example attends only to bias_kv and the zero key
  CHECK(all_zero(r.weights.select(0, 1).narrow(-1, 0, S)));
}

TEST_CASE("mha add_bias_kv / add_zero_attn: float64 gradcheck with masks, causal and grouped heads") {
  for (auto [bkv, zero] : {std::pair{true, false}, std::pair{false, true}, std::pair{true, true}}) {
    CAPTURE(bkv);
    CAPTURE(zero);
    nn::MultiHeadAttention m = make64(O(4, 2).num_kv_heads(1).add_bias_kv(bkv).add_zero_attn(zero));
    std::vector<Tensor> in{kt::leaf({2, 3, 4}, 4), kt::leaf({2, 4, 4}, 5)};
    for (Tensor p : m->parameters()) in.push_back(p);
    nn::MhaForward f = nn::MhaForward().key_padding(tensor({4, 2})).is_causal(true).need_weights(true);
    kt::grad_ok(
        [&](const std::vector<Tensor>& v) {
          nn::MhaResult r = m->forward_with_weights(v[0], v[1], f);
          return cat({r.output.flatten(), r.weights.flatten()}, 0);
        },
        in);
  }
}

TEST_CASE("mha attn_bias: additive, broadcast, combined with masks, differentiable") {
  const std::int64_t B = 2, T = 3, S = 4, H = 2;
  nn::MultiHeadAttention m = make64(O(6, H));
  Tensor q = rnd({B, T, 6}, 6), kv = rnd({B, S, 6}, 7);
  Tensor bias = rnd({H, T, S}, 8);  // per head, shared by the batch
  Tensor keep = rnd({B, 1, T, S}, 9) > Scalar(-0.3);
  nn::MhaResult r =
      m->forward_with_weights(q, kv,
                              nn::MhaForward().attn_bias(bias).attn_mask(keep).is_causal(true).need_weights(true));
  Tensor logits = matmul(heads(m->q_proj(q), H), heads(m->k_proj(kv), H).transpose(-1, -2)) / std::sqrt(3.0) + bias;
  Tensor allowed = logical_and(keep, causal_keep(T, S));
  Tensor w = softmax(where(allowed, logits, Scalar(-kInf)), -1);
  w = where(isnan(w), Scalar(0.0), w);  // rows with nothing allowed
  CHECK(max_abs_diff(r.weights, w) < 1e-14);
  CHECK(max_abs_diff(r.output, m->out_proj(merge(matmul(w, heads(m->v_proj(kv), H))))) < 1e-13);
  // a float mask and a bias add up
  Tensor fm = rnd({T, S}, 10);
  CHECK(max_abs_diff(m(q, kv, nn::MhaForward().attn_bias(bias).attn_mask(fm)),
                     m(q, kv, nn::MhaForward().attn_mask(bias + fm))) < 1e-14);
  // gradient w.r.t. the bias itself (and the inputs), with padding
  kt::grad_ok(
      [&](const std::vector<Tensor>& v) {
        return m(v[0], kv, nn::MhaForward().attn_bias(v[1]).key_padding(tensor({4, 3})).attn_mask(keep));
      },
      {kt::leaf({B, T, 6}, 11), kt::leaf({H, T, S}, 12)});
  kt::grad_ok([&](const std::vector<Tensor>& v) { return m(q, kv, nn::MhaForward().attn_bias(v[0])); },
              {kt::leaf({B, 1, 1, S}, 13)});
  CHECK_KILN_ERROR(m(q, kv, nn::MhaForward().attn_bias(ones({T, S}, kInt64))),
                   "attn_bias must be floating point, got int64");
  CHECK_KILN_ERROR(m(q, kv, nn::MhaForward().attn_bias(rnd({3, T, S}, 1))),
                   "attn_bias of shape (3, 3, 4) cannot be broadcast to (batch..., H, T, S) = (2, 2, 3, 4)");
}

TEST_CASE("mha reslink: output + query, gradients, and out_dim that cannot match") {
  nn::MultiHeadAttention m = make64(O(6, 2).reslink(true));
  nn::MultiHeadAttention p = make64(O(6, 2));
  p->load_state_dict(m->state_dict());
  Tensor x = rnd({2, 3, 6}, 14);
  CHECK(max_abs_diff(m(x), p(x) + x) < 1e-15);
  CHECK(fmt::format("{}", m).find("reslink=true") != std::string::npos);
  kt::grad_ok([&](const std::vector<Tensor>& v) { return m(v[0], nn::MhaForward().is_causal(true)); },
              {kt::leaf({2, 3, 6}, 15)});
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(6, 2).out_dim(4).reslink(true)),
                   "[MultiHeadAttention] reslink adds the query to the output, which needs out_dim == embed_dim, got "
                   "out_dim=4 and embed_dim=6");
  nn::MultiHeadAttention bad =
      make64(O(6, 2).reslink(true).to_out_fn([](const Tensor& h, nn::Linear&) { return h.narrow(-1, 0, 4); }));
  CHECK_KILN_ERROR(bad(x), "reslink: the output of shape (2, 3, 4) cannot be added to the query of shape (2, 3, 6)");
}

TEST_CASE("mha hooks: replaceable projections and attention function") {
  nn::MultiHeadAttention m = make64(O(8, 2).num_kv_heads(1));
  Tensor q = rnd({2, 3, 8}, 16), kv = rnd({2, 4, 8}, 17);
  Tensor base = m(q, kv, nn::MhaForward().is_causal(true));
  // LoRA-style wrappers around the module's own projections
  Tensor a = rnd({8, 2}, 18, 0.1), b = rnd({2, 8}, 19, 0.1);
  O o = m->options;
  o.to_q_fn([&](const Tensor& x, nn::Linear& proj) { return proj(x) + matmul(matmul(x, a), b); })
      .to_kv_fn([](const Tensor& k, const Tensor& v, nn::Linear& kp, nn::Linear& vp) {
        return std::pair{kp(k) * 2.0, vp(v)};
      })
      .to_out_fn([](const Tensor& h, nn::Linear& op) { return op(h) - 1.0; });
  nn::MultiHeadAttention h = make64(o);
  h->load_state_dict(m->state_dict());
  Tensor qh = heads(m->q_proj(q) + matmul(matmul(q, a), b), 2), kh = heads(m->k_proj(kv) * 2.0, 1),
         vh = heads(m->v_proj(kv), 1);
  Tensor want =
      m->out_proj(merge(F::scaled_dot_product_attention_reference(qh, kh, vh, SdpaOptions().is_causal(true)).output)) -
      1.0;
  CHECK(max_abs_diff(h(q, kv, nn::MhaForward().is_causal(true)), want) < 1e-13);
  kt::grad_ok([&](const std::vector<Tensor>& v) { return h(v[0], kv); }, {kt::leaf({2, 3, 8}, 20), a});

  // Flax's attention_fn: the reference core is a drop-in; the options the module built arrive
  int calls = 0;
  O ao = m->options;
  ao.attention_fn([&](const Tensor& qq, const Tensor& kk, const Tensor& vv, const SdpaOptions& so) {
    ++calls;
    CHECK(so.is_causal());
    CHECK(so.attn_mask().defined());  // the key padding
    CHECK(qq.shape() == Shape{2, 2, 3, 4});
    CHECK(kk.shape() == Shape{2, 1, 4, 4});
    return F::scaled_dot_product_attention_reference(qq, kk, vv, so);
  });
  nn::MultiHeadAttention r = make64(ao);
  r->load_state_dict(m->state_dict());
  nn::MhaForward f = nn::MhaForward().is_causal(true).key_padding(tensor({4, 2}));
  CHECK(max_abs_diff(r(q, kv, f), m(q, kv, f)) < 1e-13);
  CHECK(calls == 1);
  // bad shapes from the hooks are errors
  O bq = m->options;
  bq.to_q_fn([](const Tensor& x, nn::Linear&) { return x.narrow(-1, 0, 4); });
  CHECK_KILN_ERROR(make64(bq)(q), "to_q_fn must return (batch..., T, num_heads * head_dim) = (2, 3, 8), got (2, 3, 4)");
  O bkv = m->options;
  bkv.to_kv_fn([](const Tensor& k, const Tensor& v, nn::Linear&, nn::Linear&) { return std::pair{k, v}; });
  CHECK_KILN_ERROR(make64(bkv)(q),
                   "to_kv_fn must return keys (2, 3, 4) and values (2, 3, 4), got (2, 3, 8) and (2, 3, 8)");
  O ba = m->options;
  ba.attention_fn([](const Tensor& qq, const Tensor&, const Tensor&, const SdpaOptions&) {
    return SdpaResult{qq, {}};
  });
  CHECK_KILN_ERROR(make64(ba)(q, nn::MhaForward().need_weights(true)),
                   "the attention function returned no weights although need_weights was set");
}

TEST_CASE("functional multi_head_attention: Ivy's defaults (q = x, k and v = halves of the context) and hooks") {
  const std::int64_t B = 2, T = 3, S = 5, H = 2;
  Tensor x = rnd({B, T, 8}, 21), ctx = rnd({B, S, 16}, 22);
  auto ivy_ref = [&](const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& mask) {
    Tensor l = matmul(heads(q, H), heads(k, H).transpose(-1, -2)) * scale;
    if (mask.defined())
      l = mask.dtype() == kBool ? where(mask.unsqueeze(-3), l, Scalar(-kInf)) : l + mask.unsqueeze(-3);
    return merge(matmul(softmax(l, -1), heads(v, H)));
  };
  Tensor k = ctx.narrow(-1, 0, 8), v = ctx.narrow(-1, 8, 8);
  CHECK(max_abs_diff(F::multi_head_attention(x, 0.3, H, ctx), ivy_ref(x, k, v, 0.3, {})) < 1e-14);
  Tensor keep = rnd({B, T, S}, 23) > Scalar(-0.5);
  Tensor fm = rnd({T, S}, 24);
  CHECK(max_abs_diff(F::multi_head_attention(x, 0.5, H, ctx, keep), ivy_ref(x, k, v, 0.5, keep)) < 1e-14);
  CHECK(max_abs_diff(F::multi_head_attention(x, 0.5, H, ctx, fm), ivy_ref(x, k, v, 0.5, fm)) < 1e-14);
  // context defaults to x: with to_q_fn halving the width, self-attention works
  Tensor wq = rnd({4, 8}, 25), wkv = rnd({16, 16}, 26), wo = rnd({8, 4}, 27);
  auto to_q = [&](const Tensor& t) { return linear(t, wq); };
  auto to_kv = [&](const Tensor& t) {
    Tensor kvp = linear(t, wkv);
    return std::pair{kvp.narrow(-1, 0, 8), kvp.narrow(-1, 8, 8)};
  };
  auto to_out = [&](const Tensor& t) { return linear(t, wo); };
  Tensor ys = F::multi_head_attention(x, 0.25, H, {}, {}, to_q, {}, to_out);
  CHECK(max_abs_diff(ys, linear(ivy_ref(linear(x, wq), x.narrow(-1, 0, 4), x.narrow(-1, 4, 4), 0.25, {}), wo)) < 1e-14);
  Tensor yk = F::multi_head_attention(x, 0.25, H, ctx, {}, {}, to_kv, {});
  kt::expect_shape(yk, {B, T, 8});
  CHECK(max_abs_diff(yk, ivy_ref(x, to_kv(ctx).first, to_kv(ctx).second, 0.25, {})) < 1e-14);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return F::multi_head_attention(in[0], 0.5, H, in[1], keep); },
              {kt::leaf({B, T, 4}, 28), kt::leaf({B, S, 8}, 29)});
  CHECK_KILN_ERROR(F::multi_head_attention(x, 0.5, H),
                   "[multi_head_attention] queries (2, 3, 8) and keys (2, 3, 4) must have the same width per head");
  CHECK_KILN_ERROR(F::multi_head_attention(x, 0.5, 3, ctx), "queries features (8) are not divisible by num_heads=3");
  CHECK_KILN_ERROR(F::multi_head_attention(x, 0.5, H, rnd({B, S, 15}, 1)), "must be even; got shape (2, 5, 15)");
  CHECK_KILN_ERROR(F::multi_head_attention(x, 0.5, H, ctx, ones({4, 5}, kBool)),
                   "mask of shape (4, 5) cannot be broadcast to (batch..., T, S) = (2, 3, 5)");
}
