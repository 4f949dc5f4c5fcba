// Basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout, activations and their functional
// forms — values against hand-computed references, float64 gradchecks through parameters and
// inputs, and errors. Containers, FeedForward and positional embeddings: test_layers_blocks.cpp.
#include "test_util.hpp"

#include <numbers>

using namespace kiln;
namespace F = kiln::nn::functional;

namespace {

// Sets a parameter's values (no graph).
void set(Tensor p, const std::vector<double>& v) {
  NoGradGuard ng;
  p.copy_(tensor(v, p.shape(), kFloat64));
}

}  // namespace

// ---------- Linear ----------

TEST_CASE("Linear: values, leading dims, no bias") {
  nn::Linear fc(3, 2);
  kt::expect_shape(fc->weight, {2, 3});
  kt::expect_shape(fc->bias, {2});
  set(fc->weight, {1, 2, 3, 4, 5, 6});
  set(fc->bias, {0.5, -1});
  Tensor x = tensor({1.0f, 0.0f, -1.0f, 2.0f, 1.0f, 0.0f}).reshape({2, 3});
  kt::expect_values(fc(x), {-1.5, -3, 4.5, 12});
  // any leading dims
  Tensor x3 = x.reshape({2, 1, 3}).expand({2, 4, 3});
  Tensor y3 = fc(x3);
  kt::expect_shape(y3, {2, 4, 2});
  kt::expect_values(y3.select(1, 2), {-1.5, -3, 4.5, 12});
  kt::expect_values(fc(tensor({1.0f, 1.0f, 1.0f})), {6.5, 14});  // 1-D input
  nn::Linear nb(nn::LinearOptions(3, 2).bias(false));
  CHECK_FALSE(nb->bias.defined());
  CHECK(nb->named_parameters().keys() == std::vector<std::string>{"weight"});
  set(nb->weight, {1, 2, 3, 4, 5, 6});
  kt::expect_values(nb(x), {-2, -2, 4, 13});
  nn::Linear zero_in(0, 3);  // degenerate but legal: output is the bias
  kt::expect_shape(zero_in(zeros({4, 0})), {4, 3});
}

TEST_CASE("Linear: default init is U(-1/sqrt(in), 1/sqrt(in)) for weight and bias / overridable") {
  manual_seed(0);
  nn::Linear fc(256, 512);
  double bound = 1.0 / 16.0;
  auto w = fc->weight.to_vector<double>();
  auto [wmin, wmax] = std::minmax_element(w.begin(), w.end());
  CHECK(*wmin >= -bound);
  CHECK(*wmax <= bound);
  CHECK(*wmax > 0.99 * bound);
  double var = 0;
  for (double v : w) var += v * v;
  var /= static_cast<double>(w.size());
  CHECK(var == doctest::Approx(bound * bound / 3.0).epsilon(0.02));
  auto b = fc->bias.to_vector<double>();
  CHECK(*std::max_element(b.begin(), b.end()) <= bound);
  CHECK(*std::min_element(b.begin(), b.end()) >= -bound);
  CHECK(std::abs(b[0] - b[1]) > 0);
  nn::Linear custom(nn::LinearOptions(4, 3)
                        .weight_init([](Tensor t, Generator*) { nn::init::constant_(t, 0.5); })
                        .bias_init([](Tensor t, Generator*) { nn::init::zeros_(t); }));
  kt::expect_values(custom->weight, std::vector<double>(12, 0.5));
  kt::expect_values(custom->bias, {0, 0, 0});
  set(custom->weight, std::vector<double>(12, 3.0));
  custom->reset_parameters();  // re-applies the options' initializers
  kt::expect_values(custom->weight, std::vector<double>(12, 0.5));
}

TEST_CASE("Linear: float64 gradcheck through input, weight and bias / non-contiguous input") {
  nn::Linear fc(3, 2);
  fc->to(kFloat64);
  Tensor x = kt::leaf({2, 3}, 7);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return fc(in[0]); }, {x, fc->weight, fc->bias});
  Tensor xn = kt::noncontig_leaf({2, 2, 3}, 8);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return fc(in[0]); }, {xn, fc->weight, fc->bias});
}

