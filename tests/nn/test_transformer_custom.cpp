// Transformer layers with blocks of the user's own (feed-forward, attentions, norms through the
// options' make_* builders): registered under the usual names, trained, gradchecked; and the
// default layers unchanged: their parameter names, module tree and a checkpoint written before
// the blocks became pluggable.
#include "test_util.hpp"

#include <kiln/io/safetensors.hpp>

using namespace kiln;

namespace {

using L = nn::TransformerLayerOptions;

// A SwiGLU feed-forward: w2(silu(w1 x) * w3 x).
struct SwiGLUFFImpl : nn::Module {
  SwiGLUFFImpl(std::int64_t d, std::int64_t h, Generator* g) : nn::Module("SwiGLUFF") {
    w1 = register_module("w1", nn::Linear(nn::LinearOptions(d, h).bias(false).generator(g)));
    w3 = register_module("w3", nn::Linear(nn::LinearOptions(d, h).bias(false).generator(g)));
    w2 = register_module("w2", nn::Linear(nn::LinearOptions(h, d).bias(false).generator(g)));
  }
  Tensor forward(const Tensor& x) { return w2(silu(w1(x)) * w3(x)); }
  nn::Linear w1{nullptr}, w3{nullptr}, w2{nullptr};
};
KILN_MODULE(SwiGLUFF);

// ScaleNorm (Nguyen & Salazar): g * sqrt(d) * x / ||x||, one learned scalar.
struct ScaleNormImpl : nn::Module {
  explicit ScaleNormImpl(std::int64_t d) : nn::Module("ScaleNorm"), dim(d) { g = register_parameter("g", ones({1})); }
  Tensor forward(const Tensor& x) {
    return x * (g * std::sqrt(static_cast<double>(dim))) / sqrt(sum(x * x, {-1}, true) + 1e-6);
  }
  std::int64_t dim;
  Tensor g;
};
KILN_MODULE(ScaleNorm);

// One-head attention with a single shared projection; honours the layer's causal flag and
// length padding, so it can stand in for MultiHeadAttention.
struct TiedAttentionImpl : nn::Module {
  explicit TiedAttentionImpl(std::int64_t d) : nn::Module("TiedAttention") {
    proj = register_module("proj", nn::Linear(d, d));
  }
  Tensor forward(const Tensor& x, const nn::MhaForward& f) { return forward(x, x, f); }
  Tensor forward(const Tensor& x, const Tensor& memory, const nn::MhaForward& f) {
    calls.push_back(f.is_causal());
    Tensor q = unsqueeze(proj(x), -3), kv = unsqueeze(proj(memory), -3);  // (B, 1, T, D): one head
    SdpaOptions o = SdpaOptions().is_causal(f.is_causal());
    if (f.key_padding().defined()) {
      Tensor keep = lt(unsqueeze(arange(memory.size(-2)), 0), unsqueeze(f.key_padding(), -1));  // (B, S)
      o.attn_mask(unsqueeze(unsqueeze(keep, -2), -2));
    }
    return squeeze(scaled_dot_product_attention(q, kv, kv, o).output, -3);
  }
  nn::Linear proj{nullptr};
  std::vector<bool> calls;
};
KILN_MODULE(TiedAttention);

double max_diff(const Tensor& a, const Tensor& b) { return kiln::max(kiln::abs(a - b)).item<double>(); }

}  // namespace

