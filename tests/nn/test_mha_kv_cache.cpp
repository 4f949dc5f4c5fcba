// nn::KVCache with nn::MultiHeadAttention: autoregressive decoding equals the full causal forward
// (token by token, chunked prefill, grouped-query and multi-query heads, rotary positions, extra
// bias_kv / zero_attn positions), the cache's bookkeeping and errors, and the gradient w.r.t. the
// new tokens.
#include "autograd/test_sdpa_ext_util.hpp"  // kx::SplitEverything
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

nn::MultiHeadAttention make32(const O& o, std::uint64_t seed = 3) {
  nn::MultiHeadAttention m(o);
  randomize(*m, seed, 0.3);
  m->eval();
  return m;
}

// Feeds x (B, T, E) through m in chunks of the given sizes with one cache; returns the outputs
// concatenated along T.
Tensor decode(nn::MultiHeadAttention& m, const Tensor& x, const std::vector<std::int64_t>& chunks, nn::KVCache& cache,
              const nn::MhaForward& base = nn::MhaForward().is_causal(true)) {
  std::vector<Tensor> ys;
  std::int64_t at = 0;
  for (std::int64_t c : chunks) {
    nn::MhaForward f = base;
    ys.push_back(m(x.narrow(1, at, c), f.cache(&cache)));
    at += c;
    CHECK(cache.length() == at);
  }
  REQUIRE(at == x.size(1));
  return cat(ys, 1);
}

}  // namespace

TEST_CASE("mha kv cache: token-by-token and chunked decoding equal the full causal forward (1e-5)") {
  for (std::int64_t hkv : {4, 2, 1}) {  // multi-head, grouped-query, multi-query
    CAPTURE(hkv);
    nn::MultiHeadAttention m = make32(O(16, 4).num_kv_heads(hkv));
    Tensor x = rnd({2, 7, 16}, 11, 1.0, kFloat32);
    Tensor full = m(x, nn::MhaForward().is_causal(true));
    NoGradGuard ng;
    nn::KVCache cache = m->make_kv_cache(2, 10);
    CHECK(cache.max_length() == 10);
    CHECK(cache.length() == 0);
    kt::expect_shape(cache.key_buffer(), {2, hkv, 10, 4});
    Tensor tok = decode(m, x, {1, 1, 1, 1, 1, 1, 1}, cache);
    CHECK(max_abs_diff(tok, full) < 1e-5);
    cache.reset();
    CHECK(cache.length() == 0);
    Tensor chunked = decode(m, x, {3, 2, 1, 1}, cache);  // prefill, a chunk, then tokens
    CHECK(max_abs_diff(chunked, full) < 1e-5);
    // the cache holds the projected keys of every position (heads split, (B, Hkv, L, D))
    Tensor kexp = m->k_proj(x).reshape({2, 7, hkv, 4}).transpose(1, 2);
    CHECK(max_abs_diff(cache.keys(), kexp) < 1e-6);
    kt::expect_shape(cache.values(), {2, hkv, 7, 4});
  }
}

TEST_CASE("mha kv cache: rotary positions follow the cache / extra bias_kv / zero_attn keys / extra batch dims") {
  SUBCASE("rotary (half-split and interleaved, partial)") {
    for (bool inter : {false, true}) {
      CAPTURE(inter);
      nn::MultiHeadAttention m =
          make32(O(16, 4).num_kv_heads(2).rotary(nn::RotaryEmbeddingOptions(2).interleaved(inter).base(100)));
      Tensor x = rnd({2, 6, 16}, 12, 1.0, kFloat32);
      Tensor full = m(x, nn::MhaForward().is_causal(true));
      NoGradGuard ng;
      nn::KVCache cache = m->make_kv_cache(2, 6);
      CHECK(max_abs_diff(decode(m, x, {2, 1, 1, 2}, cache), full) < 1e-5);
      // rotary changes the result: without positions the keys would not match
      nn::MultiHeadAttention plain = make32(O(16, 4).num_kv_heads(2));
      CHECK(max_abs_diff(plain(x, nn::MhaForward().is_causal(true)), full) > 1e-3);
    }
  }
  SUBCASE("add_bias_kv and add_zero_attn stay after the cached keys") {
    nn::MultiHeadAttention m = make32(O(8, 2).add_bias_kv(true).add_zero_attn(true));
    Tensor x = rnd({3, 5, 8}, 13, 1.0, kFloat32);
    Tensor full = m(x, nn::MhaForward().is_causal(true));
    NoGradGuard ng;
    nn::KVCache cache = m->make_kv_cache(3, 5);
    CHECK(max_abs_diff(decode(m, x, {1, 2, 1, 1}, cache), full) < 1e-5);
  }
  SUBCASE("leading batch dims (2, 3) and key padding over the cached length") {
    nn::MultiHeadAttention m = make32(O(8, 2).num_kv_heads(1));
    Tensor x = rnd({2, 3, 4, 8}, 14, 1.0, kFloat32);
    // left-padded prompts: position 0 of some sequences is padding, as a (batch..., S) keep-mask
    Tensor keep = tensor({true, false, true, true, false, true}).reshape({2, 3, 1});
    auto keep_for = [&](std::int64_t S) { return cat({keep, ones({2, 3, S - 1}, kBool)}, -1); };
    Tensor full = m(x, nn::MhaForward().is_causal(true).key_padding(keep_for(4)));
    NoGradGuard ng;
    nn::KVCache cache = m->make_kv_cache(Shape{2, 3}, 4);
    std::vector<Tensor> ys;
    for (std::int64_t t = 0; t < 4; ++t)
      ys.push_back(m(x.narrow(2, t, 1), nn::MhaForward().is_causal(true).key_padding(keep_for(t + 1)).cache(&cache)));
    // a padded query at position 0 with nothing to attend to: both give out_proj.bias there
    CHECK(max_abs_diff(cat(ys, 2), full) < 1e-5);
  }
}

