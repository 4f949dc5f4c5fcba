// The fused flash-attention kernels on the GPU against the CPU backend's (values, weights and
// gradients, with masks, causal, dropout, GQA and fully masked rows), and the
// nn::MultiHeadAttention goldens from PyTorch run on the GPU.
#include "cuda/cuda_attention_util.hpp"

using namespace kiln;
using kc::kGpu;
using namespace kca;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

TEST_CASE("cuda attention: fused forward and backward match the CPU kernels on the case table") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kFloat32, kFloat64})
    for (const AttnCase& c : kCases) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.name);
      Run a = run_case(c, dt, kGpu), b = run_case(c, dt, Device::cpu());
      const double rt = dt == kFloat32 ? 2e-4 : 1e-10, at = dt == kFloat32 ? 2e-5 : 1e-11;
      kc::expect_match(a.out, b.out, rt, at, "output");
      if (c.weights) kc::expect_match(a.weights, b.weights, rt, at, "weights");
      kc::expect_match(a.gq, b.gq, rt * 10, at * 10, "grad q");
      kc::expect_match(a.gk, b.gk, rt * 10, at * 10, "grad k");
      kc::expect_match(a.gv, b.gv, rt * 10, at * 10, "grad v");
      if (b.gmask.defined()) kc::expect_match(a.gmask, b.gmask, rt * 10, at * 10, "grad mask");
    }
}

TEST_CASE("cuda attention: a row with nothing to attend to outputs 0 and gets 0 gradient") {
  KILN_CUDA_OR_SKIP();
  AttnCase c{"empty rows", 1, 2, 2, 8, 5, 4, 4};
  Inputs in = make_inputs(c, kFloat32, 3, kGpu);
  Tensor m = ones({8, 5}, kBool);
  m.select(0, 3).fill_(false);
  for (Tensor* t : {&in.q, &in.k, &in.v}) t->requires_grad_();
  SdpaResult r = scaled_dot_product_attention(in.q, in.k, in.v, SdpaOptions().attn_mask(m.to(kGpu)).need_weights(true));
  sum(r.output).backward();
  CHECK(km::all_zero(r.output.select(2, 3)));
  CHECK(km::all_zero(r.weights.select(2, 3)));
  CHECK(km::all_zero(in.q.grad().select(2, 3)));
  CHECK(!km::all_zero(r.output.select(2, 2)));
}

TEST_CASE("cuda attention: NaN and Inf in masked-out keys and values never leak") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dtype_name(dt));
    AttnCase c{"poisoned", 2, 2, 2, 6, 70, 8, 8};
    Inputs in = make_inputs(c, dt, 4, Device::cpu());
    // Keys 64.. hold NaN / Inf (a second key tile on the GPU) and are masked for every query.
    in.k.narrow(2, 64, 6).fill_(std::numeric_limits<double>::quiet_NaN());
    in.v.narrow(2, 64, 6).fill_(kInf);
    Tensor keep = ones({6, 70}, kBool);
    keep.narrow(1, 64, 6).fill_(false);
    auto run = [&](Device dev) {
      Tensor q = in.q.to(dev).requires_grad_(), k = in.k.to(dev).requires_grad_(), v = in.v.to(dev).requires_grad_();
      SdpaResult r = scaled_dot_product_attention(q, k, v, SdpaOptions().attn_mask(keep.to(dev)).is_causal(false));
      sum(r.output).backward();
      return std::vector<Tensor>{r.output, q.grad(), k.grad(), v.grad()};
    };
    auto g = run(kGpu), h = run(Device::cpu());
    CHECK(km::all_finite(g[0]));
    CHECK(km::all_finite(g[1]));
    for (std::size_t i = 0; i < g.size(); ++i)
      kc::expect_match(g[i], h[i], 1e-4, 1e-5, "poisoned " + std::to_string(i));
  }
}

TEST_CASE("cuda attention: dropout multipliers are the CPU's and backward regenerates them") {
  KILN_CUDA_OR_SKIP();
  AttnCase c{"dropout ref", 2, 3, 3, 9, 77, 8, 8, false, 0, 0.4};
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dtype_name(dt));
    Inputs in = make_inputs(c, dt, 8, kGpu);
    Generator g1(11), g2(11);
    SdpaOptions o = SdpaOptions().dropout_p(0.4);
    SdpaResult fused = scaled_dot_product_attention(in.q, in.k, in.v, SdpaOptions(o).generator(&g1));
    // The composite reference on the GPU draws its mask with attention_dropout_mask.
    SdpaResult ref = scaled_dot_product_attention_reference(in.q, in.k, in.v, SdpaOptions(o).generator(&g2));
    kc::expect_match(fused.output, ref.output.contiguous(), dt == kFloat32 ? 1e-4 : 1e-10, 1e-5, "fused vs reference");
  }
}

