// Composite layers: Sequential, ModuleList, Functional, FeedForward (plain and gated), and the
// sinusoidal / learned positional embeddings.
#include "test_util.hpp"

#include <numbers>

using namespace kiln;
namespace F = kiln::nn::functional;

namespace {

void set(Tensor p, const std::vector<double>& v) {
  NoGradGuard ng;
  p.copy_(tensor(v, p.shape(), kFloat64));
}

}  // namespace

// ---------- Sequential / ModuleList / Functional ----------

TEST_CASE("Sequential: forward chains, push_back of modules and functions, indexing") {
  manual_seed(4);
  nn::Sequential seq(nn::Linear(3, 5), nn::ReLU(), nn::Linear(5, 2));
  CHECK(seq->size() == 3);
  Tensor x = randn({4, 3});
  auto& l0 = seq->at<nn::LinearImpl>(0);
  auto l2 = seq->ptr<nn::LinearImpl>(2);
  Tensor expect = linear(relu(linear(x, l0.weight, l0.bias)), l2->weight, l2->bias);
  CHECK(allclose(seq(x), expect));
  CHECK(seq[1]->name() == "ReLU");
  seq->push_back([](const Tensor& t) { return t * 2.0; });  // a function becomes a Functional
  seq->push_back("out", nn::Tanh());
  CHECK(seq->named_children().keys() == std::vector<std::string>{"0", "1", "2", "3", "out"});
  CHECK(seq[3]->name() == "Functional");
  CHECK(allclose(seq(x), tanh(expect * 2.0)));
  seq->push_back(std::make_shared<nn::SigmoidImpl>());
  CHECK(seq->size() == 6);
  CHECK(seq->named_parameters().keys() == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  int n = 0;
  for (const auto& m : *seq) n += m->parameters(false).size() > 0;
  CHECK(n == 2);
  CHECK(nn::Sequential()(x).is_same(x));  // empty: identity
  CHECK_KILN_ERROR(seq[9], "[Sequential] index 9 out of range for 6 modules");
  CHECK_KILN_ERROR(seq->at<nn::LinearImpl>(1), "[Sequential] module 1 is a ReLU, not the requested type");
  nn::Functional named([](const Tensor& t) { return t + 1.0; }, "AddOne");
  CHECK(named->name() == "AddOne");
  kt::expect_values(named(tensor({1.0f})), {2});
}

TEST_CASE("Sequential: float64 gradcheck through every parameter and the input") {
  nn::Sequential seq(nn::Linear(3, 4), nn::GELU(), nn::LayerNorm(4), nn::Linear(4, 2));
  seq->to(kFloat64);
  std::vector<Tensor> inputs = {kt::leaf({2, 3}, 21)};
  for (auto& p : seq->parameters()) inputs.push_back(p);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return seq(in[0]); }, inputs);
}