TEST_CASE("Linear: errors name the layer and the shapes") {
  nn::Linear fc(3, 4);
  CHECK_KILN_ERROR(fc(zeros({2, 5})),
                   "[Linear] input of shape (2, 5) does not match weight of shape (4, 3): expected last dim "
                   "in_features=3, got 5");
  CHECK_KILN_ERROR(fc(zeros({})), "[Linear] input of shape () does not match weight of shape (4, 3)");
  CHECK_KILN_ERROR(nn::Linear(3, -1), "[Linear] in_features and out_features must be >= 0, got 3 and -1");
  CHECK(fc->extra_repr() == "in_features=3, out_features=4, bias=true");
}

// ---------- Embedding ----------

TEST_CASE("Embedding: rows picked by ids of any shape") {
  nn::Embedding emb(5, 2);
  set(emb->weight, {0, 1, 10, 11, 20, 21, 30, 31, 40, 41});
  Tensor ids = tensor({4, 0, 2, 2, 1, 3}).reshape({2, 3});
  Tensor e = emb(ids);
  kt::expect_shape(e, {2, 3, 2});
  kt::expect_values(e, {40, 41, 0, 1, 20, 21, 20, 21, 10, 11, 30, 31});
  kt::expect_values(emb(tensor({3}).reshape({})), {30, 31});
  CHECK(emb->extra_repr() == "5, 2");
  // default init N(0, 1)
  manual_seed(1);
  nn::Embedding big(1000, 64);
  auto v = big->weight.to_vector<double>();
  double mean = 0, sq = 0;
  for (double x : v) mean += x, sq += x * x;
  mean /= static_cast<double>(v.size());
  CHECK(std::abs(mean) < 0.02);
  CHECK(sq / static_cast<double>(v.size()) == doctest::Approx(1.0).epsilon(0.03));
}

TEST_CASE("Embedding: padding_idx row starts at zero and gets no gradient") {
  manual_seed(2);
  nn::Embedding emb(nn::EmbeddingOptions(6, 3).padding_idx(1));
  kt::expect_values(emb->weight.select(0, 1), {0, 0, 0});
  CHECK(emb->extra_repr() == "6, 3, padding_idx=1");
  Tensor ids = tensor({1, 2, 1, 5, 2, 1}).reshape({2, 3});
  Tensor w = rand({2, 3, 3});
  (emb(ids) * w).sum().backward();
  Tensor g = emb->weight.grad();
  kt::expect_values(g.select(0, 1), {0, 0, 0});
  kt::expect_values(g.select(0, 0), {0, 0, 0});  // unused row
  kt::expect_values(g.select(0, 2), (w.select(0, 0).select(0, 1) + w.select(0, 1).select(0, 1)).to_vector<double>());
  kt::expect_values(g.select(0, 5), w.select(0, 1).select(0, 0).to_vector<double>());
  // the padding row's value is still returned (if the user changed it)
  set(emb->weight.select(0, 1), {7, 8, 9});
  kt::expect_values(emb(tensor({1})), {7, 8, 9});
  // negative padding_idx counts from the end
  nn::Embedding neg(nn::EmbeddingOptions(4, 2).padding_idx(-1));
  CHECK(neg->options.padding_idx() == 3);
  kt::expect_values(neg->weight.select(0, 3), {0, 0});
  neg(tensor({3, 3, 0})).sum().backward();
  kt::expect_values(neg->weight.grad(), {1, 1, 0, 0, 0, 0, 0, 0});
  // the functional form
  Tensor table = kt::leaf({4, 2}, 3);
  F::embedding(tensor({0, 2, 2}), table, 2).sum().backward();
  kt::expect_values(table.grad(), {1, 1, 0, 0, 0, 0, 0, 0});
  // with grad mode off nothing is recorded
  NoGradGuard ng;
  CHECK_FALSE(emb(ids).requires_grad());
}