TEST_CASE("cuda attention: window / ALiBi / sinks run on the GPU (composite path) and match the CPU") {
  KILN_CUDA_OR_SKIP();
  // The CUDA kernels leave these to the op's composite formulation (attention_has_extensions()
  // is false), which must still give the CPU's values and gradients.
  CHECK(!backend_for(kGpu).attention_has_extensions());
  AttnCase c{"extensions", 2, 4, 2, 9, 21, 8, 8, true};
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dtype_name(dt));
    auto run = [&](Device dev) {
      Inputs in = make_inputs(c, dt, 6, dev);
      for (Tensor* t : {&in.q, &in.k, &in.v}) t->requires_grad_();
      Generator g(1);
      Tensor sinks = randn({c.H}, dt, &g).to(dev).requires_grad_();
      SdpaOptions o = SdpaOptions()
                          .is_causal(true)
                          .window_left(5)
                          .window_right(0)
                          .alibi_slopes(alibi_slopes(c.H).to(dev, dt))
                          .sinks(sinks);
      SdpaResult r = scaled_dot_product_attention(in.q, in.k, in.v, o);
      sum(r.output * r.output).backward();
      return std::vector<Tensor>{r.output, in.q.grad(), in.k.grad(), in.v.grad(), sinks.grad()};
    };
    auto a = run(kGpu), b = run(Device::cpu());
    const double tol = dt == kFloat32 ? 1e-4 : 1e-10;
    for (std::size_t i = 0; i < a.size(); ++i)
      kc::expect_match(a[i], b[i], tol, tol, "extension result " + std::to_string(i));
  }
}

TEST_CASE("cuda attention: create_graph backward (composite) runs on the GPU like on the CPU") {
  KILN_CUDA_OR_SKIP();
  AttnCase c{"gradgrad", 1, 2, 1, 4, 6, 4, 4, true};
  auto run = [&](Device dev) {
    Inputs in = make_inputs(c, kFloat64, 2, dev);
    Tensor q = in.q.requires_grad_();
    SdpaResult r = scaled_dot_product_attention(q, in.k, in.v, SdpaOptions().is_causal(true));
    Tensor gq = autograd::grad({sum(r.output * r.output)}, {q}, {}, true, true)[0];
    Tensor gg = autograd::grad({sum(gq * gq)}, {q})[0];
    return gg;
  };
  kc::expect_match(run(kGpu), run(Device::cpu()), 1e-9, 1e-10, "second derivative");
}

TEST_CASE("cuda attention: nn::MultiHeadAttention matches the PyTorch goldens on the GPU") {
  KILN_CUDA_OR_SKIP();
  for (const char* name : {"self", "kvdim", "padding_nobias", "bool_mask", "float_mask", "causal_self",
                           "causal_padding", "gqa", "mqa_causal"}) {
    CAPTURE(name);
    km::Golden g = km::load_golden(std::string("mha_") + name + ".txt");
    const bool self = g.inum("self_attn") != 0, causal = g.inum("causal") != 0, with_w = g.inum("with_weights") != 0;
    nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(g.inum("embed_dim"), g.inum("num_heads"))
                                   .num_kv_heads(g.inum("num_kv_heads"))
                                   .kdim(g.inum("kdim"))
                                   .vdim(g.inum("vdim"))
                                   .bias(g.inum("bias") != 0));
    mha->to(kFloat64);
    nn::OrderedDict<Tensor> sd;
    for (const auto& [n, _] : mha->named_parameters()) sd.insert(n, g.at(n));
    mha->load_state_dict(sd);
    mha->to(kGpu);
    auto input = [&](const char* n) { return g.at(n).to(kGpu).requires_grad_(); };
    Tensor q = input("query");
    Tensor k = self ? q : input("key"), v = self ? q : input("value");
    nn::MhaForward f;
    f.is_causal(causal).need_weights(true);
    if (g.has("lengths")) f.key_padding(g.at("lengths").to(kInt64).to(kGpu));
    if (g.has("keep_mask")) f.attn_mask((g.at("keep_mask") != 0.0).to(kGpu));
    if (g.has("float_mask")) f.attn_mask(g.at("float_mask").to(kGpu));
    nn::MhaResult r = self ? mha->forward_with_weights(q, f) : mha->forward_with_weights(q, k, v, f);
    CHECK(r.output.device() == kGpu);
    auto close = [](const Tensor& got, const Tensor& want, const char* what) {
      INFO(what);
      REQUIRE(got.defined());
      CHECK(km::max_scaled_diff(got, want) <= 1e-10);
    };
    close(r.output, g.at("output"), "output");
    close(r.weights, g.at("weights"), "weights");
    Tensor loss = sum(r.output * g.at("gout").to(kGpu));
    if (with_w) loss = loss + sum(r.weights * g.at("gw").to(kGpu));
    loss.backward();
    close(q.grad(), g.at("grad.query"), "grad.query");
    if (!self) {
      close(k.grad(), g.at("grad.key"), "grad.key");
      close(v.grad(), g.at("grad.value"), "grad.value");
    }
    for (const auto& [n, p] : mha->named_parameters()) close(p.grad(), g.at("grad." + n), n.c_str());
  }
}