TEST_CASE("transformer: a custom feed-forward in an encoder layer is registered as `ff` and trains") {
  Generator gen(11);
  const auto opts = L(8, 2).dropout(0).norm_first(true).generator(&gen).make_feedforward(
      [](const L& o) { return SwiGLUFF(o.d_model(), 12, o.generator()); });
  nn::TransformerEncoderLayer layer(opts);
  REQUIRE(layer->ff->as<SwiGLUFF>() != nullptr);
  CHECK(layer->ff->as<nn::FeedForward>() == nullptr);
  auto sd = layer->state_dict();
  for (const char* n : {"ff.w1.weight", "ff.w3.weight", "ff.w2.weight", "self_attn.q_proj.weight", "norm2.weight"})
    CHECK_MESSAGE(sd.contains(n), n);
  CHECK_FALSE(sd.contains("ff.fc1.weight"));
  CHECK(layer->num_parameters() == 4 * (8 * 8 + 8) + 3 * 8 * 12 + 2 * 2 * 8);
  CHECK(layer->str().find("ff: SwiGLUFF") != std::string::npos);
  SwiGLUFFImpl& ff = *layer->ff->as<SwiGLUFF>();

  // the layer is the pre-norm composition with the custom block
  Tensor x = randn({4, 5, 8}, kFloat32, &gen);
  Tensor h = x + layer->self_attn(layer->norm1(x), nn::MhaForward());
  CHECK(max_diff(layer(x), h + ff.forward(layer->norm2(h))) == 0.0);

  // trains: a per-token nonlinear target the feed-forward must fit
  Tensor target = x + sin(x * 2.0) * 0.5;
  const Tensor w1_before = ff.w1->weight.clone();
  optim::AdamW opt(layer->parameters(), optim::AdamWOptions(1e-2).weight_decay(0));
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    Tensor loss = mse_loss(layer(x), target);
    opt.zero_grad();
    loss.backward();
    if (step == 0) REQUIRE(ff.w1->weight.grad().defined());
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  CHECK(last < 0.2 * first);
  CHECK_FALSE(equal(ff.w1->weight, w1_before));

  // in a stack every layer builds its own block
  nn::TransformerEncoder enc(nn::TransformerEncoderOptions(opts, 2));
  CHECK(enc->layer_list[0]->ff.ptr() != enc->layer_list[1]->ff.ptr());
  CHECK(enc->state_dict().contains("layers.1.ff.w2.weight"));
  CHECK(enc->state_dict().contains("norm.weight"));
}

TEST_CASE("transformer: custom attention and norms in a decoder layer (masks reach them), gradchecked") {
  std::vector<TiedAttention> made;
  auto opts = L(4, 2).dim_feedforward(6).dropout(0).norm_first(true);
  opts.make_self_attention([&](const L& o) { return made.emplace_back(o.d_model()); })
      .make_cross_attention([&](const L& o) { return made.emplace_back(o.d_model()); })
      .make_norm([](const L& o) { return ScaleNorm(o.d_model()); });
  nn::TransformerDecoderLayer dec(opts);
  REQUIRE(made.size() == 2);
  CHECK(dec->norm3->as<ScaleNorm>() != nullptr);
  CHECK(dec->state_dict().contains("cross_attn.proj.weight"));
  CHECK(dec->state_dict().contains("norm1.g"));
  CHECK(dec->state_dict().contains("ff.fc1.weight"));  // the default feed-forward stays

  dec->to(kFloat64);
  Tensor x = kt::leaf({2, 3, 4}, 1), mem = kt::leaf({2, 5, 4}, 2);
  auto run = [&](const std::vector<Tensor>& in) {
    return dec(in[0], in[1], nn::DecoderForward().memory_key_padding(tensor({5, 2})));
  };
  Tensor y = run({x, mem});
  REQUIRE(made[0]->calls.size() == 1);
  CHECK(made[0]->calls[0]);  // the decoder's self-attention is causal
  CHECK_FALSE(made[1]->calls[0]);
  Tensor h = x + made[0]->forward(dec->norm1(x), nn::MhaForward().is_causal(true));
  h = h + made[1]->forward(dec->norm2(h), mem, nn::MhaForward().key_padding(tensor({5, 2})));
  CHECK(max_diff(y, h + dec->ff(dec->norm3(h))) == 0.0);
  nn::gradcheck(dec, run, {x, mem});
}