TEST_CASE("Embedding: float64 gradcheck through the weight, and through a padded lookup's consumer") {
  nn::Embedding emb(nn::EmbeddingOptions(5, 3).padding_idx(4));
  emb->to(kFloat64);
  Tensor ids = tensor({0, 3, 3, 1});  // no padding here: finite differences see every row used
  kt::grad_ok([&](const std::vector<Tensor>&) { return emb(ids) * emb(ids); }, {emb->weight});
  Tensor with_pad = tensor({4, 3, 4});
  kt::grad_ok([&](const std::vector<Tensor>& in) { return F::embedding(with_pad, emb->weight, 4) * in[0]; },
              {kt::leaf({3, 3}, 4)});
}

TEST_CASE("Embedding: errors") {
  CHECK_KILN_ERROR(nn::Embedding(nn::EmbeddingOptions(5, 2).padding_idx(5)),
                   "[Embedding] padding_idx 5 out of range for 5 embeddings");
  CHECK_KILN_ERROR(nn::Embedding(nn::EmbeddingOptions(5, 2).padding_idx(-6)), "padding_idx -6 out of range");
  CHECK_KILN_ERROR(nn::Embedding(-1, 2), "[Embedding] num_embeddings and embedding_dim must be >= 0, got -1 and 2");
  nn::Embedding emb(5, 2);
  CHECK_KILN_ERROR(emb(tensor({5})), "[embedding]");
  CHECK_KILN_ERROR(emb(tensor({1.0f})), "[Embedding] input dtype float32 is not supported: expected int64 indices");
  CHECK_KILN_ERROR(F::embedding(tensor({1}), emb->weight, 9),
                   "[embedding] padding_idx 9 out of range for 5 embeddings");
}

// ---------- LayerNorm / RMSNorm ----------

TEST_CASE("LayerNorm: values, parameters, options") {
  nn::LayerNorm ln(4);
  kt::expect_values(ln->weight, {1, 1, 1, 1});
  kt::expect_values(ln->bias, {0, 0, 0, 0});
  set(ln->weight, {1, 2, 1, 1});
  set(ln->bias, {0, 0, 1, 0});
  Tensor x = tensor({1.0f, 2.0f, 3.0f, 4.0f});
  // mean 2.5, var 1.25
  double s = 1.0 / std::sqrt(1.25 + 1e-5);
  kt::expect_values(ln(x), {-1.5 * s, -0.5 * s * 2, 0.5 * s + 1, 1.5 * s}, 1e-5);
  nn::LayerNorm plain(nn::LayerNormOptions({2, 2}).elementwise_affine(false).eps(0.0));
  CHECK(plain->parameters().empty());
  kt::expect_values(plain(x.reshape({2, 2})),
                    {-1.5 / std::sqrt(1.25), -0.5 / std::sqrt(1.25), 0.5 / std::sqrt(1.25), 1.5 / std::sqrt(1.25)},
                    1e-5);
  nn::LayerNorm nobias(nn::LayerNormOptions({4}).bias(false));
  CHECK(nobias->named_parameters().keys() == std::vector<std::string>{"weight"});
  CHECK(ln->extra_repr() == "(4,), eps=1e-05, elementwise_affine=true, bias=true");
}

TEST_CASE("LayerNorm: float64 gradcheck through input, weight and bias") {
  nn::LayerNorm ln(nn::LayerNormOptions({3}));
  ln->to(kFloat64);
  set(ln->weight, {0.5, -1.0, 2.0});
  set(ln->bias, {0.1, 0.2, 0.3});
  Tensor x = kt::leaf({2, 2, 3}, 9);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return ln(in[0]); }, {x, ln->weight, ln->bias});
}

