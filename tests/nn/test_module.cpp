// nn::Module: registration and dotted names, traversal, holders, train/eval, zero_grad, to(),
// printing. Checkpoints (state_dict / load_state_dict) are in test_module_state.cpp.
#include "test_util.hpp"

#include <sstream>

using namespace kiln;

namespace {

struct AttnImpl : nn::Module {
  AttnImpl() {
    q_proj = register_module("q_proj", nn::Linear(4, 4));
    k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(4, 4).bias(false)));
  }
  nn::Linear q_proj{nullptr}, k_proj{nullptr};
};

struct BlockImpl : nn::Module {
  BlockImpl() {
    attn = register_module("attn", std::make_shared<AttnImpl>());  // the shared_ptr form
    ln = register_module("ln", nn::LayerNorm(4));
    mask = register_buffer("mask", ones({2}));
  }
  Tensor forward(const Tensor& x) { return ln(attn->q_proj(x)); }
  std::shared_ptr<AttnImpl> attn;
  nn::LayerNorm ln{nullptr};
  Tensor mask;
};
KILN_MODULE(Block);

struct NetImpl : nn::Module {
  NetImpl() {
    emb = register_module("emb", nn::Embedding(10, 4));
    blocks = register_module("blocks", nn::ModuleList(Block(), Block()));
    head = register_module("head", nn::Sequential(nn::Linear(4, 8), nn::ReLU(), nn::Dropout(0.5), nn::Linear(8, 2)));
    scale = register_parameter("scale", ones({1}));
  }
  Tensor forward(const Tensor& ids) {
    Tensor h = emb(ids);
    for (const auto& b : *blocks) h = std::dynamic_pointer_cast<BlockImpl>(b)->forward(h);
    return head(h) * scale;
  }
  nn::Embedding emb{nullptr};
  nn::ModuleList blocks{nullptr};
  nn::Sequential head{nullptr};
  Tensor scale;
};
KILN_MODULE(Net);

std::vector<std::string> keys_of(const nn::OrderedDict<Tensor>& d) { return d.keys(); }

}  // namespace

