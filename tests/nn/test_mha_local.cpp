// nn::MultiHeadAttention options passed through to the attention core: sliding window (left,
// right), ALiBi (the paper's slopes or custom ones), learned attention sinks. Each against the
// same module with an explicit mask / bias / softmax formula, combined with causal and padding,
// through a KV cache, with float64 gradients.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

nn::MultiHeadAttention make64(const O& o, std::uint64_t seed = 3) {
  nn::MultiHeadAttention m(o);
  m->to(kFloat64);
  randomize(*m, seed, 0.5);
  m->eval();
  return m;
}

// A plain module holding `src`'s projection weights.
nn::MultiHeadAttention plain_copy(const nn::MultiHeadAttention& src) {
  O o = src->options;
  o.window_left(-1).window_right(-1).alibi(false).alibi_slopes(Tensor()).attention_sinks(false);
  nn::MultiHeadAttention m = make64(o);
  nn::OrderedDict<Tensor> sd;
  for (const auto& [n, t] : src->state_dict())
    if (n != "sinks") sd.insert(n, t);
  m->load_state_dict(sd);
  return m;
}

// Query positions p = S - T + t against keys s: (T, S) int64 p - s.
Tensor offsets(std::int64_t T, std::int64_t S) {
  return arange(S - T, S, 1, kInt64).unsqueeze(1) - arange(0, S, 1, kInt64).unsqueeze(0);
}

Tensor decode(nn::MultiHeadAttention& m, const Tensor& x, const std::vector<std::int64_t>& chunks) {
  NoGradGuard ng;
  nn::KVCache cache = m->make_kv_cache(x.size(0), x.size(1));
  std::vector<Tensor> ys;
  std::int64_t at = 0;
  for (std::int64_t c : chunks) {
    ys.push_back(m(x.narrow(1, at, c), nn::MhaForward().is_causal(true).cache(&cache)));
    at += c;
  }
  return cat(ys, 1);
}

}  // namespace

TEST_CASE("mha window: equals the band mask, with causal, padding, cross-attention and a KV cache") {
  for (auto [l, r] : {std::pair<std::int64_t, std::int64_t>{2, 0}, {1, 1}, {-1, 1}, {0, -1}}) {
    CAPTURE(l);
    CAPTURE(r);
    nn::MultiHeadAttention m = make64(O(8, 2).num_kv_heads(1).window_left(l).window_right(r));
    nn::MultiHeadAttention p = plain_copy(m);
    Tensor q = rnd({2, 4, 8}, 1), kv = rnd({2, 6, 8}, 2);
    Tensor d = offsets(4, 6);  // p - s
    Tensor band = ones({4, 6}, kBool);
    if (l >= 0) band = logical_and(band, d <= Scalar(l));
    if (r >= 0) band = logical_and(band, d >= Scalar(-r));
    for (bool causal : {false, true}) {
      nn::MhaForward f = nn::MhaForward().is_causal(causal).key_padding(tensor({6, 3}));
      nn::MhaForward fp = f;
      CHECK(max_abs_diff(m(q, kv, f), p(q, kv, fp.attn_mask(band))) < 1e-13);
    }
  }
  // Mistral-style: window(W - 1, 0) + causal, decoded token by token
  nn::MultiHeadAttention m = make64(O(8, 2).window_left(2).window_right(0));
  Tensor x = rnd({2, 6, 8}, 3);
  CHECK(max_abs_diff(decode(m, x, {1, 1, 1, 1, 1, 1}), m(x, nn::MhaForward().is_causal(true))) < 1e-12);
  CHECK(max_abs_diff(decode(m, x, {4, 2}), m(x, nn::MhaForward().is_causal(true))) < 1e-12);
  CHECK(fmt::format("{}", m).find("window=(2, 0)") != std::string::npos);
  kt::grad_ok([&](const std::vector<Tensor>& v) { return m(v[0], nn::MhaForward().is_causal(true)); },
              {kt::leaf({2, 5, 8}, 4)});
}

TEST_CASE("mha alibi: the paper's slopes or custom ones equal the bias -m_h |p - s|, also decoding") {
  const std::int64_t H = 4, T = 3, S = 5;
  nn::MultiHeadAttention m = make64(O(8, H).num_kv_heads(2).alibi(true));
  kt::expect_values(m->alibi_slopes, {0.25, 0.0625, 0.015625, 0.00390625}, 0, 0);  // 2^(-8 (i+1) / 4)
  CHECK_FALSE(m->state_dict().contains("alibi_slopes"));                           // fixed, not a checkpoint entry
  CHECK(m->alibi_slopes.dtype() == kFloat64);                                      // moved with to()
  nn::MultiHeadAttention p = plain_copy(m);
  Tensor q = rnd({2, T, 8}, 5), kv = rnd({2, S, 8}, 6);
  auto bias_for = [&](const Tensor& slopes) { return -slopes.reshape({H, 1, 1}) * abs(offsets(T, S).to(kFloat64)); };
  nn::MhaForward f = nn::MhaForward().is_causal(true).key_padding(tensor({5, 4}));
  nn::MhaForward fp = f;
  CHECK(max_abs_diff(m(q, kv, f), p(q, kv, fp.attn_bias(bias_for(m->alibi_slopes)))) < 1e-13);
  // custom slopes
  Tensor slopes = tensor({0.5, -0.25, 1.0, 0.0}, kFloat64);
  nn::MultiHeadAttention c = make64(O(8, H).num_kv_heads(2).alibi_slopes(slopes));
  nn::MultiHeadAttention pc = plain_copy(c);
  nn::MhaForward fc = nn::MhaForward();
  CHECK(max_abs_diff(c(q, kv, fc), pc(q, kv, nn::MhaForward().attn_bias(bias_for(slopes)))) < 1e-13);
  // decoding: ALiBi's positions follow the cache
  Tensor x = rnd({2, 5, 8}, 7);
  CHECK(max_abs_diff(decode(m, x, {2, 1, 1, 1}), m(x, nn::MhaForward().is_causal(true))) < 1e-12);
  kt::grad_ok([&](const std::vector<Tensor>& v) { return c(v[0], v[1]); },
              {kt::leaf({2, T, 8}, 8), kt::leaf({2, S, 8}, 9)});
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, H).alibi_slopes(ones({3}))),
                   "alibi_slopes must be floating point of shape (num_heads,) = (4,), got float32 of shape (3,)");
}