TEST_CASE("transformer: default layers keep their names, tree and old checkpoints") {
  // Names and order as before the blocks became pluggable (what checkpoints hold).
  nn::TransformerEncoder enc(nn::TransformerEncoderOptions(L(8, 2).dim_feedforward(16).norm_first(true), 1));
  std::vector<std::string> names;
  for (const auto& [n, t] : enc->state_dict()) names.push_back(n + " " + shape_str(t.shape()));
  const std::vector<std::string> want = {"layers.0.self_attn.q_proj.weight (8, 8)",
                                         "layers.0.self_attn.q_proj.bias (8,)",
                                         "layers.0.self_attn.k_proj.weight (8, 8)",
                                         "layers.0.self_attn.k_proj.bias (8,)",
                                         "layers.0.self_attn.v_proj.weight (8, 8)",
                                         "layers.0.self_attn.v_proj.bias (8,)",
                                         "layers.0.self_attn.out_proj.weight (8, 8)",
                                         "layers.0.self_attn.out_proj.bias (8,)",
                                         "layers.0.ff.fc1.weight (16, 8)",
                                         "layers.0.ff.fc1.bias (16,)",
                                         "layers.0.ff.fc2.weight (8, 16)",
                                         "layers.0.ff.fc2.bias (8,)",
                                         "layers.0.norm1.weight (8,)",
                                         "layers.0.norm1.bias (8,)",
                                         "layers.0.norm2.weight (8,)",
                                         "layers.0.norm2.bias (8,)",
                                         "norm.weight (8,)",
                                         "norm.bias (8,)"};
  CHECK(names == want);
  const std::string tree = enc->str();
  for (const char* line :
       {"    0: TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1, activation=relu, "
        "norm_first=true, norm=layer_norm) (600 parameters)\n      self_attn: MultiHeadAttention(",
        "\n      ff: FeedForward(dim=8, hidden_dim=16, out_dim=8, activation=relu, gated=false) (280 parameters)\n",
        "\n      norm1: LayerNorm((8,), eps=1e-05, elementwise_affine=true, bias=true) (16 parameters)\n",
        "\n      dropout2: Dropout(p=0.1)\n  norm: LayerNorm("})
    CHECK_MESSAGE(tree.find(line) != std::string::npos, line);

  // A file written by kiln cb98941 (before this change) from these layers, with their outputs:
  //   Generator g(5); enc (the options above, .generator(&g)); dec = TransformerDecoderLayer(L(8, 2)
  //   .dim_feedforward(12).memory_dim(6).gated(true).activation(SiLU).generator(&g)); both eval;
  //   enc_x, dec_tgt, dec_mem = randn (2,4,8), (2,3,8), (2,5,6) from g; enc_y with key_padding {4, 3},
  //   dec_y with memory_key_padding {5, 2}; tensors "enc.<name>", "dec.<name>".
  auto file = io::load_safetensors(std::string(KILN_TEST_DATA) + "/transformer/default_layers_v1.safetensors");
  StateDict enc_sd, dec_sd;
  for (const auto& [n, t] : file.tensors) {
    if (n.rfind("enc.", 0) == 0) enc_sd.insert(n.substr(4), t);
    if (n.rfind("dec.", 0) == 0) dec_sd.insert(n.substr(4), t);
  }
  nn::TransformerDecoderLayer dec(
      L(8, 2).dim_feedforward(12).memory_dim(6).gated(true).activation(nn::Activation::SiLU));
  enc->load_state_dict(enc_sd);  // strict: every name matches
  dec->load_state_dict(dec_sd);
  enc->eval();
  dec->eval();
  NoGradGuard ng;
  CHECK(max_diff(enc(file.at("enc_x"), nn::EncoderForward().key_padding(tensor({4, 3}))), file.at("enc_y")) < 1e-5);
  CHECK(max_diff(dec(file.at("dec_tgt"), file.at("dec_mem"), nn::DecoderForward().memory_key_padding(tensor({5, 2}))),
                 file.at("dec_y")) < 1e-5);
}

TEST_CASE("transformer: builder and slot errors") {
  CHECK_KILN_ERROR(nn::TransformerEncoderLayer(
                       L(8, 2).make_feedforward([](const L&) { return nn::FeedForwardModule(); })),
                   "[TransformerEncoderLayer] the make_feedforward builder returned an empty module");
  CHECK_KILN_ERROR(nn::TransformerDecoderLayer(L(8, 2).make_norm([](const L&) { return nn::NormModule(nullptr); })),
                   "[TransformerDecoderLayer] the make_norm builder returned an empty module");
  nn::NormModule empty;
  CHECK_KILN_ERROR(empty(ones({2})), "[AnyModule] calling an empty module slot");
  // norm = Norm::None is fine when the norms are built by make_norm
  nn::TransformerEncoderLayer ok(
      L(4, 2).norm(nn::Norm::None).make_norm([](const L& o) { return ScaleNorm(o.d_model()); }));
  CHECK(ok->norm1->as<ScaleNorm>() != nullptr);
}