TEST_CASE("Module: named_parameters gives dotted names in registration order") {
  Net net;
  std::vector<std::string> expect = {"scale",  // own parameters come before the children's
                                     "emb.weight",
                                     "blocks.0.attn.q_proj.weight",
                                     "blocks.0.attn.q_proj.bias",
                                     "blocks.0.attn.k_proj.weight",
                                     "blocks.0.ln.weight",
                                     "blocks.0.ln.bias",
                                     "blocks.1.attn.q_proj.weight",
                                     "blocks.1.attn.q_proj.bias",
                                     "blocks.1.attn.k_proj.weight",
                                     "blocks.1.ln.weight",
                                     "blocks.1.ln.bias",
                                     "head.0.weight",
                                     "head.0.bias",
                                     "head.3.weight",
                                     "head.3.bias"};
  CHECK(keys_of(net->named_parameters()) == expect);
  CHECK(keys_of(net->named_parameters(/*recurse=*/false)) == std::vector<std::string>{"scale"});
  CHECK(net->parameters().size() == expect.size());
  CHECK(keys_of(net->named_buffers()) == std::vector<std::string>{"blocks.0.mask", "blocks.1.mask"});
  CHECK(net->buffers().size() == 2);
  CHECK(net->named_buffers(false).empty());
  // the listed tensors are the layers' own handles
  CHECK(net->named_parameters()["emb.weight"].is_same(net->emb->weight));
  auto b1 = net->blocks->ptr<BlockImpl>(1);
  CHECK(net->named_parameters()["blocks.1.attn.k_proj.weight"].is_same(b1->attn->k_proj->weight));
  CHECK(net->named_buffers()["blocks.1.mask"].is_same(b1->mask));
  for (const auto& p : net->parameters()) {
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  // 1 + 40 + 2 * (20 + 16 + 8) + (40 + 18)
  CHECK(net->num_parameters() == 1 + 40 + 2 * (20 + 16 + 8) + 40 + 18);
}

TEST_CASE("Module: children, modules and named_modules") {
  Net net;
  CHECK(net->named_children().keys() == std::vector<std::string>{"emb", "blocks", "head"});
  CHECK(net->children().size() == 3);
  CHECK(net->children()[0].get() == net->emb.get());
  std::vector<std::string> expect = {"",
                                     "emb",
                                     "blocks",
                                     "blocks.0",
                                     "blocks.0.attn",
                                     "blocks.0.attn.q_proj",
                                     "blocks.0.attn.k_proj",
                                     "blocks.0.ln",
                                     "blocks.1",
                                     "blocks.1.attn",
                                     "blocks.1.attn.q_proj",
                                     "blocks.1.attn.k_proj",
                                     "blocks.1.ln",
                                     "head",
                                     "head.0",
                                     "head.1",
                                     "head.2",
                                     "head.3"};
  auto named = net->named_modules();
  CHECK(named.keys() == expect);
  CHECK(named[""].get() == net.get());
  CHECK(named["blocks.1.ln"]->name() == "LayerNorm");
  CHECK(net->modules().size() == expect.size());
  CHECK(net->modules(/*include_self=*/false).size() == expect.size() - 1);
  CHECK(net->named_modules("model").keys()[1] == "model.emb");
  // a module on the stack is listed through a non-owning pointer
  nn::LinearImpl on_stack(2, 2);
  auto mods = on_stack.modules();
  REQUIRE(mods.size() == 1);
  CHECK(mods[0].get() == &on_stack);
}

TEST_CASE("Module: shared submodules and tied parameters are listed once") {
  struct TiedImpl : nn::Module {
    TiedImpl() {
      emb = register_module("emb", nn::Embedding(6, 3));
      head = register_module("head", nn::Linear(nn::LinearOptions(3, 6).bias(false)));
      head->weight = head->register_parameter("weight", emb->weight);  // weight tying
      again = register_module("again", emb);                           // the same module twice
    }
    nn::Embedding emb{nullptr}, again{nullptr};
    nn::Linear head{nullptr};
  };
  auto m = std::make_shared<TiedImpl>();
  CHECK(m->named_parameters().keys() == std::vector<std::string>{"emb.weight"});
  CHECK(m->num_parameters() == 18);
  CHECK(m->named_modules().keys() == std::vector<std::string>{"", "emb", "head"});
  // a checkpoint keeps every name, as PyTorch's state_dict does
  CHECK(m->state_dict().keys() == std::vector<std::string>{"emb.weight", "head.weight", "again.weight"});
}

TEST_CASE("Module: register_* return what they register / re-registering replaces") {
  nn::Module m;
  Tensor w = m.register_parameter("w", zeros({2, 3}));
  CHECK(w.requires_grad());
  CHECK(m.named_parameters()["w"].is_same(w));
  Tensor frozen = m.register_parameter("frozen", zeros({2}), /*requires_grad=*/false);
  CHECK_FALSE(frozen.requires_grad());
  CHECK(m.num_parameters() == 8);
  CHECK(m.num_parameters(/*trainable_only=*/true) == 6);
  Tensor w2 = m.register_parameter("w", ones({4}));
  CHECK(m.named_parameters().keys() == std::vector<std::string>{"w", "frozen"});  // position kept
  CHECK(m.named_parameters()["w"].is_same(w2));
  // an undefined parameter (e.g. no bias) is kept out of every listing
  m.register_parameter("bias", Tensor());
  CHECK(m.parameters().size() == 2);
  CHECK_FALSE(m.state_dict().contains("bias"));
  auto lin = m.register_module("lin", nn::Linear(2, 2));
  static_assert(std::is_same_v<decltype(lin), nn::Linear>);
  auto sp = m.register_module("sp", std::make_shared<nn::ReLUImpl>());
  static_assert(std::is_same_v<decltype(sp), std::shared_ptr<nn::ReLUImpl>>);
  CHECK(m.named_children().keys() == std::vector<std::string>{"lin", "sp"});
  auto rep = m.replace_module("lin", nn::Linear(2, 5));
  CHECK(m.named_children()["lin"].get() == rep.get());
  CHECK(m.named_parameters()["lin.weight"].shape() == Shape{5, 2});
}

TEST_CASE("Module: registration errors name the module and the offending name") {
  nn::Module m("Host");
  m.register_parameter("w", zeros({2}));
  m.register_buffer("buf", zeros({2}));
  m.register_module("sub", nn::ReLU());
  CHECK_KILN_ERROR(m.register_buffer("w", zeros({2})), "[register_buffer] 'w' is already a parameter of Host");
  CHECK_KILN_ERROR(m.register_parameter("buf", zeros({2})), "'buf' is already a buffer of Host");
  CHECK_KILN_ERROR(m.register_parameter("sub", zeros({2})), "'sub' is already a submodule of Host");
  CHECK_KILN_ERROR(m.register_module("w", nn::ReLU()), "[register_module] 'w' is already a parameter");
  CHECK_KILN_ERROR(m.register_parameter("a.b", zeros({2})),
                   "[register_parameter] parameter name 'a.b' must not contain '.'");
  CHECK_KILN_ERROR(m.register_buffer("", zeros({2})), "[register_buffer] buffer name must not be empty");
  Tensor x = ones({2}).requires_grad_();
  CHECK_KILN_ERROR(m.register_parameter("y", x * 2.0),
                   "parameter 'y' of Host must be a leaf tensor, but it was produced by 'mul'");
  CHECK_KILN_ERROR(m.register_parameter("i", zeros({2}, kInt64)), "parameter 'i' of Host must be floating point");
  CHECK_NOTHROW(m.register_parameter("i", zeros({2}, kInt64), /*requires_grad=*/false));
  CHECK_KILN_ERROR(m.register_module("empty", nn::Linear(nullptr)),
                   "[register_module] submodule 'empty' of Host is null");
  auto self = std::make_shared<nn::Module>("Self");
  CHECK_KILN_ERROR(self->register_module("me", self), "Self cannot register itself");
  CHECK_KILN_ERROR(m.replace_module("nope", nn::ReLU()), "[replace_module] Host has no submodule 'nope'");
}

TEST_CASE("ModuleHolder: shared-pointer semantics, forward, empty holders") {
  nn::Linear a(3, 2);
  nn::Linear b = a;  // copies share the module
  CHECK(b.get() == a.get());
  CHECK(b->weight.is_same(a->weight));
  Tensor x = randn({5, 3});
  CHECK(equal(a(x), a->forward(x)));
  CHECK(equal((*a).forward(x), b(x)));
  nn::Linear from_ptr(std::make_shared<nn::LinearImpl>(3, 3));
  CHECK(from_ptr->options.out_features() == 3);
  nn::Linear empty{nullptr};
  CHECK(empty.is_empty());
  CHECK_FALSE(static_cast<bool>(empty));
  CHECK_KILN_ERROR(empty->forward(x), "[ModuleHolder] accessing an empty module holder");
  empty = a;
  CHECK(empty.get() == a.get());
  nn::ReLU relu;  // default-constructible modules need no arguments
  CHECK(relu->name() == "ReLU");
  CHECK(nn::is_module_holder_v<nn::Linear>);
  CHECK_FALSE(nn::is_module_holder_v<nn::LinearImpl>);
  // Options with chained setters and getters (KILN_ARG)
  auto opts = nn::LinearOptions(3, 4).bias(false).in_features(5);
  CHECK(opts.in_features() == 5);
  CHECK(opts.out_features() == 4);
  CHECK_FALSE(opts.bias());
  nn::Linear c(opts);
  CHECK(c->weight.shape() == Shape{4, 5});
  CHECK_FALSE(c->bias.defined());
}

TEST_CASE("Module: name() is the class name without Impl, or the one given") {
  Net net;
  CHECK(net->name() == "Net");
  CHECK(Block()->name() == "Block");
  CHECK(nn::Module().name() == "Module");
  CHECK(nn::Module("Custom").name() == "Custom");
  CHECK(nn::Sequential()->name() == "Sequential");
}

TEST_CASE("Module: train / eval recurse into every descendant") {
  Net net;
  for (auto& m : net->modules()) CHECK(m->is_training());
  net->eval();
  for (auto& m : net->modules()) CHECK_FALSE(m->is_training());
  // dropout is the identity in eval mode: two forwards agree
  Tensor ids = tensor({1, 2, 3});
  CHECK(equal(net(ids), net(ids)));
  net->train();
  for (auto& m : net->modules()) CHECK(m->is_training());
  net->blocks->train(false);  // a subtree only
  CHECK(net->is_training());
  CHECK_FALSE(net->blocks->ptr<BlockImpl>(0)->attn->q_proj->is_training());
  CHECK(net->head->is_training());
}

TEST_CASE("Module: zero_grad sets .grad to none or zeroes it in place") {
  Net net;
  net->eval();
  net(tensor({1, 2, 3})).sum().backward();
  // every parameter but the unused k_proj weights got a gradient
  std::vector<Tensor> used;
  for (auto& [k, p] : net->named_parameters())
    if (k.find("k_proj") == std::string::npos) used.push_back(p);
  for (auto& p : used) REQUIRE(p.grad().defined());
  Tensor w = net->head->at<nn::LinearImpl>(0).weight;
  const void* mem = w.grad().raw_data();
  net->zero_grad(/*set_to_none=*/false);
  for (auto& p : used) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<float>() == 0.0f);
  }
  CHECK(w.grad().raw_data() == mem);  // same memory
  net->zero_grad();
  for (auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());
  net->zero_grad();  // nothing to clear: fine

  // a gradient that carries a graph (create_graph) loses it and is zeroed
  nn::Linear lin(2, 1);
  Tensor y = lin(ones({1, 2})).pow(2).sum();
  y.backward(Tensor(), false, /*create_graph=*/true);
  REQUIRE(lin->weight.grad().requires_grad());
  lin->zero_grad(false);
  CHECK_FALSE(lin->weight.grad().requires_grad());
  kt::expect_values(lin->weight.grad(), {0, 0});
}

