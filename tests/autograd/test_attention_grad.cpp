// scaled_dot_product_attention gradients: float64 gradcheck of the fused op in every mask mode,
// with grouped-query heads, a learnable float mask, returned weights, dropout and double
// backward; fused gradients against the reference's on larger shapes; dropout behaviour.
#include "autograd/test_attention_util.hpp"

using namespace kiln;
using namespace ka;

namespace {

Tensor leaf(const Shape& s, std::uint64_t seed) { return kt::leaf(s, seed); }

// The options of mask mode `mode` for (B, H, T, S) logits, T = 3, S = 5.
SdpaOptions grad_options(int mode) {
  SdpaOptions o;
  if (mode == 1)
    o.attn_mask(tensor({true, false, true, true, false, true, true, true, false, true, false, false, true, true, true})
                    .reshape({3, 5}));
  if (mode == 2) o.attn_mask(sel(tensor({true, true, false, true, true}), 0.0, -kInf) + rnd({2, 1, 3, 5}, 4));
  if (mode == 3) o.is_causal(true);
  if (mode == 4) o.is_causal(true).attn_mask(tensor({false, true, true, true, true}));
  return o;
}

}  // namespace

TEST_CASE("sdpa gradcheck: fused op in every mask mode, with grouped-query heads") {
  for (int mode = 0; mode < 5; ++mode)
    for (auto [H, Hkv] : {std::pair<std::int64_t, std::int64_t>{2, 2}, {2, 1}}) {
      CAPTURE(mode);
      CAPTURE(H);
      CAPTURE(Hkv);
      SdpaOptions o = grad_options(mode);
      Tensor q = leaf({2, H, 3, 4}, 1), k = leaf({2, Hkv, 5, 4}, 2), v = leaf({2, Hkv, 5, 3}, 3);
      kt::grad_ok(
          [&](const std::vector<Tensor>& in) { return F::scaled_dot_product_attention(in[0], in[1], in[2], o).output; },
          {q, k, v});
    }
}

TEST_CASE("sdpa gradcheck: learnable float mask, weights output, extra batch dims, non-contiguous inputs") {
  Tensor q = kt::noncontig_leaf({2, 1, 2, 3, 4}, 1), k = leaf({2, 1, 2, 5, 4}, 2), v = leaf({2, 1, 2, 5, 3}, 3);
  Tensor bias = leaf({2, 3, 5}, 4);  // per head, broadcast over the batch
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        auto r = F::scaled_dot_product_attention(in[0], in[1], in[2],
                                                 SdpaOptions().attn_mask(in[3]).is_causal(true).need_weights(true));
        // Both outputs feed the result: the weights' gradient flows too.
        return cat({r.output.flatten(), r.weights.flatten() * 0.7}, 0);
      },
      {q, k, v, bias});
}

TEST_CASE("sdpa gradcheck: dropout with a re-seeded generator") {
  Tensor q = leaf({1, 2, 3, 4}, 1), k = leaf({1, 1, 70, 4}, 2), v = leaf({1, 1, 70, 2}, 3);
  for (bool ref : {false, true}) {
    CAPTURE(ref);
    kt::grad_ok(
        [&](const std::vector<Tensor>& in) {
          Generator g(11);  // the same keep mask on every evaluation
          return F::scaled_dot_product_attention(
                     in[0], in[1], in[2], SdpaOptions().dropout_p(0.3).generator(&g).is_causal(true).use_reference(ref))
              .output;
        },
        {q, k, v});
  }
}

TEST_CASE("sdpa gradcheck: double backward through the create_graph path") {
  Tensor q = leaf({1, 2, 3, 4}, 1), k = leaf({1, 1, 5, 4}, 2), v = leaf({1, 1, 5, 3}, 3);
  Tensor go = rnd({1, 2, 3, 3}, 9);
  Tensor mask = tensor({true, true, false, true, true});
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        Generator g(5);
        auto r = F::scaled_dot_product_attention(in[0], in[1], in[2],
                                                 SdpaOptions().attn_mask(mask).dropout_p(0.2).generator(&g));
        auto gs = autograd::grad({r.output}, {in[0], in[1], in[2]}, {go}, true, true);
        return cat({gs[0].flatten(), gs[1].flatten(), gs[2].flatten()}, 0);
      },
      {q, k, v});
}