TEST_CASE("mha kv cache: forward with a cache is differentiable w.r.t. the new tokens (float64 gradcheck)") {
  nn::MultiHeadAttention m(O(6, 2).num_kv_heads(1).rotary(nn::RotaryEmbeddingOptions(2)));
  m->to(kFloat64);
  randomize(*m, 4, 0.5);
  Tensor prefix = rnd({2, 3, 6}, 5);
  nn::KVCache cache = m->make_kv_cache(2, 8);
  {
    NoGradGuard ng;
    m(prefix, nn::MhaForward().is_causal(true).cache(&cache));
  }
  Tensor x = kt::leaf({2, 2, 6}, 6);
  std::vector<Tensor> in{x};
  for (Tensor p : m->parameters()) in.push_back(p);
  kt::grad_ok(
      [&](const std::vector<Tensor>& v) {
        cache.crop(3);  // every evaluation appends the same two tokens after the prefix
        return m(v[0], nn::MhaForward().is_causal(true).cache(&cache));
      },
      in);
  // the same numbers as the full forward over prefix + x
  cache.crop(3);
  Tensor y = m(x, nn::MhaForward().is_causal(true).cache(&cache));
  Tensor full = m(cat({prefix, x.detach()}, 1), nn::MhaForward().is_causal(true));
  CHECK(max_abs_diff(y, full.narrow(1, 3, 2)) < 1e-12);
  // in grad mode the history is copied out, so writing the cache later leaves the graph valid
  Tensor loss = sum(y);
  {
    NoGradGuard ng;
    m(x.detach(), nn::MhaForward().is_causal(true).cache(&cache));
  }
  CHECK_NOTHROW(loss.backward());
  CHECK(x.grad().defined());
}

TEST_CASE("mha kv cache: reorder for beam search equals decoding the reordered sequences") {
  nn::MultiHeadAttention m = make32(O(8, 2).num_kv_heads(1));
  Tensor x = rnd({3, 5, 8}, 21, 1.0, kFloat32);
  NoGradGuard ng;
  nn::KVCache cache = m->make_kv_cache(3, 5);
  m(x.narrow(1, 0, 3), nn::MhaForward().is_causal(true).cache(&cache));
  Tensor order = tensor({2, 2, 0});
  cache.reorder(order);
  CHECK(cache.length() == 3);
  // the surviving histories continue with new tokens
  Tensor xr = index_select(x, 0, order);
  Tensor y = m(x.narrow(1, 3, 2), nn::MhaForward().is_causal(true).cache(&cache));
  Tensor want = m(cat({xr.narrow(1, 0, 3), x.narrow(1, 3, 2)}, 1), nn::MhaForward().is_causal(true)).narrow(1, 3, 2);
  CHECK(max_abs_diff(y, want) < 1e-5);
  CHECK_KILN_ERROR(cache.reorder(tensor({0, 1})),
                   "[KVCache] reorder indices must be int64 of shape (3,), got int64 of shape (2,)");
  CHECK_KILN_ERROR(cache.reorder(tensor({0, 1, 3})), "reorder index 3 out of range [0, 3)");
}