TEST_CASE("LayerNorm / RMSNorm: shape errors") {
  nn::LayerNorm ln(4);
  CHECK_KILN_ERROR(ln(zeros({2, 5})), "[layer_norm] input shape (2, 5) does not end with normalized_shape (4,)");
  CHECK_KILN_ERROR(nn::LayerNorm(nn::LayerNormOptions({})), "[LayerNorm] normalized_shape must be non-empty");
  CHECK_KILN_ERROR(nn::LayerNorm(nn::LayerNormOptions({4}).eps(-1)), "[LayerNorm] eps must be >= 0, got -1");
  nn::RMSNorm rms(4);
  CHECK_KILN_ERROR(rms(zeros({2, 5})), "[rms_norm] input shape (2, 5) does not end with normalized_shape (4,)");
  CHECK_KILN_ERROR(rms(zeros({4}, kInt64)), "[RMSNorm] input dtype int64 is not supported: expected a floating dtype");
  CHECK_KILN_ERROR(F::rms_norm(zeros({2, 4}), {4}, ones({3})),
                   "[rms_norm] weight shape (3,) must equal normalized_shape (4,)");
  CHECK_KILN_ERROR(nn::RMSNorm(nn::RMSNormOptions({0})),
                   "[RMSNorm] normalized_shape must be non-empty with positive sizes, got (0,)");
}

TEST_CASE("RMSNorm: x * rsqrt(mean(x^2) + eps) * weight") {
  nn::RMSNorm rms(nn::RMSNormOptions({4}).eps(0.5));
  kt::expect_values(rms->weight, {1, 1, 1, 1});
  set(rms->weight, {1, 2, 3, 4});
  Tensor x = tensor({1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.0, 1.0}, kFloat64).reshape({2, 4});
  double r0 = 1.0 / std::sqrt(7.5 + 0.5), r1 = 1.0 / std::sqrt(0.5 + 0.5);
  Tensor y = rms(x);
  CHECK(y.dtype() == kFloat64);  // a float32 weight does not narrow a float64 input
  kt::expect_values(y, {1 * r0, 4 * r0, 9 * r0, 16 * r0, -1 * r1, 0, 0, 4 * r1}, 1e-6);
  // default eps: the compute type's machine epsilon (all-zero rows stay finite)
  nn::RMSNorm dflt(nn::RMSNormOptions({2}).elementwise_affine(false));
  CHECK(dflt->parameters().empty());
  kt::expect_values(dflt(zeros({3, 2})), std::vector<double>(6, 0.0));
  kt::expect_values(dflt(tensor({3.0f, 4.0f})), {3 / std::sqrt(12.5), 4 / std::sqrt(12.5)}, 1e-6);
  // normalizing over two trailing dims
  kt::expect_values(F::rms_norm(tensor({1.0, 1.0, 1.0, 1.0}, kFloat64).reshape({1, 2, 2}), {2, 2}, Tensor(), 0.0),
                    {1, 1, 1, 1});
  CHECK(rms->extra_repr() == "(4,), eps=0.5, elementwise_affine=true");
  CHECK(dflt->extra_repr() == "(2,), eps=auto, elementwise_affine=false");
}

TEST_CASE("RMSNorm: float64 gradcheck through input and weight") {
  nn::RMSNorm rms(nn::RMSNormOptions({3}).eps(1e-3));
  rms->to(kFloat64);
  set(rms->weight, {0.5, -1.0, 2.0});
  Tensor x = kt::leaf({2, 3}, 10);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return rms(in[0]); }, {x, rms->weight});
  Tensor xn = kt::noncontig_leaf({2, 2, 3}, 11);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return F::rms_norm(in[0], {2, 3}, Tensor(), 1e-3); }, {xn});
}

// ---------- Dropout ----------

