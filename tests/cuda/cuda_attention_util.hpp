#pragma once
// The fused attention case table the CUDA attention tests share (test_cuda_attention.cpp for
// float32/float64 against the CPU, test_cuda_attention_lowp.cpp for bfloat16/float16 against
// float32 on the same rounded inputs).
#include "cuda/cuda_test_util.hpp"
#include "nn/test_mha_util.hpp"

namespace kca {

using namespace kiln;

struct AttnCase {
  const char* name;
  std::int64_t B, H, Hkv, T, S, Dk, Dv;
  bool causal = false;
  int mask = 0;  // 0 none, 1 bool (T, S) with a fully masked row, 2 float (B, 1, 1, S) padding with -inf
  double dropout = 0;
  bool weights = false;
  bool head_split = false;  // q, k, v as (B, T, H, D) buffers viewed (B, H, T, D)
};

inline const std::vector<AttnCase> kCases = {
    {"small", 2, 2, 2, 5, 7, 8, 8},
    {"causal square", 1, 3, 3, 70, 70, 16, 16, true},
    {"causal T < S (kv cache)", 2, 2, 1, 33, 130, 32, 32, true},
    {"causal T > S (empty rows)", 1, 2, 2, 40, 9, 8, 8, true},
    {"gqa + bool mask", 2, 4, 2, 19, 67, 24, 40, false, 1},
    {"float padding mask + weights", 3, 2, 2, 12, 65, 16, 16, false, 2, 0, true},
    {"dropout", 2, 2, 2, 31, 129, 16, 16, false, 0, 0.3},
    {"dropout causal weights", 1, 4, 2, 17, 64, 8, 8, true, 1, 0.5, true},
    {"head split layout", 2, 4, 4, 50, 50, 32, 32, true, 0, 0, false, true},
    {"wide heads", 1, 2, 2, 65, 96, 128, 96},
    {"single query", 4, 2, 2, 1, 300, 64, 64, true},
};

struct Inputs {
  Tensor q, k, v, mask;
};

// Inputs drawn in `gen` (so a float32 run can see exactly a bfloat16 run's values), held in dt
// on dev (the mask on the device of q).
inline Inputs make_inputs(const AttnCase& c, DType dt, std::uint64_t seed, Device dev, DType gen) {
  Generator g(seed);
  auto t = [&](std::int64_t h, std::int64_t n, std::int64_t d) {
    if (!c.head_split) return randn({c.B, h, n, d}, gen, &g).to(dt).to(dev);
    return randn({c.B, n, h, d}, gen, &g).to(dt).to(dev).transpose(1, 2);
  };
  Inputs in;
  in.q = t(c.H, c.T, c.Dk);
  in.k = t(c.Hkv, c.S, c.Dk);
  in.v = t(c.Hkv, c.S, c.Dv);
  if (c.mask == 1) {
    Tensor m = rand({c.T, c.S}, kFloat64, &g) < 0.7;
    m.select(0, c.T / 2).fill_(false);  // a query row with nothing to attend to
    in.mask = m.to(dev);
  } else if (c.mask == 2) {
    std::vector<double> pad(static_cast<std::size_t>(c.B * c.S), 0.0);
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t s = c.S - 3 * b; s < c.S; ++s)
        pad[static_cast<std::size_t>(b * c.S + s)] = -std::numeric_limits<double>::infinity();
    in.mask = tensor(pad, {c.B, 1, 1, c.S}, TensorOptions(dt)).to(dev);
  }
  return in;
}
inline Inputs make_inputs(const AttnCase& c, DType dt, std::uint64_t seed, Device dev) {
  return make_inputs(c, dt, seed, dev, dt);
}

struct Run {
  Tensor out, weights, gq, gk, gv, gmask;
};

// Forward and backward of a case (loss: sum(out * w) [+ sum(weights * w2)], w drawn in gen).
inline Run run_case(const AttnCase& c, DType dt, Device dev, DType gen) {
  Inputs in = make_inputs(c, dt, 17, dev, gen);
  for (Tensor* t : {&in.q, &in.k, &in.v}) t->requires_grad_();
  if (in.mask.defined() && in.mask.is_floating_point()) in.mask.requires_grad_();
  Generator g(99);
  SdpaOptions o;
  o.is_causal(c.causal).need_weights(c.weights).dropout_p(c.dropout).generator(&g);
  if (in.mask.defined()) o.attn_mask(in.mask);
  SdpaResult r = scaled_dot_product_attention(in.q, in.k, in.v, o);
  Generator gw(5);
  Tensor w = randn(r.output.shape(), gen, &gw).to(dt).to(dev);
  Tensor loss = sum(r.output * w);
  if (c.weights) loss = loss + sum(r.weights * randn(r.weights.shape(), gen, &gw).to(dt).to(dev));
  loss.backward();
  return {r.output,    r.weights,   in.q.grad(),
          in.k.grad(), in.v.grad(), in.mask.defined() && in.mask.requires_grad() ? in.mask.grad() : Tensor()};
}
inline Run run_case(const AttnCase& c, DType dt, Device dev) { return run_case(c, dt, dev, dt); }

}  // namespace kca
