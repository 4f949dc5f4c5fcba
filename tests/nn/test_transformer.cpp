// Transformer encoder/decoder layers and stacks: shapes, pre/post-norm values against the
// composition of their modules, dropout modes, masks passed through, causal decoding, float64
// gradcheck at tiny sizes, parameter names.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using L = nn::TransformerLayerOptions;

}  // namespace

TEST_CASE("transformer: layer and stack shapes, any leading batch dims") {
  nn::TransformerEncoderLayer enc(L(8, 2).dim_feedforward(16));
  kt::expect_shape(enc(randn({2, 5, 8})), {2, 5, 8});
  kt::expect_shape(enc(randn({3, 2, 5, 8})), {3, 2, 5, 8});
  kt::expect_shape(enc(randn({5, 8})), {5, 8});
  nn::TransformerDecoderLayer dec(L(8, 2).memory_dim(6).num_kv_heads(1));
  kt::expect_shape(dec(randn({2, 4, 8}), randn({2, 7, 6})), {2, 4, 8});
  kt::expect_shape(dec->cross_attn->as<nn::MultiHeadAttention>()->k_proj->weight, {4, 6});
  nn::TransformerEncoder stack(
      nn::TransformerEncoderOptions(L(8, 2).norm(nn::Norm::RMSNorm).gated(true).activation(nn::Activation::SiLU), 3));
  kt::expect_shape(stack(randn({2, 5, 8}), nn::EncoderForward().key_padding(tensor({5, 2}))), {2, 5, 8});
  nn::TransformerDecoder dstack(nn::TransformerDecoderOptions(L(8, 2), 2));
  kt::expect_shape(dstack(randn({2, 3, 8}), randn({2, 5, 8})), {2, 3, 8});
}

TEST_CASE("transformer: encoder layer equals the composition of its modules (post- and pre-norm)") {
  for (bool pre : {false, true}) {
    CAPTURE(pre);
    nn::TransformerEncoderLayer layer =
        float64_randomized(nn::TransformerEncoderLayer(L(8, 2).dim_feedforward(12).norm_first(pre)));
    layer->eval();
    Tensor x = rnd({2, 5, 8}, 1);
    nn::EncoderForward f = nn::EncoderForward().key_padding(tensor({5, 3})).is_causal(true);
    nn::MhaForward mf = nn::MhaForward().key_padding(tensor({5, 3})).is_causal(true);
    Tensor want;
    if (pre) {
      Tensor h = x + layer->self_attn(layer->norm1(x), mf);
      want = h + layer->ff(layer->norm2(h));
    } else {
      Tensor h = layer->norm1(x + layer->self_attn(x, mf));
      want = layer->norm2(h + layer->ff(h));
    }
    CHECK(max_abs_diff(layer(x, f), want) == 0.0);
    // the PyTorch structure: post-norm output rows are normalized
    if (!pre) {
      NoGradGuard ng;
      layer->norm2->named_parameters()["weight"].fill_(1.0);
      layer->norm2->named_parameters()["bias"].fill_(0.0);
      Tensor y = layer(x, f);
      CHECK(max_abs_diff(mean(y, {-1}), zeros({2, 5}, kFloat64)) < 1e-12);
    }
  }
}

TEST_CASE("transformer: decoder layer equals the composition of its modules (post- and pre-norm)") {
  for (bool pre : {false, true}) {
    CAPTURE(pre);
    nn::TransformerDecoderLayer layer =
        float64_randomized(nn::TransformerDecoderLayer(L(8, 2).dim_feedforward(12).norm_first(pre).memory_dim(5)));
    layer->eval();
    Tensor x = rnd({2, 4, 8}, 1), mem = rnd({2, 6, 5}, 2);
    nn::DecoderForward f = nn::DecoderForward().memory_key_padding(tensor({6, 4}));
    nn::MhaForward sf = nn::MhaForward().is_causal(true), cf = nn::MhaForward().key_padding(tensor({6, 4}));
    Tensor want;
    if (pre) {
      Tensor h = x + layer->self_attn(layer->norm1(x), sf);
      h = h + layer->cross_attn(layer->norm2(h), mem, cf);
      want = h + layer->ff(layer->norm3(h));
    } else {
      Tensor h = layer->norm1(x + layer->self_attn(x, sf));
      h = layer->norm2(h + layer->cross_attn(h, mem, cf));
      want = layer->norm3(h + layer->ff(h));
    }
    CHECK(max_abs_diff(layer(x, mem, f), want) == 0.0);
  }
}

TEST_CASE("transformer: decoder self-attention is causal by default") {
  nn::TransformerDecoderLayer layer = float64_randomized(nn::TransformerDecoderLayer(L(8, 2).dim_feedforward(12)));
  layer->eval();
  Tensor x = rnd({1, 5, 8}, 1), mem = rnd({1, 3, 8}, 2);
  Tensor x2 = x.clone();
  {
    NoGradGuard ng;
    x2.select(1, 4).fill_(9.0);  // change the last target position
  }
  Tensor y = layer(x, mem), y2 = layer(x2, mem);
  CHECK(max_abs_diff(y.slice(1, 0, 4), y2.slice(1, 0, 4)) == 0.0);  // earlier positions cannot see it
  CHECK(max_abs_diff(y.select(1, 4), y2.select(1, 4)) > 1e-3);
  nn::DecoderForward full = nn::DecoderForward().tgt_is_causal(false);
  CHECK(max_abs_diff(layer(x, mem, full).select(1, 0), layer(x2, mem, full).select(1, 0)) > 1e-6);
}