TEST_CASE("ModuleList: push_back, extend, iteration, dotted names") {
  nn::ModuleList list(nn::Linear(2, 2), nn::ReLU());
  list->push_back(std::make_shared<nn::LinearImpl>(2, 3));
  CHECK(list->size() == 3);
  CHECK(list->named_parameters().keys() == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  nn::ModuleList more;
  CHECK(more->is_empty());
  more->push_back(nn::Linear(3, 1));
  list->extend(*more);
  CHECK(list->size() == 4);
  CHECK(list[3].get() == more[0].get());  // shared, not copied
  CHECK(list->ptr<nn::LinearImpl>(3)->options.in_features() == 3);
  std::vector<std::string> names;
  for (const auto& m : *list) names.push_back(m->name());
  CHECK(names == std::vector<std::string>{"Linear", "ReLU", "Linear", "Linear"});
  CHECK_KILN_ERROR(list[4], "[ModuleList] index 4 out of range for 4 modules");
  CHECK_KILN_ERROR(list->at<nn::ReLUImpl>(0), "[ModuleList] module 0 is a Linear, not the requested type");
}

// ---------- FeedForward ----------

TEST_CASE("FeedForward: fc1 -> activation -> dropout -> fc2, hidden 4*dim by default") {
  manual_seed(5);
  nn::FeedForward ff(nn::FeedForwardOptions(4));
  CHECK(ff->hidden_dim() == 16);
  CHECK(ff->named_parameters().keys() == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  kt::expect_shape(ff->fc1->weight, {16, 4});
  kt::expect_shape(ff->fc2->weight, {4, 16});
  Tensor x = randn({2, 3, 4});
  CHECK(allclose(ff(x), ff->fc2(gelu(ff->fc1(x)))));
  using A = nn::Activation;
  for (A act : {A::ReLU, A::SiLU, A::GELUTanh, A::Tanh}) {
    INFO(nn::to_string(act));
    nn::FeedForward f(nn::FeedForwardOptions(4, 6).activation(act).out_dim(3));
    Tensor y = f(x);
    kt::expect_shape(y, {2, 3, 3});
    CHECK(allclose(y, f->fc2(F::activation(f->fc1(x), act))));
  }
  CHECK(ff->extra_repr() == "dim=4, hidden_dim=16, out_dim=4, activation=gelu, gated=false");
  nn::FeedForward nb(nn::FeedForwardOptions(4, 8).bias(false));
  CHECK(nb->num_parameters() == 64);
}

TEST_CASE("FeedForward: gated (SwiGLU) is fc2(act(gate(x)) * fc1(x))") {
  manual_seed(6);
  nn::FeedForward ff(nn::FeedForwardOptions(4, 6).activation(nn::Activation::SiLU).gated(true).bias(false));
  CHECK(ff->named_parameters().keys() == std::vector<std::string>{"fc1.weight", "gate.weight", "fc2.weight"});
  Tensor x = randn({5, 4});
  CHECK(allclose(ff(x), ff->fc2(silu(ff->gate(x)) * ff->fc1(x))));
  // by hand on one element: 1 -> 1 -> 1
  nn::FeedForward tiny(nn::FeedForwardOptions(1, 1).activation(nn::Activation::SiLU).gated(true).bias(false));
  set(tiny->fc1->weight, {2.0});
  set(tiny->gate->weight, {3.0});
  set(tiny->fc2->weight, {0.5});
  double g = 3.0 / (1 + std::exp(-3.0));
  kt::expect_values(tiny(tensor({1.0f}).reshape({1, 1})), {0.5 * g * 2.0}, 1e-6);
}

TEST_CASE("FeedForward: dropout acts in training only / float64 gradcheck plain and gated") {
  nn::FeedForward ff(nn::FeedForwardOptions(3, 5).dropout(0.5));
  Tensor x = randn({4, 3});
  ff->eval();
  CHECK(allclose(ff(x), ff->fc2(gelu(ff->fc1(x)))));
  ff->train();
  CHECK_FALSE(allclose(ff(x), ff->fc2(gelu(ff->fc1(x)))));
  for (bool gated : {false, true}) {
    INFO("gated " << gated);
    nn::FeedForward f(
        nn::FeedForwardOptions(3, 4).gated(gated).activation(gated ? nn::Activation::GELU : nn::Activation::SiLU));
    f->to(kFloat64);
    std::vector<Tensor> inputs = {kt::leaf({2, 3}, 31)};
    for (auto& p : f->parameters()) inputs.push_back(p);
    kt::grad_ok([&](const std::vector<Tensor>& in) { return f(in[0]); }, inputs);
  }
}

TEST_CASE("FeedForward: errors") {
  CHECK_KILN_ERROR(nn::FeedForward(nn::FeedForwardOptions(0)), "[FeedForward] need dim > 0");
  nn::FeedForward ff(nn::FeedForwardOptions(4));
  CHECK_KILN_ERROR(ff(zeros({2, 5})), "[FeedForward] expected input (..., 4), got shape (2, 5)");
}

// ---------- positional embeddings ----------

TEST_CASE("SinusoidalPositionalEmbedding: Vaswani formula, offsets, a non-persistent buffer") {
  nn::SinusoidalPositionalEmbedding pos(16, 8);
  kt::expect_shape(pos->pe, {16, 8});
  auto at = [&](std::int64_t p, std::int64_t j) { return pos->pe.select(0, p).select(0, j).item<float>(); };
  CHECK(at(0, 0) == 0.0f);
  CHECK(at(0, 1) == 1.0f);
  CHECK(at(3, 0) == doctest::Approx(std::sin(3.0)));
  CHECK(at(3, 1) == doctest::Approx(std::cos(3.0)));
  CHECK(at(3, 2) == doctest::Approx(std::sin(3.0 / std::pow(10000.0, 2.0 / 8.0))));
  CHECK(at(3, 5) == doctest::Approx(std::cos(3.0 / std::pow(10000.0, 4.0 / 8.0))));
  CHECK(at(15, 7) == doctest::Approx(std::cos(15.0 / std::pow(10000.0, 6.0 / 8.0))));
  // forward adds pe[offset : offset + T] over any leading dims
  Tensor x = zeros({2, 3, 5, 8});
  Tensor y = pos(x);
  kt::expect_shape(y, {2, 3, 5, 8});
  CHECK(equal(y.select(0, 1).select(0, 2), pos->pe.narrow(0, 0, 5)));
  CHECK(equal(pos(x, 4).select(0, 0).select(0, 0), pos->pe.narrow(0, 4, 5)));
  CHECK(equal(pos->positions(3, 13), pos->pe.narrow(0, 13, 3)));
  CHECK(allclose(pos->positions(4, 2), F::sinusoidal_positions(4, 8, 2)));
  // no parameters; the table moves with to() but is not saved
  CHECK(pos->parameters().empty());
  CHECK(pos->named_buffers().keys() == std::vector<std::string>{"pe"});
  CHECK(pos->state_dict().empty());
  pos->to(kFloat64);
  CHECK(pos->pe.dtype() == kFloat64);
  CHECK(pos->pe.select(0, 3).select(0, 0).item<double>() == doctest::Approx(std::sin(3.0)).epsilon(1e-6));
  // an odd dim ends with a sine column; another base
  Tensor odd = F::sinusoidal_positions(2, 5, 0, 100.0, kFloat64);
  CHECK(odd.select(0, 1).select(0, 4).item<double>() == doctest::Approx(std::sin(1.0 / std::pow(100.0, 4.0 / 5.0))));
  // gradient flows to the input
  Tensor xl = kt::leaf({2, 4, 8}, 41);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return pos(in[0], 1) * in[0]; }, {xl});
}

