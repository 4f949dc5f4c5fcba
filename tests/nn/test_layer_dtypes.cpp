// Which input dtypes each layer takes: floating ones (float32, float64, bfloat16, float16) for
// every layer but Embedding (int64 indices) and ReLU (int64 too, kept); anything else is a
// kiln::Error naming the layer and the dtype, never a silent promotion (PyTorch raises on
// Linear(int64) too). Autocast is unaffected: its 16-bit inputs are floating.
#include "test_util.hpp"

using namespace kiln;

namespace {

constexpr const char* kExpectFloat =
    "is not supported: expected a floating dtype (float32, float64, bfloat16, float16)";

std::string msg(const char* layer, const char* what, const char* dtype) {
  return fmt::format("[{}] {} dtype {} {}", layer, what, dtype, kExpectFloat);
}

// `run` on an int64 and a bool tensor raises naming `layer`; on every floating dtype it runs,
// and keeps the input's dtype where `keeps_dtype`.
template <typename F>
void check_layer(const char* layer, const Shape& shape, F run, bool keeps_dtype = true) {
  INFO("layer " << layer);
  CHECK_KILN_ERROR(run(ones(shape, kInt64)), msg(layer, "input", "int64").c_str());
  CHECK_KILN_ERROR(run(ones(shape, kBool)), msg(layer, "input", "bool").c_str());
  for (DType d : {kFloat32, kFloat64, kBFloat16, kFloat16}) {
    Tensor y = run(full(shape, 0.5, d));
    if (keeps_dtype) CHECK(y.dtype() == d);
  }
}

}  // namespace

TEST_CASE("layer dtypes: Linear, norms, dropout, activations, feed-forward, positions") {
  Generator g(3);
  nn::Linear lin(nn::LinearOptions(4, 3).generator(&g));
  check_layer(
      "Linear", {2, 4}, [&](const Tensor& x) { return lin(x); }, /*keeps_dtype=*/false);
  CHECK(lin(ones({2, 4}, kFloat64)).dtype() == kFloat64);  // promotes with the float32 weight, as before
  nn::LayerNorm ln(4);
  check_layer(
      "LayerNorm", {2, 4}, [&](const Tensor& x) { return ln(x); }, false);
  nn::RMSNorm rms(4);
  check_layer(
      "RMSNorm", {2, 4}, [&](const Tensor& x) { return rms(x); }, false);
  nn::Dropout drop(nn::DropoutOptions(0.5).generator(&g));
  check_layer("Dropout", {2, 4}, [&](const Tensor& x) { return drop(x); });
  drop->eval();  // eval returns its input unchanged: still checked
  check_layer("Dropout", {2, 4}, [&](const Tensor& x) { return drop(x); });
  nn::GELU gelu;
  check_layer("GELU", {2, 4}, [&](const Tensor& x) { return gelu(x); });
  nn::SiLU silu;
  check_layer("SiLU", {2, 4}, [&](const Tensor& x) { return silu(x); });
  nn::Tanh tanh_m;
  check_layer("Tanh", {2, 4}, [&](const Tensor& x) { return tanh_m(x); });
  nn::Sigmoid sig;
  check_layer("Sigmoid", {2, 4}, [&](const Tensor& x) { return sig(x); });
  nn::FeedForward ff(nn::FeedForwardOptions(4, 8));
  check_layer(
      "FeedForward", {2, 4}, [&](const Tensor& x) { return ff(x); }, false);
  nn::LearnedPositionalEmbedding pos(8, 4);
  check_layer(
      "LearnedPositionalEmbedding", {2, 3, 4}, [&](const Tensor& x) { return pos(x); }, false);
  nn::SinusoidalPositionalEmbedding sin_pos(8, 4);
  check_layer(
      "SinusoidalPositionalEmbedding", {2, 3, 4}, [&](const Tensor& x) { return sin_pos(x); }, false);
  nn::RotaryEmbedding rope(4);
  check_layer("RotaryEmbedding", {2, 3, 4}, [&](const Tensor& x) { return rope(x); });
  check_layer("RotaryEmbedding", {2, 3, 4}, [&](const Tensor& x) { return rope(x, arange(0, 3)); });
}

TEST_CASE("layer dtypes: ReLU takes int64 and keeps it, bool is an error") {
  nn::ReLU relu;
  Tensor y = relu(tensor(std::vector<std::int64_t>{-2, 3}));
  CHECK(y.dtype() == kInt64);
  CHECK(y.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 3});
  CHECK_KILN_ERROR(relu(ones({2}, kBool)), "[relu] relu of a bool tensor is not supported");
}

TEST_CASE("layer dtypes: Embedding takes int64 indices only") {
  nn::Embedding emb(5, 3);
  CHECK(emb(tensor(std::vector<std::int64_t>{0, 4})).shape() == Shape{2, 3});
  CHECK_KILN_ERROR(emb(ones({2}, kFloat32)),
                   "[Embedding] input dtype float32 is not supported: expected int64 indices");
  CHECK_KILN_ERROR(emb(ones({2}, kBool)), "[Embedding] input dtype bool is not supported: expected int64 indices");
  CHECK_KILN_ERROR(emb(Tensor()), "[Embedding] input tensor is undefined");
}

TEST_CASE("layer dtypes: MultiHeadAttention names the query, key or value") {
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(4, 2));
  Tensor x = randn({2, 3, 4}), bad = ones({2, 3, 4}, kInt64);
  CHECK(mha(x).shape() == Shape{2, 3, 4});
  CHECK_KILN_ERROR(mha(bad), msg("MultiHeadAttention", "query", "int64").c_str());
  CHECK_KILN_ERROR(mha(x, bad, x), msg("MultiHeadAttention", "key", "int64").c_str());
  CHECK_KILN_ERROR(mha(x, x, ones({2, 3, 4}, kBool)), msg("MultiHeadAttention", "value", "bool").c_str());
  nn::MultiHeadAttention axes(nn::MultiHeadAttentionOptions(4, 2).attention_axes({1}));
  CHECK_KILN_ERROR(axes(bad), msg("MultiHeadAttention", "query", "int64").c_str());
  // A transformer layer's first sub-layer reports it.
  nn::TransformerEncoderLayer post(4, 2);
  CHECK_KILN_ERROR(post(bad), msg("MultiHeadAttention", "query", "int64").c_str());
  nn::TransformerEncoderLayer pre(nn::TransformerLayerOptions(4, 2).norm_first(true));
  CHECK_KILN_ERROR(pre(bad), msg("LayerNorm", "input", "int64").c_str());
}

TEST_CASE("layer dtypes: autocast inputs stay valid") {
  Generator g(5);
  nn::Linear lin(nn::LinearOptions(4, 3).generator(&g));
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(4, 2));
  auto mixed = autocast(kBFloat16);
  CHECK(lin(randn({2, 4})).dtype() == kBFloat16);  // float32 input, cast by autocast
  Tensor h = lin(randn({2, 4}, kBFloat16));        // a 16-bit input straight from another layer
  CHECK(h.dtype() == kBFloat16);
  CHECK(mha(randn({2, 3, 4}, kBFloat16)).dtype() == kBFloat16);
  CHECK_KILN_ERROR(lin(ones({2, 4}, kInt64)), msg("Linear", "input", "int64").c_str());
}