TEST_CASE("transformer: padding passes through the stack / padded keys cannot change valid rows") {
  nn::TransformerEncoder enc =
      float64_randomized(nn::TransformerEncoder(nn::TransformerEncoderOptions(L(8, 2).dim_feedforward(12), 2)));
  enc->eval();
  Tensor x = rnd({2, 5, 8}, 1);
  Tensor x2 = x.clone();
  {
    NoGradGuard ng;
    x2.select(0, 1).slice(0, 3, 5).fill_(5.0);  // padded positions of example 1
  }
  nn::EncoderForward f = nn::EncoderForward().key_padding(tensor({5, 3}));
  Tensor y = enc(x, f), y2 = enc(x2, f);
  CHECK(max_abs_diff(y.select(0, 1).slice(0, 0, 3), y2.select(0, 1).slice(0, 0, 3)) < 1e-14);
  CHECK(max_abs_diff(y.select(0, 0), y2.select(0, 0)) == 0.0);
  // the stack is its layers in order, then the optional final norm
  Tensor h = x;
  for (auto& l : enc->layer_list) h = l(h, f);
  CHECK(max_abs_diff(y, h) == 0.0);
  CHECK(enc->norm == nullptr);  // post-norm layers: no final norm by default
}

TEST_CASE("transformer: stack parameter names, independent layers, seeded generator") {
  Generator g1(3), g2(3);
  auto opts = [](Generator* g) { return nn::TransformerEncoderOptions(L(8, 2).norm_first(true).generator(g), 2); };
  nn::TransformerEncoder a(opts(&g1)), b(opts(&g2));
  auto sd = a->state_dict();
  for (const char* n :
       {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.out_proj.bias", "layers.0.ff.fc1.weight",
        "layers.0.ff.fc2.bias", "layers.0.norm1.weight", "layers.1.norm2.bias", "norm.weight", "norm.bias"})
    CHECK_MESSAGE(sd.contains(n), n);
  CHECK_FALSE(equal(sd["layers.0.self_attn.q_proj.weight"], sd["layers.1.self_attn.q_proj.weight"]));
  CHECK_FALSE(equal(sd["layers.0.ff.fc1.weight"], sd["layers.1.ff.fc1.weight"]));
  for (const auto& [n, t] : b->state_dict()) CHECK_MESSAGE(equal(t, sd[n]), n);
  // same generator state, same dropout masks in training mode
  Tensor x = randn({2, 4, 8});
  g1.set_state(7, 0);
  g2.set_state(7, 0);
  Tensor ya = a(x), yb = b(x);
  CHECK(equal(ya, yb));
  CHECK_FALSE(equal(ya, a(x)));
  a->eval();
  b->eval();
  CHECK(equal(a(x), b(x)));

  nn::TransformerDecoder d(nn::TransformerDecoderOptions(L(8, 2), 1).final_norm(true));
  CHECK(d->state_dict().contains("layers.0.cross_attn.v_proj.weight"));
  CHECK(d->state_dict().contains("layers.0.norm3.weight"));
  CHECK(d->state_dict().contains("norm.weight"));
}

TEST_CASE("transformer gradcheck: encoder and decoder layers at tiny sizes") {
  for (bool pre : {false, true}) {
    CAPTURE(pre);
    nn::TransformerEncoderLayer enc = float64_randomized(
        nn::TransformerEncoderLayer(L(4, 2).dim_feedforward(6).norm_first(pre).activation(nn::Activation::GELU)));
    enc->eval();
    std::vector<Tensor> in{kt::leaf({2, 3, 4}, 1)};
    for (Tensor p : enc->parameters()) in.push_back(p);
    kt::grad_ok(
        [&](const std::vector<Tensor>& x) {
          return enc(x[0], nn::EncoderForward().key_padding(tensor({3, 2})));
        },
        in);

    nn::TransformerDecoderLayer dec =
        float64_randomized(nn::TransformerDecoderLayer(L(4, 2)
                                                           .dim_feedforward(5)
                                                           .norm_first(pre)
                                                           .norm(pre ? nn::Norm::RMSNorm : nn::Norm::LayerNorm)
                                                           .memory_dim(3)
                                                           .num_kv_heads(1)));
    dec->eval();
    std::vector<Tensor> din{kt::leaf({2, 3, 4}, 2), kt::leaf({2, 4, 3}, 3)};
    for (Tensor p : dec->parameters()) din.push_back(p);
    kt::grad_ok(
        [&](const std::vector<Tensor>& x) {
          return dec(x[0], x[1], nn::DecoderForward().memory_key_padding(tensor({4, 2})));
        },
        din);
  }
}

TEST_CASE("transformer: option errors") {
  CHECK_KILN_ERROR(nn::TransformerEncoderLayer(L(8, 2).norm(nn::Norm::None)),
                   "[TransformerEncoderLayer] norm must be Norm::LayerNorm or Norm::RMSNorm, got Norm::None");
  CHECK_KILN_ERROR(nn::TransformerEncoderLayer(L(8, 3)), "embed_dim=8 is not divisible by num_heads=3");
  CHECK_KILN_ERROR(nn::TransformerEncoder(nn::TransformerEncoderOptions(L(8, 2), -1)),
                   "num_layers must be >= 0, got -1");
}
