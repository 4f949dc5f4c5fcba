// Incremental decoding through the transformer layers and stacks (TransformerCache): outputs
// position by position (and in chunks) against the full causal forward, with grouped-query
// attention, rotary positions, padded memory, bf16 autocast, reset/reorder, and the errors.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using L = nn::TransformerLayerOptions;

// Runs fn(chunk, cache) over tgt's positions in chunks of the given sizes; returns the outputs
// concatenated along the sequence dim.
template <typename Fn>
Tensor decode_in_chunks(const Tensor& tgt, const std::vector<std::int64_t>& chunks, Fn&& fn) {
  std::vector<Tensor> outs;
  std::int64_t at = 0;
  for (std::int64_t n : chunks) {
    outs.push_back(fn(tgt.narrow(-2, at, n)));
    at += n;
  }
  REQUIRE(at == tgt.size(-2));
  return cat(outs, -2);
}

}  // namespace

TEST_CASE("transformer cache: decoder stack step by step equals the full causal forward (pre/post-norm, GQA)") {
  for (bool pre : {false, true}) {
    for (std::int64_t kv_heads : {4, 2, 1}) {
      CAPTURE(pre);
      CAPTURE(kv_heads);
      nn::TransformerDecoder dec =
          float64_randomized(nn::TransformerDecoder(
                                 nn::TransformerDecoderOptions(L(8, 4).num_kv_heads(kv_heads).norm_first(pre), 2)),
                             7 + static_cast<std::uint64_t>(kv_heads));
      dec->eval();
      const Tensor tgt = rnd({2, 6, 8}, 1), memory = rnd({2, 5, 8}, 2);
      const Tensor lens = tensor(std::vector<std::int64_t>{5, 3});  // the second memory is padded
      const auto f = nn::DecoderForward().memory_key_padding(lens);
      Tensor full = dec(tgt, memory, f);
      NoGradGuard ng;
      for (const std::vector<std::int64_t>& chunks :
           {std::vector<std::int64_t>{1, 1, 1, 1, 1, 1}, std::vector<std::int64_t>{3, 1, 2}}) {
        nn::TransformerCache cache = dec->make_cache({2}, 6, 5);
        auto fc = nn::DecoderForward(f).cache(&cache);
        Tensor inc = decode_in_chunks(tgt, chunks, [&](const Tensor& t) { return dec(t, memory, fc); });
        CHECK(max_abs_diff(inc, full) < 1e-12);
        CHECK(cache.length() == 6);
        for (const nn::KVCache& c : cache.cross_attn) CHECK(c.length() == 5);  // projected once
      }
    }
  }
}

TEST_CASE("transformer cache: one decoder layer, and memory projected once (later memory is not read)") {
  nn::TransformerDecoderLayer layer = float64_randomized(nn::TransformerDecoderLayer(L(8, 2).memory_dim(6)), 21);
  layer->eval();
  const Tensor tgt = rnd({3, 4, 8}, 3), memory = rnd({3, 7, 6}, 4);
  Tensor full = layer(tgt, memory);
  NoGradGuard ng;
  nn::TransformerCache cache = layer->make_cache({3}, 4, 7);
  const auto f = nn::DecoderForward().cache(&cache);
  Tensor first = layer(tgt.narrow(1, 0, 1), memory, f);
  // Later calls attend to the cached memory keys/values: different values of the same length
  // change nothing, as in an encoder-decoder loop that passes the same memory again.
  Tensor rest = layer(tgt.narrow(1, 1, 3), zeros_like(memory), f);
  CHECK(max_abs_diff(cat({first, rest}, 1), full) < 1e-12);
}

TEST_CASE("transformer cache: causal encoder stack (decoder-only use) with rotary self-attention") {
  auto layer = L(8, 4).num_kv_heads(2).norm_first(true).make_self_attention([](const L& o) {
    return nn::SelfAttentionModule(nn::MultiHeadAttention(nn::MultiHeadAttentionOptions(o.d_model(), o.nhead())
                                                              .num_kv_heads(o.num_kv_heads())
                                                              .rotary(nn::RotaryEmbeddingOptions(2))));
  });
  nn::TransformerEncoder enc = float64_randomized(nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, 3)), 31);
  enc->eval();
  const Tensor x = rnd({2, 5, 8}, 5);
  Tensor full = enc(x, nn::EncoderForward().is_causal(true));
  NoGradGuard ng;
  nn::TransformerCache cache = enc->make_cache({2}, 8);
  CHECK(cache.cross_attn.empty());
  auto f = nn::EncoderForward().is_causal(true).cache(&cache);
  Tensor inc = decode_in_chunks(x, {2, 1, 1, 1}, [&](const Tensor& t) { return enc(t, f); });
  CHECK(max_abs_diff(inc, full) < 1e-12);

  // One layer on its own, and reset() starts over on the same buffers.
  nn::TransformerEncoderLayer one = enc->layer_list[0];
  Tensor full1 = one(x, nn::EncoderForward().is_causal(true));
  nn::TransformerCache c1 = one->make_cache({2}, 5);
  auto f1 = nn::EncoderForward().is_causal(true).cache(&c1);
  for (int round = 0; round < 2; ++round) {
    c1.reset();
    CHECK(c1.length() == 0);
    Tensor inc1 = decode_in_chunks(x, {1, 1, 1, 1, 1}, [&](const Tensor& t) { return one(t, f1); });
    CHECK(max_abs_diff(inc1, full1) < 1e-12);
  }
}

