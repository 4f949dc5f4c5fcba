// nn::MultiHeadAttention float64 gradcheck: outputs (and weights) w.r.t. the inputs and every
// projection / norm parameter, over the option and mask combinations that change the graph.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

enum class Call { Self, KV, QKV };

// A float64 module with random parameters (biases included), ready for gradcheck.
nn::MultiHeadAttention make(const nn::MultiHeadAttentionOptions& o, std::uint64_t seed = 3) {
  nn::MultiHeadAttention m(o);
  m->to(kFloat64);
  randomize(*m, seed, 0.5);
  m->eval();
  return m;
}

// gradcheck of the module's output (plus its weights when f asks for them) w.r.t. the inputs
// and all parameters. `batch` are the leading dims.
void check_mha(nn::MultiHeadAttention m, const Shape& batch, std::int64_t T, std::int64_t S, Call call,
               const nn::MhaForward& f = {}, std::vector<Tensor> extra = {}) {
  auto shape = [&](std::int64_t L, std::int64_t w) {
    Shape s = batch;
    s.insert(s.end(), {L, w});
    return s;
  };
  std::vector<Tensor> in{kt::leaf(shape(T, m->options.embed_dim()), 11)};
  if (call == Call::KV) in.push_back(kt::leaf(shape(S, m->kdim()), 12));
  if (call == Call::QKV) {
    in.push_back(kt::leaf(shape(S, m->kdim()), 12));
    in.push_back(kt::leaf(shape(S, m->vdim()), 13));
  }
  for (Tensor p : m->parameters()) in.push_back(p);
  for (Tensor e : extra) in.push_back(e);
  kt::grad_ok(
      [&](const std::vector<Tensor>& x) {
        nn::MhaResult r = call == Call::Self ? m->forward_with_weights(x[0], f)
                          : call == Call::KV ? m->forward_with_weights(x[0], x[1], f)
                                             : m->forward_with_weights(x[0], x[1], x[2], f);
        if (!r.weights.defined()) return r.output;
        return cat({r.output.flatten(), r.weights.flatten() * 0.7}, 0);
      },
      in);
}

using O = nn::MultiHeadAttentionOptions;

}  // namespace

TEST_CASE("mha gradcheck: kdim != vdim != embed_dim, out_dim != embed_dim, cross-attention") {
  check_mha(make(O(4, 2).kdim(5).vdim(3).out_dim(6)), {2}, 3, 4, Call::QKV);
}

TEST_CASE("mha gradcheck: self-attention, and one key/value input") {
  check_mha(make(O(4, 2)), {2}, 3, 3, Call::Self);
  check_mha(make(O(4, 2).kdim(3).vdim(3)), {1}, 2, 4, Call::KV);
}

TEST_CASE("mha gradcheck: grouped-query (2 of 4 kv heads) and multi-query (1) with padding") {
  for (std::int64_t hkv : {2, 1}) {
    CAPTURE(hkv);
    check_mha(make(O(8, 4).num_kv_heads(hkv)), {2}, 3, 4, Call::QKV, nn::MhaForward().key_padding(tensor({4, 2})));
  }
}

TEST_CASE("mha gradcheck: bias off, and per-projection bias overrides") {
  check_mha(make(O(4, 2).bias(false)), {2}, 3, 3, Call::Self);
  nn::MultiHeadAttention m = make(O(4, 2).bias(false).k_bias(true).out_bias(true));
  CHECK(m->named_parameters().keys() == std::vector<std::string>{"q_proj.weight", "k_proj.weight", "k_proj.bias",
                                                                 "v_proj.weight", "out_proj.weight", "out_proj.bias"});
  check_mha(m, {2}, 3, 4, Call::QKV);
}