TEST_CASE("sdpa: fused gradients match the reference's") {
  struct Case {
    Shape batch;
    std::int64_t H, Hkv, T, S, D;
    int mode;
  };
  const Case cases[] = {{{2}, 4, 4, 7, 130, 8, 0},    {{2}, 4, 2, 64, 64, 8, 3},  {{}, 4, 1, 130, 70, 16, 4},
                        {{2, 2}, 2, 1, 33, 65, 8, 1}, {{1}, 4, 2, 1, 130, 64, 2}, {{2}, 2, 2, 130, 130, 8, 3}};
  for (DType dt : {kFloat64, kFloat32})
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.T);
      CAPTURE(c.S);
      CAPTURE(c.mode);
      auto sh = [&](std::int64_t h, std::int64_t l, std::int64_t d) {
        Shape s = c.batch;
        s.insert(s.end(), {h, l, d});
        return s;
      };
      SdpaOptions o;
      Generator mg(3);
      if (c.mode == 1) o.attn_mask(gt(rand({c.T, c.S}, kFloat64, &mg), scalar_tensor(0.3, kFloat64)));
      if (c.mode == 2) o.attn_mask(rnd({c.H, c.T, c.S}, 5, dt));
      if (c.mode == 3) o.is_causal(true);
      if (c.mode == 4) o.is_causal(true).attn_mask(gt(rand({c.S}, kFloat64, &mg), scalar_tensor(0.2, kFloat64)));
      Tensor q0 = rnd(sh(c.H, c.T, c.D), 1, dt), k0 = rnd(sh(c.Hkv, c.S, c.D), 2, dt);
      Tensor v0 = rnd(sh(c.Hkv, c.S, c.D), 3, dt);
      Tensor go = rnd(sh(c.H, c.T, c.D), 4, dt);
      std::vector<Tensor> grads[2];
      for (int ref = 0; ref < 2; ++ref) {
        Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
        auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).use_reference(ref == 1));
        grads[ref] = autograd::grad({r.output}, {q, k, v}, {go});
      }
      const double tol = dt == kFloat64 ? 1e-10 : 2e-5;
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(max_abs_diff(grads[0][static_cast<std::size_t>(i)], grads[1][static_cast<std::size_t>(i)]) <= tol);
      }
    }
}

TEST_CASE("sdpa dropout: determinism, eval mode, statistics, fused = reference") {
  const std::int64_t B = 2, H = 2, T = 64, S = 300, D = 4;
  Tensor q = rnd({B, H, T, D}, 1, kFloat32), k = rnd({B, H, S, D}, 2, kFloat32), v = rnd({B, H, S, D}, 3, kFloat32);
  auto with = [&](Generator* g, double p, bool training = true, bool ref = false) {
    return F::scaled_dot_product_attention(
               q, k, v, SdpaOptions().dropout_p(p).training(training).generator(g).is_causal(true).use_reference(ref))
        .output;
  };
  Tensor base = with(nullptr, 0.0);
  Generator g1(42), g2(42), g3(43);
  Tensor a = with(&g1, 0.25), b = with(&g2, 0.25), c = with(&g3, 0.25);
  CHECK(max_abs_diff(a, b) == 0.0);
  CHECK(max_abs_diff(a, c) > 1e-3);
  CHECK(max_abs_diff(a, base) > 1e-3);
  // Each call draws fresh counters: a second call differs.
  CHECK(max_abs_diff(with(&g1, 0.25), a) > 1e-3);
  // Eval mode and p = 0 are the plain function (and draw nothing).
  std::uint64_t off = g1.offset();
  CHECK(max_abs_diff(with(&g1, 0.25, false), base) == 0.0);
  CHECK(g1.offset() == off);
  // p = 1 drops everything.
  CHECK(max_abs_diff(with(&g1, 1.0), zeros_like(base)) == 0.0);
  // The reference draws the same mask.
  Generator g4(42);
  CHECK(max_abs_diff(with(&g4, 0.25, true, true), a) <= 1e-5);
  // Also with grouped-query heads and a key-padding mask (draws are per query head).
  {
    Tensor k1 = rnd({B, 1, S, D}, 4, kFloat32), v1 = rnd({B, 1, S, D}, 5, kFloat32);
    Tensor keep = gt(arange(0, S, 1, kInt64), scalar_tensor(std::int64_t{10}, kInt64)).reshape({1, 1, 1, S});
    SdpaOptions o = SdpaOptions().dropout_p(0.4).attn_mask(keep);
    Generator ga(9), gb(9);
    Tensor f = F::scaled_dot_product_attention(q, k1, v1, SdpaOptions(o).generator(&ga)).output;
    Tensor r = F::scaled_dot_product_attention_reference(q, k1, v1, SdpaOptions(o).generator(&gb)).output;
    CHECK(max_abs_diff(f, r) <= 1e-5);
  }
  // Mean preserved: q = 0 gives uniform probabilities; with v = 1 the output is kept / (S * keep).
  Tensor q0 = zeros({4, 8, 32, 4}), k0 = rnd({4, 8, 512, 4}, 5, kFloat32), v1 = ones({4, 8, 512, 1});
  Generator g5(7);
  Tensor o = F::scaled_dot_product_attention(q0, k0, v1, SdpaOptions().dropout_p(0.3).generator(&g5)).output;
  auto vals = o.to_vector<double>();
  double mean = 0;
  for (double x : vals) mean += x;
  mean /= static_cast<double>(vals.size());
  // Each output is a mean of 512 Bernoulli(0.7)/0.7 draws: sd sqrt(0.3/0.7/512) = 0.029; 1024 outputs.
  CHECK(std::abs(mean - 1.0) <= 6 * 0.029 / std::sqrt(1024.0));
}