TEST_CASE("Module: to(dtype) converts in place, parameters stay leaves requiring grad") {
  manual_seed(3);
  Net net;
  net->eval();
  Tensor w = net->head->at<nn::LinearImpl>(0).weight;  // a handle taken before the move
  auto before = w.to_vector<double>();
  net(tensor({1, 2})).sum().backward();
  Tensor ids_buf = net->register_buffer("ids", tensor({4, 5}));  // int64: not converted
  net->to(kFloat64);
  CHECK(w.dtype() == kFloat64);
  CHECK(w.is_same(net->head->at<nn::LinearImpl>(0).weight));
  CHECK(w.is_same(net->named_parameters()["head.0.weight"]));
  CHECK(w.to_vector<double>() == before);
  for (auto& [k, p] : net->named_parameters()) {
    INFO(k);
    CHECK(p.dtype() == kFloat64);
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
    CHECK(p.grad().defined() == (k.find("k_proj") == std::string::npos));  // k_proj is unused
    if (p.grad().defined()) CHECK(p.grad().dtype() == kFloat64);
  }
  CHECK(net->named_buffers()["blocks.0.mask"].dtype() == kFloat64);
  CHECK(ids_buf.dtype() == kInt64);
  // training works in the new dtype
  net->zero_grad();
  Tensor out = net(tensor({1, 2}));
  CHECK(out.dtype() == kFloat64);
  out.sum().backward();
  CHECK(w.grad().dtype() == kFloat64);
  CHECK(w.grad().abs().sum().item<double>() > 0);
  // back and forth, and device moves (cpu -> cpu is a no-op)
  net->to(Device::cpu(), kFloat32);
  CHECK(w.dtype() == kFloat32);
  CHECK(w.requires_grad());
  net->to(Device::cpu());
  CHECK(w.is_same(net->head->at<nn::LinearImpl>(0).weight));
  CHECK_KILN_ERROR(net->to(kInt64), "[Module::to] Net.to() accepts floating point dtypes only, got int64");
}