TEST_CASE("mha attention_sinks: a learned logit per head joins each softmax / gradients / decoding") {
  const std::int64_t H = 2, T = 3, S = 4;
  nn::MultiHeadAttention m0(O(6, H).attention_sinks(true));
  kt::expect_shape(m0->sinks, {H});
  CHECK(all_zero(m0->sinks));
  CHECK(m0->named_parameters().contains("sinks"));
  nn::MultiHeadAttention m = make64(O(6, H).attention_sinks(true));  // random sinks
  nn::MultiHeadAttention p = plain_copy(m);
  Tensor q = rnd({2, T, 6}, 10), kv = rnd({2, S, 6}, 11);
  nn::MhaResult r = m->forward_with_weights(q, kv, nn::MhaForward().key_padding(tensor({4, 2})).need_weights(true));
  // by hand: softmax over [logits, sink] without the sink's column
  nn::MhaResult rp = p->forward_with_weights(q, kv, nn::MhaForward().key_padding(tensor({4, 2})).need_weights(true));
  Tensor qh = m->q_proj(q).reshape({2, T, H, 3}).transpose(1, 2),
         kh = m->k_proj(kv).reshape({2, S, H, 3}).transpose(1, 2);
  Tensor keep = (arange(0, S, 1, kInt64).unsqueeze(0) < tensor({4, 2}).unsqueeze(1)).reshape({2, 1, 1, S});
  Tensor l = where(keep, matmul(qh, kh.transpose(-1, -2)) / std::sqrt(3.0), Scalar(-kInf));
  Tensor sink = m->sinks.reshape({1, H, 1, 1}).expand({2, H, T, 1});
  Tensor w = softmax(cat({l, sink}, -1), -1).narrow(-1, 0, S);
  CHECK(max_abs_diff(r.weights, w) < 1e-14);
  // rows sum to 1 - P(sink) < 1; the plain module's to 1
  CHECK(max_abs_diff(sum(rp.weights, {-1}), ones({2, H, T}, kFloat64)) < 1e-14);
  CHECK(max(sum(r.weights, {-1})).item<double>() < 1.0 - 1e-6);
  Tensor vh = m->v_proj(kv).reshape({2, S, H, 3}).transpose(1, 2);
  CHECK(max_abs_diff(r.output, m->out_proj(matmul(w, vh).transpose(1, 2).reshape({2, T, 6}))) < 1e-13);
  std::vector<Tensor> in{kt::leaf({2, T, 6}, 12)};
  for (Tensor t : m->parameters()) in.push_back(t);  // sinks included
  kt::grad_ok([&](const std::vector<Tensor>& v) { return m(v[0], kv, nn::MhaForward().is_causal(true)); }, in);
  Tensor x = rnd({2, 4, 6}, 13);
  CHECK(max_abs_diff(decode(m, x, {1, 2, 1}), m(x, nn::MhaForward().is_causal(true))) < 1e-12);
  CHECK_KILN_ERROR(m->to_torch_state(), "torch.nn.MultiheadAttention has no attention sinks");
}

TEST_CASE("mha window + alibi + sinks + rotary + padding combine / extras refuse window/ALiBi") {
  nn::MultiHeadAttention m =
      make64(O(8, 2).num_kv_heads(1).window_left(3).window_right(0).alibi(true).attention_sinks(true).rotary(
          nn::RotaryEmbeddingOptions(4)));
  Tensor x = rnd({2, 6, 8}, 14);
  CHECK(max_abs_diff(decode(m, x, {3, 1, 2}), m(x, nn::MhaForward().is_causal(true))) < 1e-12);
  std::vector<Tensor> in{kt::leaf({2, 4, 8}, 15)};
  for (Tensor t : m->parameters()) in.push_back(t);
  kt::grad_ok(
      [&](const std::vector<Tensor>& v) {
        return m(v[0], nn::MhaForward().is_causal(true).key_padding(tensor({4, 3})));
      },
      in);
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).add_bias_kv(true).window_left(2).window_right(0)),
                   "add_bias_kv / add_zero_attn cannot be combined with window or ALiBi");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).add_zero_attn(true).alibi(true)),
                   "add_bias_kv / add_zero_attn cannot be combined with window or ALiBi");
}
