// nn::Module checkpoints: state_dict() and load_state_dict() (strict and not), with their errors.
#include "test_util.hpp"

using namespace kiln;

namespace {

struct ModelImpl : nn::Module {
  ModelImpl() {
    fc = register_module("fc", nn::Linear(3, 4));
    norm = register_module("norm", nn::LayerNorm(4));
    pos = register_module("pos", nn::SinusoidalPositionalEmbedding(8, 4));  // non-persistent buffer
    step = register_buffer("step", zeros({}, kInt64));
  }
  Tensor forward(const Tensor& x) { return norm(fc(x)); }
  nn::Linear fc{nullptr};
  nn::LayerNorm norm{nullptr};
  nn::SinusoidalPositionalEmbedding pos{nullptr};
  Tensor step;
};
KILN_MODULE(Model);

// Every value of a state dict, copied out.
std::vector<std::vector<double>> values_of(const nn::OrderedDict<Tensor>& sd) {
  std::vector<std::vector<double>> v;
  for (const auto& [k, t] : sd) v.push_back(t.to_vector<double>());
  return v;
}

}  // namespace

TEST_CASE("state_dict: parameters then persistent buffers, dotted names, detached views") {
  Model m;
  auto sd = m->state_dict();
  CHECK(sd.keys() == std::vector<std::string>{"step", "fc.weight", "fc.bias", "norm.weight", "norm.bias"});
  for (const auto& [k, t] : sd) CHECK_FALSE(t.requires_grad());
  // values share memory with the module: a later update shows through
  Tensor w = sd["fc.weight"];
  CHECK(w.storage() == m->fc->weight.storage());
  {
    NoGradGuard ng;
    m->fc->weight.fill_(2.0);
  }
  CHECK(w.to_vector<float>() == std::vector<float>(12, 2.0f));
  CHECK(m->named_buffers().contains("pos.pe"));  // listed as a buffer, not saved
  CHECK_FALSE(sd.contains("pos.pe"));
}

TEST_CASE("load_state_dict: round trip into a fresh model copies values in place") {
  manual_seed(1);
  Model a;
  manual_seed(2);
  Model b;
  {
    NoGradGuard ng;
    a->step.fill_(7);
  }
  Tensor bw = b->fc->weight;
  REQUIRE_FALSE(equal(a->fc->weight, bw));
  auto res = b->load_state_dict(a->state_dict());
  CHECK(res.missing_keys.empty());
  CHECK(res.unexpected_keys.empty());
  CHECK(values_of(b->state_dict()) == values_of(a->state_dict()));
  CHECK(b->step.item<std::int64_t>() == 7);
  // in place: same tensors, still leaves requiring grad, not sharing memory with the source
  CHECK(bw.is_same(b->fc->weight));
  CHECK(bw.requires_grad());
  CHECK(bw.is_leaf());
  CHECK(bw.storage() != a->fc->weight.storage());
  Tensor x = randn({2, 3});
  CHECK(allclose(a(x), b(x)));
  // dtype is converted on load
  b->to(kFloat64);
  b->load_state_dict(a->state_dict());
  CHECK(b->fc->weight.dtype() == kFloat64);
  CHECK(allclose(b->fc->weight.to(kFloat32), a->fc->weight));
  // works with grad mode on and on parameters that have gradients
  b(x.to(kFloat64)).sum().backward();
  CHECK_NOTHROW(b->load_state_dict(a->state_dict()));
}

TEST_CASE("load_state_dict: strict mode lists missing and unexpected keys") {
  Model m;
  auto sd = m->state_dict();
  auto missing = sd;
  missing.erase("fc.bias");
  missing.erase("step");
  CHECK_KILN_ERROR(m->load_state_dict(missing), "[load_state_dict] missing keys: 'step', 'fc.bias'");
  auto extra = sd;
  extra.insert("head.weight", zeros({2}));
  CHECK_KILN_ERROR(m->load_state_dict(extra), "[load_state_dict] unexpected keys: 'head.weight'");
  auto both = missing;
  both.insert("pos.pe", zeros({8, 4}));  // a non-persistent buffer is not expected
  CHECK_KILN_ERROR(m->load_state_dict(both),
                   "[load_state_dict] missing keys: 'step', 'fc.bias'; unexpected keys: 'pos.pe'");
}

TEST_CASE("load_state_dict: shape mismatches are errors in both modes, and nothing is copied") {
  Model m;
  auto before = values_of(m->state_dict());
  auto sd = m->state_dict();
  nn::OrderedDict<Tensor> bad;
  for (const auto& [k, t] : sd) bad.insert(k, k == "fc.weight" ? zeros({3, 4}) : zeros_like(t));
  CHECK_KILN_ERROR(m->load_state_dict(bad),
                   "[load_state_dict] shape mismatch for 'fc.weight': expected (4, 3), got (3, 4)");
  CHECK_KILN_ERROR(m->load_state_dict(bad, /*strict=*/false), "shape mismatch for 'fc.weight'");
  CHECK(values_of(m->state_dict()) == before);  // the good entries were not loaded either
  bad.erase("norm.bias");
  bad.insert("norm.weight", zeros({5}));
  CHECK_KILN_ERROR(m->load_state_dict(bad),
                   "[load_state_dict] missing keys: 'norm.bias'; shape mismatch for "
                   "'fc.weight': expected (4, 3), got (3, 4); shape mismatch for "
                   "'norm.weight': expected (4,), got (5,)");
  nn::OrderedDict<Tensor> undefined_value;
  for (const auto& [k, t] : sd) undefined_value.insert(k, k == "fc.bias" ? Tensor() : t);
  CHECK_KILN_ERROR(m->load_state_dict(undefined_value), "value for 'fc.bias' is an undefined tensor");
}

TEST_CASE("load_state_dict: non-strict loads what matches and reports the rest") {
  Model m;
  nn::OrderedDict<Tensor> partial;
  partial.insert("fc.weight", ones({4, 3}));
  partial.insert("other.thing", ones({1}));
  auto res = m->load_state_dict(partial, /*strict=*/false);
  CHECK(res.missing_keys == std::vector<std::string>{"step", "fc.bias", "norm.weight", "norm.bias"});
  CHECK(res.unexpected_keys == std::vector<std::string>{"other.thing"});
  CHECK(m->fc->weight.to_vector<float>() == std::vector<float>(12, 1.0f));
}

TEST_CASE("load_state_dict: a submodule loads the sub-dictionary of its parent") {
  Model m;
  nn::Linear fc(3, 4);
  nn::OrderedDict<Tensor> sub;
  for (const auto& [k, t] : m->state_dict())
    if (k.starts_with("fc.")) sub.insert(k.substr(3), t);
  fc->load_state_dict(sub);
  CHECK(equal(fc->weight, m->fc->weight));
  CHECK(equal(fc->bias, m->fc->bias));
}