TEST_CASE("mha gradcheck: every mask kind") {
  const std::int64_t T = 3, S = 4;
  SUBCASE("bool (T, S)") {
    Tensor keep = tensor({true, false, true, true, false, true, true, false, true, true, false, true}).reshape({T, S});
    check_mha(make(O(4, 2)), {2}, T, S, Call::QKV, nn::MhaForward().attn_mask(keep));
  }
  SUBCASE("float (B, H, T, S), itself learnable, with -inf entries") {
    Tensor bias = kt::leaf({2, 2, T, S}, 21);
    Tensor ninf = tensor({0.0, 0.0, -kInf, 0.0}, kFloat64);  // key 2 masked for everyone
    nn::MultiHeadAttention m = make(O(4, 2));
    // the mask is rebuilt from the leaf on each evaluation: pass it through MhaForward by reference
    std::vector<Tensor> in{kt::leaf({2, T, 4}, 11), kt::leaf({2, S, 4}, 12), kt::leaf({2, S, 4}, 13), bias};
    for (Tensor p : m->parameters()) in.push_back(p);
    kt::grad_ok(
        [&](const std::vector<Tensor>& x) {
          return m->forward(x[0], x[1], x[2], nn::MhaForward().attn_mask(x[3] + ninf));
        },
        in);
  }
  SUBCASE("lengths") {
    check_mha(make(O(4, 2)), {3}, T, S, Call::QKV, nn::MhaForward().key_padding(tensor({4, 1, 3})));
  }
  SUBCASE("(B, S) keep-mask") {
    Tensor keep = tensor({true, false, true, true, false, false, true, true}).reshape({2, S});
    check_mha(make(O(4, 2)), {2}, T, S, Call::QKV, nn::MhaForward().key_padding(keep));
  }
  SUBCASE("bool mask and padding together, weights returned") {
    Tensor keep = tensor({true, false, true, true, true, true, false, true, true, true, true, false}).reshape({T, S});
    check_mha(make(O(4, 2)), {2}, T, S, Call::QKV,
              nn::MhaForward().attn_mask(keep).key_padding(tensor({3, 4})).need_weights(true));
  }
}

TEST_CASE("mha gradcheck: causal self-attention, and causal cross-attention with padding") {
  check_mha(make(O(4, 2)), {2}, 4, 4, Call::Self, nn::MhaForward().is_causal(true));
  check_mha(make(O(4, 2)), {2}, 2, 4, Call::QKV, nn::MhaForward().is_causal(true).key_padding(tensor({4, 3})));
}

TEST_CASE("mha gradcheck: dropout > 0 in eval mode, qk_norm, explicit head dims") {
  check_mha(make(O(4, 2).dropout(0.5).out_dropout(0.3)), {2}, 3, 3, Call::Self);
  check_mha(make(O(4, 2).qk_norm(nn::Norm::LayerNorm)), {2}, 3, 4, Call::QKV);
  check_mha(make(O(4, 2).qk_norm(nn::Norm::RMSNorm).qk_norm_eps(1e-6)), {2}, 3, 4, Call::QKV);
  check_mha(make(O(4, 2).head_dim(3).v_head_dim(1)), {2}, 3, 4, Call::QKV);
}

TEST_CASE("mha gradcheck: extra leading batch dims, unbatched input, averaged weights") {
  check_mha(make(O(4, 2)), {2, 2}, 2, 3, Call::QKV,
            nn::MhaForward().key_padding(tensor({3, 1, 2, 3}).reshape({2, 2})).is_causal(true));
  check_mha(make(O(4, 2)), {}, 3, 3, Call::Self, nn::MhaForward().need_weights(true));
  check_mha(make(O(4, 2)), {2}, 2, 3, Call::QKV, nn::MhaForward().need_weights(true).average_attn_weights(true));
}

TEST_CASE("mha gradcheck: dropout in training mode with a re-seeded generator (per head and broadcast)") {
  for (bool bcast : {false, true}) {
    CAPTURE(bcast);
    Generator g(5);
    nn::MultiHeadAttention m =
        make(O(4, 2).num_kv_heads(1).dropout(0.3).out_dropout(0.2).broadcast_dropout(bcast).generator(&g));
    m->train();
    std::vector<Tensor> in{kt::leaf({2, 3, 4}, 11), kt::leaf({2, 5, 4}, 12), kt::leaf({2, 5, 4}, 13)};
    for (Tensor p : m->parameters()) in.push_back(p);
    kt::grad_ok(
        [&](const std::vector<Tensor>& x) {
          g.set_state(5, 0);  // the same masks on every evaluation
          return m->forward(x[0], x[1], x[2], nn::MhaForward().key_padding(tensor({5, 3})));
        },
        in);
  }
}