TEST_CASE("mha kv cache: errors show the lengths, shapes and dtypes") {
  nn::MultiHeadAttention m(O(8, 2).num_kv_heads(1));
  nn::KVCache cache = m->make_kv_cache(2, 4);
  NoGradGuard ng;
  m(randn({2, 3, 8}), nn::MhaForward().is_causal(true).cache(&cache));
  CHECK_KILN_ERROR(m(randn({2, 2, 8}), nn::MhaForward().cache(&cache)),
                   "[KVCache] cache overflow: appending 2 positions to the 3 stored would need length 5, but "
                   "max_length is 4");
  CHECK(cache.length() == 3);  // unchanged by the failed call
  CHECK_KILN_ERROR(m(randn({3, 1, 8}), nn::MhaForward().cache(&cache)),
                   "[MultiHeadAttention] the KV cache holds batch (2,) with num_kv_heads=1, head_dim=4, v_head_dim=4, "
                   "but this call needs batch (3,) with 1, 4, 4");
  nn::MultiHeadAttention m2(O(8, 2));
  CHECK_KILN_ERROR(m2(randn({2, 1, 8}), nn::MhaForward().cache(&cache)), "but this call needs batch (2,) with 2, 4, 4");
  m->to(kFloat64);
  CHECK_KILN_ERROR(m(randn({2, 1, 8}, kFloat64), nn::MhaForward().cache(&cache)),
                   "[MultiHeadAttention] the KV cache is float32 but the projected query is float64");
  nn::KVCache empty;
  CHECK_KILN_ERROR(m(randn({2, 1, 8}, kFloat64), nn::MhaForward().cache(&empty)), "the KV cache is empty");
  // the cache on its own
  CHECK_KILN_ERROR(
      cache.append(zeros({2, 1, 1, 3}), zeros({2, 1, 1, 4})),
      "[KVCache] keys of shape (2, 1, 1, 3) do not match the cache's (batch..., Hkv, L, head_dim) = (2, 1, L, 4)");
  CHECK_KILN_ERROR(
      cache.append(zeros({2, 1, 1, 4}), zeros({2, 1, 2, 4})),
      "values of shape (2, 1, 2, 4) do not match the cache's (batch..., Hkv, L, v_head_dim) = (2, 1, L, 4) "
      "with the keys' L = 1");
  CHECK_KILN_ERROR(cache.append(zeros({2, 1, 1, 4}, kFloat64), zeros({2, 1, 1, 4}, kFloat64)),
                   "keys/values of dtype float64/float64 do not match the cache's float32");
  CHECK_KILN_ERROR(cache.crop(4), "[KVCache] crop length must be in [0, 3] (the stored length), got 4");
  cache.crop(1);
  CHECK(cache.length() == 1);
  kt::expect_shape(cache.keys(), {2, 1, 1, 4});
  CHECK_KILN_ERROR(nn::KVCache(Shape{2}, 0, 4, 4, 4), "num_kv_heads, max_length, head_dim and v_head_dim must be > 0");
  CHECK_KILN_ERROR(nn::KVCache(Shape{2}, 1, 4, 4, 4, kInt64), "the cache must be floating point, got int64");
  nn::MultiHeadAttention ax(O(8, 2).attention_axes({1, 2}));
  nn::KVCache c2 = ax->make_kv_cache(2, 4);
  CHECK_KILN_ERROR(ax(randn({2, 2, 2, 8}), nn::MhaForward().cache(&c2)),
                   "a KV cache cannot be combined with attention_axes");
}

TEST_CASE("decode attention: MultiHeadAttention decoding with GQA window ALiBi and sinks equals the full forward") {
  // The full forward (200 rows per kv head) takes the tiled path; each decode step the few-query
  // path, its keys (up to 101 in the window) split over chunks or not.
  using O = nn::MultiHeadAttentionOptions;
  for (bool split : {false, true})
    for (std::int64_t hkv : {4, 2, 1}) {
      CAPTURE(split);
      CAPTURE(hkv);
      nn::MultiHeadAttention m(
          O(32, 4).num_kv_heads(hkv).window_left(100).window_right(0).alibi(true).attention_sinks(true));
      km::randomize(*m, 3, 0.3);
      m->eval();
      const std::int64_t T = 200;
      Tensor x = km::rnd({2, T, 32}, 11, 1.0, kFloat32);
      Tensor full = m(x, nn::MhaForward().is_causal(true));
      std::optional<kx::SplitEverything> guard;
      if (split) guard.emplace();
      NoGradGuard ng;
      nn::KVCache cache = m->make_kv_cache(2, T);
      std::vector<Tensor> ys;
      ys.push_back(m(x.narrow(1, 0, 5), nn::MhaForward().is_causal(true).cache(&cache)));
      for (std::int64_t t = 5; t < T; ++t)
        ys.push_back(m(x.narrow(1, t, 1), nn::MhaForward().is_causal(true).cache(&cache)));
      CHECK(max_abs_diff(cat(ys, 1), full) < 1e-5);
    }
}
