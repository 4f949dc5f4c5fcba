// One API convention across nn: Module::as<T>, the one initializer signature (drawing from the
// layer's generator), and typed choices (nn::Norm, nn::Activation) instead of strings.
#include "test_util.hpp"

using namespace kiln;

namespace {

struct TwoImpl : nn::Module {
  TwoImpl() {
    fc = register_module("fc", nn::Linear(3, 2));
    ln = register_module("ln", nn::LayerNorm(2));
  }
  Tensor forward(const Tensor& x) { return ln(fc(x)); }
  nn::Linear fc{nullptr};
  nn::LayerNorm ln{nullptr};
};
KILN_MODULE(Two);

std::vector<float> values(const Tensor& t) { return t.contiguous().to_vector<float>(); }

}  // namespace

TEST_CASE("Module::as<T>: the Impl for an Impl type or a holder type, nullptr otherwise") {
  Two two;
  nn::Module& m = *two->fc;
  CHECK(m.as<nn::LinearImpl>() == two->fc.get());
  CHECK(m.as<nn::Linear>() == two->fc.get());  // a holder type means its Impl
  static_assert(std::is_same_v<decltype(m.as<nn::Linear>()), nn::LinearImpl*>);
  CHECK(m.as<nn::LayerNorm>() == nullptr);
  CHECK(m.as<nn::Module>() == &m);
  const nn::Module& cm = m;
  static_assert(std::is_same_v<decltype(cm.as<nn::Linear>()), const nn::LinearImpl*>);
  CHECK(cm.as<nn::Linear>() == two->fc.get());
  // through a holder and over a traversal
  CHECK(two->as<Two>() == two.get());
  CHECK(two->fc->as<nn::RMSNorm>() == nullptr);
  int linears = 0, norms = 0;
  two->apply([&](nn::Module& sub) {
    linears += sub.as<nn::Linear>() != nullptr;
    norms += sub.as<nn::LayerNormImpl>() != nullptr;
  });
  CHECK(linears == 1);
  CHECK(norms == 1);
}

TEST_CASE("InitFn: one signature (Tensor, Generator*), called with the layer's generator") {
  Generator g(4);
  std::vector<Generator*> seen;
  auto record = [&](Tensor t, Generator* gen) {
    seen.push_back(gen);
    nn::init::normal_(t, 0.0, 1.0, gen);
  };
  nn::Linear lin(nn::LinearOptions(3, 2).weight_init(record).bias_init(record).generator(&g));
  nn::Embedding emb(nn::EmbeddingOptions(5, 2).weight_init(record).generator(&g));
  nn::LearnedPositionalEmbedding pos(nn::LearnedPositionalEmbeddingOptions(4, 2).weight_init(record).generator(&g));
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(4, 2).kernel_init(record).generator(&g));
  CHECK(seen == std::vector<Generator*>(2 + 1 + 1 + 3, &g));
  seen.clear();
  nn::Linear plain(nn::LinearOptions(3, 2).weight_init(record).bias(false));
  CHECK(seen == std::vector<Generator*>{nullptr});  // null = the default generator
}

TEST_CASE("InitFn with a Generator: the same seed gives the same weights, defaults and custom alike") {
  auto custom = [](Tensor t, Generator* gen) { nn::init::truncated_normal_(t, 0.0, 0.02, -0.04, 0.04, gen); };
  auto build = [&](std::uint64_t seed) {
    Generator g(seed);
    std::vector<std::vector<float>> w;
    nn::Linear lin(nn::LinearOptions(5, 3).generator(&g));                       // default init
    nn::Linear lin2(nn::LinearOptions(5, 3).weight_init(custom).generator(&g));  // custom init
    nn::Embedding emb(nn::EmbeddingOptions(6, 3).padding_idx(0).generator(&g));
    nn::LearnedPositionalEmbedding pos(nn::LearnedPositionalEmbeddingOptions(4, 3).generator(&g));
    nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(4, 2).out_kernel_init(custom).generator(&g));
    for (const Tensor& t : {lin->weight, lin->bias, lin2->weight, emb->weight, pos->weight}) w.push_back(values(t));
    for (const Tensor& t : mha->parameters()) w.push_back(values(t));
    return w;
  };
  manual_seed(1);
  auto a = build(11);
  manual_seed(2);  // the default generator plays no part
  auto b = build(11);
  CHECK(a == b);
  auto c = build(12);
  CHECK(a != c);
  // the padding row is still zeroed after the draw
  CHECK(std::vector<float>(a[3].begin(), a[3].begin() + 3) == std::vector<float>(3, 0.0f));
}

TEST_CASE("nn::Norm chooses qk_norm and the transformer norm, to_string and make_norm") {
  CHECK(std::string(nn::to_string(nn::Norm::LayerNorm)) == "layer_norm");
  CHECK(std::string(nn::to_string(nn::Norm::RMSNorm)) == "rms_norm");
  CHECK(std::string(nn::to_string(nn::Norm::None)) == "none");
  CHECK(nn::make_norm(nn::Norm::None, 4) == nullptr);
  CHECK(nn::make_norm(nn::Norm::LayerNorm, 4)->as<nn::LayerNorm>() != nullptr);
  auto rms = nn::make_norm(nn::Norm::RMSNorm, 4, 1e-6);
  REQUIRE(rms->as<nn::RMSNorm>() != nullptr);
  CHECK(rms->as<nn::RMSNorm>()->options.eps() == 1e-6);
  CHECK(nn::make_norm(nn::Norm::LayerNorm, 4, std::nullopt, /*bias=*/false)->named_parameters().keys() ==
        std::vector<std::string>{"weight"});

  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(8, 2).qk_norm(nn::Norm::RMSNorm));
  CHECK(mha->q_norm->as<nn::RMSNorm>() != nullptr);
  CHECK(mha->extra_repr().find("qk_norm=rms_norm") != std::string::npos);
  nn::TransformerEncoderLayer layer(nn::TransformerLayerOptions(8, 2).norm(nn::Norm::RMSNorm));
  CHECK(layer->norm1->as<nn::RMSNorm>() != nullptr);
  CHECK(layer->extra_repr().find("norm=rms_norm") != std::string::npos);
  CHECK(nn::TransformerEncoderLayer(nn::TransformerLayerOptions(8, 2))->norm1->as<nn::LayerNorm>() != nullptr);
}

TEST_CASE("nn::Activation chooses the feed-forward activation") {
  manual_seed(3);
  Tensor x = randn({2, 4});
  nn::FeedForward ff(nn::FeedForwardOptions(4, 6).activation(nn::Activation::GELUTanh));
  CHECK(allclose(ff(x), ff->fc2(gelu(ff->fc1(x), "tanh"))));
  CHECK(ff->extra_repr().find("activation=gelu_tanh") != std::string::npos);
  nn::TransformerEncoderLayer layer(nn::TransformerLayerOptions(4, 2).activation(nn::Activation::SiLU));
  CHECK(layer->ff->as<nn::FeedForward>()->options.activation() == nn::Activation::SiLU);
  CHECK(layer->extra_repr().find("activation=silu") != std::string::npos);
  CHECK(nn::TransformerLayerOptions(4, 2).activation() == nn::Activation::ReLU);  // PyTorch's default
  CHECK(nn::FeedForwardOptions(4).activation() == nn::Activation::GELU);
}