TEST_CASE("sdpa dropout: the keep mask follows the documented Philox counters") {
  // Key j of row r uses counter offset + r * ceil(S / 64) * 16 + (j / 64) * 16 + j % 16, word (j / 16) % 4.
  const std::int64_t N = 2, H = 3, T = 4, S = 150;
  AttentionArgs a;
  a.q = zeros({N, H, T, 8});
  a.k = zeros({N, H, S, 8});
  a.v = zeros({N, H, S, 8});
  a.keep_prob = 0.6;
  a.seed = 0x1234567;
  a.offset = 1000;
  Tensor m = Tensor::empty({N, H, T, S}, kFloat32, Device::cpu());
  backend_for(Device::cpu()).attention_dropout_mask(a, m);
  auto got = m.to_vector<double>();
  const std::uint64_t per_row = (S + 63) / 64 * 16;
  CHECK(attention_dropout_counters(N, H, T, S) == static_cast<std::uint64_t>(N * H * T) * per_row);
  const auto thresh = static_cast<std::uint32_t>(0.6 * 4294967296.0);
  int mismatches = 0, kept = 0;
  for (std::int64_t r = 0; r < N * H * T; ++r)
    for (std::int64_t j = 0; j < S; ++j) {
      const auto ctr = static_cast<std::uint64_t>(r) * per_row + static_cast<std::uint64_t>(j / 64 * 16 + j % 16);
      auto w = philox4x32(a.seed, a.offset + ctr);
      bool keep = w[static_cast<std::size_t>((j / 16) % 4)] < thresh;
      double expect = keep ? 1.0 / 0.6 : 0.0;
      kept += keep;
      mismatches += std::abs(got[static_cast<std::size_t>(r * S + j)] - expect) > 1e-6;
    }
  CHECK(mismatches == 0);
  CHECK(std::abs(kept / double(N * H * T * S) - 0.6) < 0.03);
}

TEST_CASE("sdpa gradcheck: double backward with a learnable float mask and the weights output") {
  Tensor q = leaf({1, 2, 3, 4}, 1), k = leaf({1, 2, 4, 4}, 2), v = leaf({1, 2, 4, 3}, 3), bias = leaf({3, 4}, 4);
  Tensor go = rnd({1, 2, 3, 3}, 9), gw = rnd({1, 2, 3, 4}, 10);
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        auto r = F::scaled_dot_product_attention(in[0], in[1], in[2],
                                                 SdpaOptions().attn_mask(in[3]).is_causal(true).need_weights(true));
        auto gs = autograd::grad({r.output, r.weights}, {in[0], in[1], in[2], in[3]}, {go, gw}, true, true);
        return cat({gs[0].flatten(), gs[1].flatten(), gs[2].flatten(), gs[3].flatten()}, 0);
      },
      {q, k, v, bias});
}

TEST_CASE("sdpa gradcheck: broadcast (expanded) keys and values, empty sequences") {
  Tensor q = leaf({2, 2, 3, 4}, 1), k = leaf({1, 2, 5, 4}, 2), v = leaf({2, 1, 5, 3}, 3);
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        return F::scaled_dot_product_attention(in[0], in[1].expand({2, 2, 5, 4}), in[2].expand({2, 2, 5, 3})).output;
      },
      {q, k, v});
  // No keys: output 0 and zero gradients of the right shapes; no queries: zero k/v gradients.
  Tensor k0 = leaf({2, 2, 0, 4}, 2), v0 = leaf({2, 2, 0, 3}, 3);
  auto r = F::scaled_dot_product_attention(q, k0, v0);
  auto g = autograd::grad({r.output}, {q, k0, v0}, {ones_like(r.output)});
  CHECK(max_abs_diff(g[0], zeros_like(q)) == 0.0);
  kt::expect_shape(g[1], {2, 2, 0, 4});
  Tensor q0 = leaf({2, 2, 0, 4}, 1), k1 = leaf({2, 2, 5, 4}, 2), v1 = leaf({2, 2, 5, 3}, 3);
  auto r0 = F::scaled_dot_product_attention(q0, k1, v1);
  auto g0 = autograd::grad({r0.output}, {q0, k1, v1}, {ones_like(r0.output)});
  CHECK(max_abs_diff(g0[1], zeros_like(k1)) == 0.0);
  CHECK(max_abs_diff(g0[2], zeros_like(v1)) == 0.0);
}