TEST_CASE("Dropout: inverted dropout in training, identity in eval, seeded generator") {
  nn::Dropout drop(0.25);
  CHECK(drop->extra_repr() == "p=0.25");
  Tensor x = ones({100000});
  auto v = drop(x).to_vector<float>();
  std::size_t zeros_n = 0, bad = 0;
  for (float f : v) {
    if (f == 0.0f) ++zeros_n;
    else if (std::abs(f - 1.0f / 0.75f) > 1e-6f) ++bad;
  }
  CHECK(bad == 0);
  CHECK(static_cast<double>(zeros_n) / 100000.0 == doctest::Approx(0.25).epsilon(0.03));
  drop->eval();
  CHECK(drop(x).is_same(x));
  Generator g1(5), g2(5);
  nn::Dropout d1(nn::DropoutOptions(0.5).generator(&g1)), d2(nn::DropoutOptions(0.5).generator(&g2));
  CHECK(equal(d1(x), d2(x)));
  CHECK_FALSE(equal(d1(x), d1(x)));  // the generator advances
  CHECK(nn::Dropout()->options.p() == 0.5);
  CHECK_KILN_ERROR(nn::Dropout(1.5), "[Dropout] probability must be in [0, 1], got 1.5");
  // gradient: the same mask scales the gradient
  Generator g3(6);
  nn::Dropout d3(nn::DropoutOptions(0.5).generator(&g3));
  Tensor xl = ones({1000}).requires_grad_();
  Tensor y = d3(xl);
  y.sum().backward();
  CHECK(equal(xl.grad(), y.detach()));
}

// ---------- activations ----------

TEST_CASE("activation modules: values at fixed points") {
  Tensor x = tensor({-2.0, -0.5, 0.0, 0.5, 2.0}, kFloat64);
  std::vector<double> xs = {-2.0, -0.5, 0.0, 0.5, 2.0};
  auto map = [&](auto f) {
    std::vector<double> r;
    for (double v : xs) r.push_back(f(v));
    return r;
  };
  kt::expect_values(nn::ReLU()(x), map([](double v) { return v > 0 ? v : 0; }));
  kt::expect_values(nn::GELU()(x), map([](double v) { return 0.5 * v * (1 + std::erf(v / std::numbers::sqrt2)); }),
                    1e-9);
  kt::expect_values(nn::GELU(nn::GELUOptions().approximate("tanh"))(x), map([](double v) {
                      return 0.5 * v * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
                    }),
                    1e-9);
  kt::expect_values(nn::SiLU()(x), map([](double v) { return v / (1 + std::exp(-v)); }), 1e-9);
  kt::expect_values(nn::Tanh()(x), map([](double v) { return std::tanh(v); }), 1e-9);
  kt::expect_values(nn::Sigmoid()(x), map([](double v) { return 1 / (1 + std::exp(-v)); }), 1e-9);
  CHECK(nn::Identity()(x).is_same(x));
  using A = nn::Activation;
  CHECK(equal(F::activation(x, A::ReLU), nn::ReLU()(x)));
  CHECK(equal(F::activation(x, A::GELU), nn::GELU()(x)));
  CHECK(equal(F::activation(x, A::GELUTanh), nn::GELU(nn::GELUOptions().approximate("tanh"))(x)));
  CHECK(equal(F::activation(x, A::SiLU), nn::SiLU()(x)));
  CHECK(equal(F::activation(x, A::Tanh), nn::Tanh()(x)));
  CHECK(equal(F::activation(x, A::Sigmoid), nn::Sigmoid()(x)));
  CHECK(F::activation(x, A::Identity).is_same(x));
  CHECK(std::string(nn::to_string(A::GELUTanh)) == "gelu_tanh");
  CHECK_KILN_ERROR(nn::GELU(nn::GELUOptions().approximate("fast")),
                   "[GELU] approximate must be 'none' or 'tanh', got 'fast'");
  CHECK(nn::GELU()->extra_repr().empty());
  CHECK(nn::SiLU()->name() == "SiLU");
  CHECK(nn::Sigmoid()->parameters().empty());
}

TEST_CASE("activation modules: float64 gradcheck") {
  Tensor x = kt::leaf({2, 3}, 12);
  nn::Sequential acts(nn::GELU(), nn::SiLU(), nn::Tanh(), nn::Sigmoid(),
                      nn::GELU(nn::GELUOptions().approximate("tanh")));
  kt::grad_ok([&](const std::vector<Tensor>& in) { return acts(in[0]); }, {x});
}