TEST_CASE("LearnedPositionalEmbedding: adds trained rows / gradient reaches only the rows used") {
  manual_seed(7);
  nn::LearnedPositionalEmbedding pos(6, 3);
  kt::expect_shape(pos->weight, {6, 3});
  CHECK(pos->named_parameters().keys() == std::vector<std::string>{"weight"});
  auto w = pos->weight.to_vector<double>();
  CHECK(*std::max_element(w.begin(), w.end()) < 0.2);  // N(0, 0.02^2)
  Tensor x = ones({2, 4, 3});
  CHECK(allclose(pos(x).select(0, 1), pos->weight.narrow(0, 0, 4) + 1.0));
  CHECK(allclose(pos(x, 2).select(0, 0), pos->weight.narrow(0, 2, 4) + 1.0));
  pos(x, 1).sum().backward();
  kt::expect_values(pos->weight.grad(), {0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0});
  nn::LearnedPositionalEmbedding custom(
      nn::LearnedPositionalEmbeddingOptions(2, 2).weight_init([](Tensor t, Generator*) { nn::init::ones_(t); }));
  kt::expect_values(custom->positions(2), {1, 1, 1, 1});
  pos->to(kFloat64);
  Tensor xl = kt::leaf({2, 3, 3}, 42);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return pos(in[0], 3) * in[0]; }, {xl, pos->weight});
}

TEST_CASE("positional embeddings: sequences past max_len and wrong shapes are errors") {
  nn::SinusoidalPositionalEmbedding sin_pos(8, 4);
  nn::LearnedPositionalEmbedding learned(8, 4);
  CHECK_KILN_ERROR(sin_pos(zeros({1, 10, 4})),
                   "[SinusoidalPositionalEmbedding] sequence of length 10 at offset 0 needs positions up to 10, but "
                   "max_len is 8");
  CHECK_KILN_ERROR(learned(zeros({1, 6, 4}), 3),
                   "[LearnedPositionalEmbedding] sequence of length 6 at offset 3 needs positions up to 9, but max_len "
                   "is 8");
  CHECK_NOTHROW(learned(zeros({1, 6, 4}), 2));
  CHECK_KILN_ERROR(learned->positions(2, -1), "[LearnedPositionalEmbedding] length and offset must be >= 0");
  CHECK_KILN_ERROR(sin_pos(zeros({3, 5})),
                   "[SinusoidalPositionalEmbedding] expected input (..., T, 4), got shape (3, 5)");
  CHECK_KILN_ERROR(learned(zeros({4})), "[LearnedPositionalEmbedding] expected input (..., T, 4), got shape (4,)");
  CHECK_KILN_ERROR(nn::LearnedPositionalEmbedding(0, 4),
                   "[LearnedPositionalEmbedding] max_len and dim must be positive");
  CHECK_KILN_ERROR(F::sinusoidal_positions(4, 0), "[sinusoidal_positions] need length >= 0, dim > 0 and offset >= 0");
}