TEST_CASE("Module: apply visits every module, with or without names") {
  Net net;
  int count = 0;
  net->apply([&](nn::Module&) { ++count; });
  CHECK(count == 18);
  net->apply([](nn::Module& m) {
    if (auto* l = m.as<nn::Linear>()) nn::init::zeros_(l->weight);
  });
  CHECK(net->head->at<nn::LinearImpl>(3).weight.abs().sum().item<float>() == 0.0f);
  CHECK(net->blocks->ptr<BlockImpl>(1)->attn->k_proj->weight.abs().sum().item<float>() == 0.0f);
  std::vector<std::string> names;
  net->apply([&](const std::string& name, nn::Module& m) {
    if (m.name() == "LayerNorm") names.push_back(name);
  });
  CHECK(names == std::vector<std::string>{"blocks.0.ln", "blocks.1.ln"});
}

TEST_CASE("Module: reset_parameters re-draws every layer's parameters") {
  manual_seed(11);
  Net net;
  auto before = net->state_dict();
  std::vector<std::vector<float>> old;
  for (auto& [k, v] : before) old.push_back(v.clone().to_vector<float>());
  net->reset_parameters();
  auto after = net->state_dict();
  std::size_t i = 0;
  for (auto& [k, v] : after) {
    INFO(k);
    bool constant_init = k.ends_with("ln.weight") || k.ends_with("ln.bias") || k == "scale" || k.ends_with("mask");
    if (constant_init) CHECK(v.to_vector<float>() == old[i]);
    else CHECK(v.to_vector<float>() != old[i]);
    ++i;
  }
  // seeded construction is reproducible
  manual_seed(11);
  Net again;
  std::size_t j = 0;
  for (auto& [k, v] : again->state_dict()) CHECK(v.to_vector<float>() == old[j++]);
}

