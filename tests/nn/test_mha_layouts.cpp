// nn::MultiHeadAttention with other frameworks' weights: torch.nn.MultiheadAttention's own
// state_dict (packed in_proj_weight or separate q/k/v_proj_weight, in_proj_bias, bias_k/bias_v,
// out_proj.*), including add_bias_kv / add_zero_attn, against torch 1.13 goldens written by
// tools/mha_goldens.py; and MegEngine's packed io_weight_bias.
//
// MegEngine is not installable here: its layout (W_q, W_k, W_v, W_o as (in, out) row-major since
// MegEngine computes Y = X W, then b_q, b_k, b_v, b_o) is taken from its documentation and its
// test_multiheadattention_with_param, which packs torch weights exactly so. The goldens hold that
// packing of torch's weights and gradients, so loading it must reproduce torch's outputs.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

void check_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  INFO(what << ": shapes " << shape_str(got.shape()) << " vs " << shape_str(want.shape()));
  REQUIRE(got.defined());
  REQUIRE(got.shape() == want.shape());
  const double d = max_scaled_diff(got, want);
  INFO(what << ": max |got - want| / (1 + |want|) = " << d);
  CHECK(d <= tol);
}

O options_of(const Golden& g) {
  return O(g.inum("embed_dim"), g.inum("num_heads"))
      .kdim(g.inum("kdim"))
      .vdim(g.inum("vdim"))
      .bias(g.inum("bias") != 0)
      .add_bias_kv(g.inum("add_bias_kv") != 0)
      .add_zero_attn(g.inum("add_zero_attn") != 0);
}

// The golden's tensors under `prefix` ("torch." -> state keys), in the golden's (sorted) order.
nn::OrderedDict<Tensor> with_prefix(const Golden& g, const std::string& prefix) {
  nn::OrderedDict<Tensor> sd;
  for (const auto& [name, t] : g.tensors)
    if (name.rfind(prefix, 0) == 0) sd.insert(name.substr(prefix.size()), t);
  return sd;
}

// Runs the golden's inputs through m; compares output, weights and every gradient (parameters
// through to_torch_state of a module holding the gradients).
void check_against(nn::MultiHeadAttention m, const Golden& g, DType dt, double tol) {
  auto input = [&](const char* n) { return g.at(n).to(dt).detach().requires_grad_(); };
  Tensor q = input("query"), k = input("key"), v = input("value");
  nn::MhaForward f;
  f.is_causal(g.inum("causal") != 0).need_weights(true);
  if (g.has("lengths")) f.key_padding(g.at("lengths").to(kInt64));
  if (g.has("keep_mask")) f.attn_mask(g.at("keep_mask") != 0.0);
  nn::MhaResult r = m->forward_with_weights(q, k, v, f);
  check_close(r.output, g.at("output"), tol, "output");
  check_close(r.weights, g.at("weights"), tol, "weights");
  (sum(r.output * g.at("gout").to(dt)) + sum(r.weights * g.at("gw").to(dt))).backward();
  check_close(q.grad(), g.at("grad.query"), tol, "grad.query");
  check_close(k.grad(), g.at("grad.key"), tol, "grad.key");
  check_close(v.grad(), g.at("grad.value"), tol, "grad.value");
  // the gradients in torch's layout: a module whose parameters are m's gradients
  nn::MultiHeadAttention gm(m->options);
  gm->to(kFloat64);
  nn::OrderedDict<Tensor> grads;
  for (const auto& [n, p] : m->named_parameters()) grads.insert(n, p.grad());
  gm->load_state_dict(grads);
  nn::OrderedDict<Tensor> tg = gm->to_torch_state();
  for (const auto& [key, t] : tg) check_close(t, g.at("torch_grad." + key), tol, "torch_grad." + key);
  check_close(gm->to_megengine_io_weight_bias(), g.at("megengine_grad.io_weight_bias"), tol,
              "megengine_grad.io_weight_bias");
}

const char* const kCases[] = {"torch_packed",  "torch_separate",  "torch_nobias",
                              "torch_bias_kv", "torch_zero_attn", "torch_bias_kv_zero_attn_causal"};

}  // namespace

TEST_CASE("mha layouts: load_torch_state reproduces torch.nn.MultiheadAttention (float64 1e-10, float32 1e-5)") {
  for (const char* c : kCases) {
    CAPTURE(c);
    Golden g = load_golden(std::string("mha_") + c + ".txt");
    for (auto [dt, tol] : {std::pair{kFloat64, 1e-10}, std::pair{kFloat32, 1e-5}}) {
      CAPTURE(dtype_name(dt));
      nn::MultiHeadAttention m(options_of(g));
      m->to(dt);
      m->load_torch_state(with_prefix(g, "torch."));
      check_against(m, g, dt, tol);
    }
  }
}

TEST_CASE("mha layouts: load_megengine_io_weight_bias of torch's weights reproduces torch's outputs") {
  for (const char* c : kCases) {
    CAPTURE(c);
    Golden g = load_golden(std::string("mha_") + c + ".txt");
    nn::MultiHeadAttention m(options_of(g));
    m->to(kFloat64);
    m->load_megengine_io_weight_bias(g.at("megengine.io_weight_bias"));
    if (m->options.add_bias_kv()) {  // separate parameters in MegEngine as in kiln
      NoGradGuard ng;
      m->bias_k.copy_(g.at("torch.bias_k"));
      m->bias_v.copy_(g.at("torch.bias_v"));
    }
    check_against(m, g, kFloat64, 1e-10);
  }
}