TEST_CASE("transformer cache: reset for new memory, reorder for beam search") {
  nn::TransformerDecoder dec =
      float64_randomized(nn::TransformerDecoder(nn::TransformerDecoderOptions(L(8, 2), 2)), 41);
  dec->eval();
  const Tensor tgt = rnd({2, 4, 8}, 6), m1 = rnd({2, 3, 8}, 7), m2 = rnd({2, 3, 8}, 8);
  NoGradGuard ng;
  nn::TransformerCache cache = dec->make_cache({2}, 4, 3);
  auto f = nn::DecoderForward().cache(&cache);
  dec(tgt.narrow(1, 0, 2), m1, f);
  cache.reset();  // new memory of the same length: projected again
  Tensor inc = decode_in_chunks(tgt, {2, 2}, [&](const Tensor& t) { return dec(t, m2, f); });
  CHECK(max_abs_diff(inc, dec(tgt, m2)) < 1e-12);

  // Swap the two batch entries after 2 steps: the continuation is that of the swapped inputs.
  cache.reset();
  dec(tgt.narrow(1, 0, 2), m1, f);
  const Tensor swap = tensor(std::vector<std::int64_t>{1, 0});
  cache.reorder(swap);
  Tensor rest = dec(index_select(tgt, 0, swap).narrow(1, 2, 2), index_select(m1, 0, swap), f);
  Tensor want = dec(index_select(tgt, 0, swap), index_select(m1, 0, swap)).narrow(1, 2, 2);
  CHECK(max_abs_diff(rest, want) < 1e-12);
}

TEST_CASE("transformer cache: bf16 autocast decoding matches the autocast full forward") {
  Generator g(3);
  nn::TransformerDecoder dec(nn::TransformerDecoderOptions(L(16, 4).num_kv_heads(2).norm_first(true).generator(&g), 2));
  dec->eval();
  const Tensor tgt = rnd({2, 5, 16}, 9, 1.0, kFloat32), memory = rnd({2, 4, 16}, 10, 1.0, kFloat32);
  NoGradGuard ng;
  auto mixed = autocast(kBFloat16);
  Tensor full = dec(tgt, memory);
  nn::TransformerCache cache = dec->make_cache({2}, 5, 4);  // made inside the autocast region
  CHECK(cache.self_attn[0].dtype() == kBFloat16);
  auto f = nn::DecoderForward().cache(&cache);
  Tensor inc = decode_in_chunks(tgt, {1, 1, 1, 1, 1}, [&](const Tensor& t) { return dec(t, memory, f); });
  CHECK(inc.dtype() == full.dtype());
  // Both paths round to bf16 after every op; they differ by a few bf16 ulps at most (O(1) values).
  CHECK(max_scaled_diff(inc.to(kFloat64), full.to(kFloat64)) < 0.05);
  CHECK(all_finite(inc));
}

TEST_CASE("transformer cache: errors name the stack and leave the caches untouched") {
  nn::TransformerDecoder dec(nn::TransformerDecoderOptions(L(8, 2), 2));
  dec->eval();
  const Tensor tgt = randn({1, 3, 8}), memory = randn({1, 4, 8});
  NoGradGuard ng;
  nn::TransformerCache cache = dec->make_cache({1}, 4, 4);
  auto f = nn::DecoderForward().cache(&cache);
  dec(tgt, memory, f);
  CHECK_KILN_ERROR(dec(tgt, memory, f), "[KVCache] cache overflow: appending 3 positions to the 3 stored");
  CHECK(cache.length() == 3);
  for (const nn::KVCache& c : cache.self_attn) CHECK(c.length() == 3);
  CHECK_KILN_ERROR(dec(tgt.narrow(1, 0, 1), memory.narrow(1, 0, 2), f),
                   "memory has 2 positions but the cache holds keys/values of 4");
  CHECK_KILN_ERROR(dec(tgt, memory, nn::DecoderForward(f).tgt_is_causal(false)),
                   "a cache needs causal self-attention (DecoderForward::tgt_is_causal)");
  nn::TransformerCache fresh = dec->make_cache({1}, 4, 4);
  CHECK_KILN_ERROR(dec(tgt, memory, nn::DecoderForward().cache(&fresh).memory_is_causal(true)),
                   "memory_is_causal cannot be combined with a cache");
  nn::TransformerCache one = dec->layer_list[0]->make_cache({1}, 4, 4);
  CHECK_KILN_ERROR(dec(tgt, memory, nn::DecoderForward().cache(&one)),
                   "the cache holds 1 self-attention and 1 cross-attention KV caches, but this call needs 2");
  nn::TransformerEncoder enc(nn::TransformerEncoderOptions(L(8, 2), 1));
  nn::TransformerCache ec = enc->make_cache({1}, 4);
  CHECK_KILN_ERROR(enc(tgt, nn::EncoderForward().cache(&ec)),
                   "[TransformerEncoder] a cache needs causal self-attention (EncoderForward::is_causal)");

  struct Plain : nn::Module {
    Plain() : nn::Module("Plain") {}
    Tensor forward(const Tensor& x, const nn::MhaForward&) { return x; }
  };
  nn::TransformerEncoderLayer custom(
      L(8, 2).make_self_attention([](const L&) { return nn::SelfAttentionModule(std::make_shared<Plain>()); }));
  CHECK_KILN_ERROR(custom->make_cache({1}, 4),
                   "[TransformerEncoderLayer] make_cache needs a MultiHeadAttention as self_attn, got Plain");
}