TEST_CASE("Module: fmt prints the tree with shapes and parameter counts") {
  struct TinyImpl : nn::Module {
    TinyImpl() : nn::Module("Tiny") {
      register_buffer("steps", zeros({1}, kInt64));
      fc1 = register_module("fc1", nn::Linear(3, 4));
      act = register_module("act", nn::GELU(nn::GELUOptions().approximate("tanh")));
      fc2 = register_module("fc2", nn::Linear(nn::LinearOptions(4, 2).bias(false)));
    }
    nn::Linear fc1{nullptr}, fc2{nullptr};
    nn::GELU act{nullptr};
  };
  auto tiny = std::make_shared<TinyImpl>();
  const std::string expect =
      "Tiny\n"
      "  steps (1,) int64 buffer\n"
      "  fc1: Linear(in_features=3, out_features=4, bias=true) (16 parameters)\n"
      "    weight (4, 3)\n"
      "    bias (4,)\n"
      "  act: GELU(approximate='tanh')\n"
      "  fc2: Linear(in_features=4, out_features=2, bias=false) (8 parameters)\n"
      "    weight (2, 4)\n"
      "total: 24 parameters";
  CHECK(fmt::format("{}", *tiny) == expect);
  CHECK(tiny->str() == expect);
  std::ostringstream os;
  os << *tiny;
  CHECK(os.str() == expect);

  tiny->fc2->weight.requires_grad_(false);
  tiny->to(kFloat64);
  const std::string frozen =
      "Tiny\n"
      "  steps (1,) int64 buffer\n"
      "  fc1: Linear(in_features=3, out_features=4, bias=true) (16 parameters)\n"
      "    weight (4, 3) float64\n"
      "    bias (4,) float64\n"
      "  act: GELU(approximate='tanh')\n"
      "  fc2: Linear(in_features=4, out_features=2, bias=false) (8 parameters)\n"
      "    weight (2, 4) float64 frozen\n"
      "total: 24 parameters (16 trainable)";
  CHECK(fmt::format("{}", *tiny) == frozen);

  // holders print the same way; Sequential children are named by index; big counts are grouped
  nn::Sequential seq(nn::Linear(1000, 1000), nn::ReLU(), nn::Linear(nn::LinearOptions(1000, 1).bias(false)));
  const std::string seq_expect =
      "Sequential\n"
      "  0: Linear(in_features=1000, out_features=1000, bias=true) (1,001,000 parameters)\n"
      "    weight (1000, 1000)\n"
      "    bias (1000,)\n"
      "  1: ReLU\n"
      "  2: Linear(in_features=1000, out_features=1, bias=false) (1,000 parameters)\n"
      "    weight (1, 1000)\n"
      "total: 1,002,000 parameters";
  CHECK(fmt::format("{}", seq) == seq_expect);
  nn::Linear one(nn::LinearOptions(1, 1).bias(false));
  CHECK(fmt::format("{}", one) ==
        "Linear(in_features=1, out_features=1, bias=false)\n  weight (1, 1)\ntotal: 1 parameter");
}

TEST_CASE("OrderedDict: insertion order, replace in place, lookups") {
  nn::OrderedDict<int> d;
  d.insert("b", 1);
  d.insert("a", 2);
  d.insert("b", 3);
  CHECK(d.keys() == std::vector<std::string>{"b", "a"});
  CHECK(d.values() == std::vector<int>{3, 2});
  CHECK(d["a"] == 2);
  CHECK(d.contains("b"));
  CHECK(d.find("z") == nullptr);
  CHECK_KILN_ERROR(d.at("z"), "[OrderedDict] key 'z' not found");
  CHECK(d.erase("b"));
  CHECK_FALSE(d.erase("b"));
  CHECK(d.keys() == std::vector<std::string>{"a"});
  CHECK(d["a"] == 2);
  int sum = 0;
  for (const auto& [k, v] : d) sum += v;
  CHECK(sum == 2);
}

namespace {
// The usage example of nn/module.hpp, as written there.
struct MLPImpl : kiln::nn::Module {
  MLPImpl(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", nn::Linear(in, hidden))), fc2(register_module("fc2", nn::Linear(hidden, out))) {}
  Tensor forward(const Tensor& x) { return fc2(kiln::relu(fc1(x))); }
  nn::Linear fc1, fc2;
};
KILN_MODULE(MLP);
}  // namespace

TEST_CASE("Module: the header's usage example works as written") {
  MLP net(3, 16, 1);
  CHECK(net->named_parameters().keys() == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  net->eval();
  net->to(kiln::kFloat64);
  auto sd = net->state_dict();
  CHECK(sd.size() == 4);
  CHECK(fmt::format("{}", net).starts_with(
      "MLP\n  fc1: Linear(in_features=3, out_features=16, bias=true) (64 parameters)"));
  CHECK(net(zeros({2, 3}, kFloat64)).shape() == Shape{2, 1});
}