TEST_CASE("mha layouts: torch state keys, shapes and order are PyTorch's / round trips are exact") {
  for (const char* c : kCases) {
    CAPTURE(c);
    Golden g = load_golden(std::string("mha_") + c + ".txt");
    nn::MultiHeadAttention m(options_of(g));
    m->to(kFloat64);
    nn::OrderedDict<Tensor> in = with_prefix(g, "torch.");
    m->load_torch_state(in);
    nn::OrderedDict<Tensor> out = m->to_torch_state();
    CHECK(out.size() == in.size());
    for (const auto& [key, t] : out) {
      CAPTURE(key);
      CHECK(equal(t, in[key]));
    }
    // MegEngine round trip: export, load into a fresh module, export again
    Tensor io = m->to_megengine_io_weight_bias();
    CHECK(equal(io, g.at("megengine.io_weight_bias")));
    nn::MultiHeadAttention m2(options_of(g));
    m2->to(kFloat64);
    m2->load_megengine_io_weight_bias(io);
    for (const auto& [n, p] : m2->named_parameters())
      if (n != "bias_k" && n != "bias_v") CHECK(equal(p, m->named_parameters()[n]));
  }
  // torch's state_dict order (torch 1.13: MultiheadAttention(8, 2, add_bias_kv=True, kdim=6, vdim=5))
  nn::MultiHeadAttention sep(O(8, 2).kdim(6).vdim(5).add_bias_kv(true));
  CHECK(sep->to_torch_state().keys() == std::vector<std::string>{"q_proj_weight", "k_proj_weight", "v_proj_weight",
                                                                 "in_proj_bias", "bias_k", "bias_v", "out_proj.weight",
                                                                 "out_proj.bias"});
  nn::MultiHeadAttention packed(O(8, 2).bias(false));
  CHECK(packed->to_torch_state().keys() == std::vector<std::string>{"in_proj_weight", "out_proj.weight"});
  // round trip from kiln's side: random module -> torch state -> fresh module: identical parameters
  nn::MultiHeadAttention a(O(8, 2).add_bias_kv(true)), b(O(8, 2).add_bias_kv(true));
  randomize(*a, 5);
  b->load_torch_state(a->to_torch_state());
  for (const auto& [n, p] : a->named_parameters()) CHECK(equal(p, b->named_parameters()[n]));
  // MegEngine sizes with per-projection bias flags and head dims other than embed_dim / H
  nn::MultiHeadAttention c(O(6, 2).head_dim(4).v_head_dim(5).kdim(3).vdim(7).out_dim(9).q_bias(false).v_bias(false));
  randomize(*c, 6);
  Tensor io = c->to_megengine_io_weight_bias();
  // W_q (6, 8), W_k (3, 8), W_v (7, 10), W_o (10, 9), b_k (8), b_o (9)
  kt::expect_shape(io, {1, 48 + 24 + 70 + 90 + 8 + 9});
  CHECK(equal(io.narrow(1, 0, 48).reshape({6, 8}), c->q_proj->weight.t()));
  CHECK(equal(io.narrow(1, 48 + 24 + 70, 90).reshape({10, 9}), c->out_proj->weight.t()));
  CHECK(equal(io.narrow(1, 232, 8).reshape({8}), c->k_proj->bias));
  nn::MultiHeadAttention d(c->options);
  d->load_megengine_io_weight_bias(io.reshape({-1}));  // (N,) accepted too
  for (const auto& [n, p] : c->named_parameters()) CHECK(equal(p, d->named_parameters()[n]));
}

TEST_CASE("mha layouts: modules the other layouts cannot express, and malformed states, are errors") {
  nn::MultiHeadAttention gqa(O(8, 4).num_kv_heads(2));
  CHECK_KILN_ERROR(gqa->to_torch_state(),
                   "[MultiHeadAttention.torch_state] torch.nn.MultiheadAttention has no grouped kv heads, got "
                   "num_kv_heads=2 and num_heads=4");
  CHECK_KILN_ERROR(gqa->to_megengine_io_weight_bias(),
                   "[MultiHeadAttention.megengine_io_weight_bias] MegEngine's "
                   "packed layout has no grouped kv heads");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).out_dim(4))->to_torch_state(),
                   "needs out_dim == embed_dim, got 4 and 8");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).head_dim(3))->to_torch_state(),
                   "needs head_dim * num_heads == embed_dim and v_head_dim == head_dim, got head_dim=3");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).out_bias(false))->to_torch_state(),
                   "has all four projection biases or none, got q=true k=true v=true out=false");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).qk_norm(nn::Norm::RMSNorm))->to_torch_state(), "has no qk_norm");

  nn::MultiHeadAttention m(O(8, 2));
  randomize(*m, 2);
  nn::OrderedDict<Tensor> sd = m->to_torch_state();
  const Tensor before = m->q_proj->weight.clone();
  nn::OrderedDict<Tensor> extra = sd;
  extra.insert("bias_k", zeros({1, 1, 8}));
  extra.erase("in_proj_bias");
  CHECK_KILN_ERROR(m->load_torch_state(extra), "missing [in_proj_bias], unexpected [bias_k]");
  nn::OrderedDict<Tensor> bad = sd;
  bad.insert("in_proj_weight", zeros({8, 8}));
  CHECK_KILN_ERROR(m->load_torch_state(bad), "shape mismatch: [in_proj_weight: expected (24, 8), got (8, 8)]");
  CHECK(equal(m->q_proj->weight, before));  // nothing copied on error
  CHECK_KILN_ERROR(m->load_megengine_io_weight_bias(zeros({1, 10})),
                   "expected shape (1, 288) = W_q, W_k, W_v, W_o, then the biases: (8, 8) + (8, 8) + (8, 8) + (8, 8) + "
                   "(8,) + (8,) + (8,) + (8,); got (1, 10)");
}
