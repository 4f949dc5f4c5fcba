// scaled_dot_product_attention extensions, gradients: float64 gradcheck of the fused op and the
// reference for sliding windows, ALiBi (with slope gradients), sinks (with sink gradients) and
// learned additive biases broadcast over batch / heads / queries; the create_graph (double
// backward) path; fused gradients against the reference's on larger shapes.
#include "autograd/test_sdpa_ext_util.hpp"

using namespace kiln;
using namespace kx;

namespace {

Tensor leaf(const Shape& s, std::uint64_t seed, double scale = 1.0) { return kt::leaf(s, seed, scale); }

Tensor run(const std::vector<Tensor>& in, SdpaOptions o, bool ref) {
  return F::scaled_dot_product_attention(in[0], in[1], in[2], o.use_reference(ref)).output;
}

}  // namespace

TEST_CASE("sdpa ext gradcheck: sliding windows, fused and reference") {
  struct Case {
    std::int64_t T, S, l, r;
    bool causal;
  };
  // S = 140 spans three key tiles, so the fused kernels skip tiles outside the window.
  const Case cases[] = {{3, 5, 1, 0, true},     {4, 6, 1, 2, false},   {5, 5, 0, 0, false},
                        {4, 140, 10, 2, false}, {3, 140, 70, 0, true}, {6, 3, 1, -1, true}};
  for (const Case& c : cases)
    for (auto [H, Hkv] : {std::pair<std::int64_t, std::int64_t>{2, 2}, {2, 1}})
      for (bool ref : {false, true}) {
        CAPTURE(c.T);
        CAPTURE(c.S);
        CAPTURE(c.l);
        CAPTURE(c.r);
        CAPTURE(c.causal);
        CAPTURE(Hkv);
        CAPTURE(ref);
        SdpaOptions o = SdpaOptions().window_left(c.l).window_right(c.r).is_causal(c.causal);
        // Long key sequences with one example and small head dims keep the Jacobian small.
        const std::int64_t B = c.S > 64 ? 1 : 2, D = c.S > 64 ? 2 : 4;
        Tensor q = leaf({B, H, c.T, D}, 1), k = leaf({B, Hkv, c.S, D}, 2), v = leaf({B, Hkv, c.S, 3}, 3);
        kt::grad_ok([&](const std::vector<Tensor>& in) { return run(in, o, ref); }, {q, k, v});
      }
}

TEST_CASE("sdpa ext gradcheck: ALiBi slopes get gradients, shaped (H) and (batch, H)") {
  for (int shape = 0; shape < 2; ++shape)
    for (bool causal : {false, true})
      for (bool ref : {false, true}) {
        CAPTURE(shape);
        CAPTURE(causal);
        CAPTURE(ref);
        Tensor q = leaf({2, 2, 3, 4}, 1), k = leaf({2, 1, 70, 4}, 2), v = leaf({2, 1, 70, 3}, 3);
        Tensor slopes = shape == 0 ? leaf({2}, 4, 0.1) : leaf({2, 2}, 4, 0.1);
        kt::grad_ok(
            [&](const std::vector<Tensor>& in) {
              SdpaOptions o = SdpaOptions().alibi_slopes(in[3]).is_causal(causal).window_left(40).window_right(1);
              return run(in, o, ref);
            },
            {q, k, v, slopes});
      }
}

TEST_CASE("sdpa ext gradcheck: sinks get gradients, with an empty row and the weights output") {
  // Row 1 of the mask is empty: its sink gradient contribution is 0, its output 0.
  Tensor keep =
      tensor({true, false, true, true, false, false, false, false, false, false, true, true, true, false, true})
          .reshape({3, 5});
  for (bool weights : {false, true})
    for (bool ref : {false, true}) {
      CAPTURE(weights);
      CAPTURE(ref);
      Tensor q = leaf({2, 2, 3, 4}, 1), k = leaf({2, 1, 5, 4}, 2), v = leaf({2, 1, 5, 3}, 3);
      Tensor sinks = leaf({2}, 4);
      kt::grad_ok(
          [&](const std::vector<Tensor>& in) {
            auto r = F::scaled_dot_product_attention(
                in[0], in[1], in[2],
                SdpaOptions().sinks(in[3]).attn_mask(keep).need_weights(weights).use_reference(ref));
            return weights ? cat({r.output.flatten(), r.weights.flatten() * 0.6}, 0) : r.output;
          },
          {q, k, v, sinks});
    }
}

TEST_CASE("sdpa ext gradcheck: learned bias broadcast over batch, heads or queries") {
  // (H, T, S) relative-position bias, (1, 1, T, S), and a (B, 1, 1, S) key bias; with a window.
  const Shape shapes[] = {{2, 3, 70}, {1, 1, 3, 70}, {2, 1, 1, 70}};
  for (const Shape& bs : shapes)
    for (bool ref : {false, true}) {
      CAPTURE(shape_str(bs));
      CAPTURE(ref);
      Tensor q = leaf({2, 2, 3, 4}, 1), k = leaf({2, 2, 70, 4}, 2), v = leaf({2, 2, 70, 3}, 3), bias = leaf(bs, 4);
      kt::grad_ok(
          [&](const std::vector<Tensor>& in) {
            return run(in, SdpaOptions().attn_mask(in[3]).window_left(66).window_right(0).is_causal(true), ref);
          },
          {q, k, v, bias});
    }
  // The gradient comes back in the bias' own shape, also on the no-graph kernel path.
  Tensor q = rnd({2, 2, 3, 4}, 1), k = rnd({2, 2, 70, 4}, 2), v = rnd({2, 2, 70, 3}, 3);
  for (const Shape& bs : shapes) {
    Tensor bias = leaf(bs, 4);
    auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions().attn_mask(bias));
    auto g = autograd::grad({r.output}, {bias}, {rnd({2, 2, 3, 3}, 5)});
    kt::expect_shape(g[0], bs);
    auto rr = F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions().attn_mask(bias));
    auto gr = autograd::grad({rr.output}, {bias}, {rnd({2, 2, 3, 3}, 5)});
    CHECK(max_abs_diff(g[0], gr[0]) <= 1e-12);
  }
}

TEST_CASE("sdpa ext gradcheck: everything at once, with dropout and extra batch dims") {
  Tensor q = kt::noncontig_leaf({2, 1, 2, 4, 4}, 1), k = leaf({2, 1, 1, 70, 4}, 2), v = leaf({2, 1, 1, 70, 3}, 3);
  Tensor bias = leaf({2, 4, 70}, 4), slopes = leaf({2}, 5, 0.1), sinks = leaf({1, 2}, 6);
  Tensor keep = gt(rand({4, 70}, kFloat64), scalar_tensor(0.2, kFloat64));
  for (bool ref : {false, true}) {
    CAPTURE(ref);
    kt::grad_ok(
        [&](const std::vector<Tensor>& in) {
          Generator g(11);  // the same keep mask on every evaluation
          SdpaOptions o = SdpaOptions().attn_mask(add(in[3], sel(keep, 0.0, -kInf))).alibi_slopes(in[4]).sinks(in[5]);
          o.is_causal(true)
              .window_left(50)
              .window_right(0)
              .dropout_p(0.2)
              .generator(&g)
              .need_weights(true)
              .use_reference(ref);
          auto r = F::scaled_dot_product_attention(in[0], in[1], in[2], o);
          return cat({r.output.flatten(), r.weights.flatten() * 0.7}, 0);
        },
        {q, k, v, bias, slopes, sinks});
  }
}

TEST_CASE("sdpa ext gradcheck: double backward through the create_graph path") {
  Tensor q = leaf({1, 2, 3, 4}, 1), k = leaf({1, 1, 6, 4}, 2), v = leaf({1, 1, 6, 3}, 3);
  Tensor slopes = leaf({2}, 4, 0.2), sinks = leaf({2}, 5), bias = leaf({3, 6}, 6);
  Tensor go = rnd({1, 2, 3, 3}, 9), gw = rnd({1, 2, 3, 6}, 10);
  kt::grad_ok(
      [&](const std::vector<Tensor>& in) {
        SdpaOptions o =
            SdpaOptions().alibi_slopes(in[3]).sinks(in[4]).attn_mask(in[5]).window_left(2).window_right(1).need_weights(
                true);
        auto r = F::scaled_dot_product_attention(in[0], in[1], in[2], o);
        auto gs = autograd::grad({r.output, r.weights}, in, {go, gw}, true, true);
        std::vector<Tensor> flat;
        for (auto& g : gs) flat.push_back(g.flatten());
        return cat(flat, 0);
      },
      {q, k, v, slopes, sinks, bias});
}

TEST_CASE("sdpa ext: fused gradients match the reference's on larger shapes") {
  struct Case {
    Shape batch;
    std::int64_t H, Hkv, T, S, D;
    bool causal;
    std::int64_t wl, wr;
    bool alibi, sinks, bias, weights;
  };
  const Case cases[] = {
      {{2}, 4, 4, 130, 130, 8, true, 40, 0, true, true, false, false},
      {{2}, 4, 2, 64, 200, 16, false, 30, 30, false, true, true, false},
      {{}, 4, 1, 200, 70, 8, false, -1, 10, true, false, true, true},
      {{2, 2}, 2, 1, 33, 300, 8, true, 100, 0, true, true, true, true},
      {{1}, 4, 2, 1, 130, 64, false, 5, 5, true, true, false, false},
      {{2}, 8, 1, 100, 100, 8, true, 0, 0, true, true, true, false},
  };
  for (DType dt : {kFloat64, kFloat32})
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.T);
      CAPTURE(c.S);
      CAPTURE(c.H);
      CAPTURE(c.Hkv);
      Tensor q0 = rnd(cat_shape(c.batch, {c.H, c.T, c.D}), 1, dt),
             k0 = rnd(cat_shape(c.batch, {c.Hkv, c.S, c.D}), 2, dt);
      Tensor v0 = rnd(cat_shape(c.batch, {c.Hkv, c.S, c.D}), 3, dt),
             go = rnd(cat_shape(c.batch, {c.H, c.T, c.D}), 4, dt);
      Tensor gw = rnd(cat_shape(c.batch, {c.H, c.T, c.S}), 5, dt);
      Tensor sl0 = mul(alibi_slopes(c.H).to(dt), scalar_tensor(0.3, dt)), sk0 = rnd({c.H}, 6, dt, 2.0);
      Tensor b0 = rnd({c.H, 1, c.S}, 7, dt);
      std::vector<Tensor> grads[2];
      for (int ref = 0; ref < 2; ++ref) {
        std::vector<Tensor> in = {q0.detach().requires_grad_(),  k0.detach().requires_grad_(),
                                  v0.detach().requires_grad_(),  sl0.detach().requires_grad_(),
                                  sk0.detach().requires_grad_(), b0.detach().requires_grad_()};
        SdpaOptions o = SdpaOptions().is_causal(c.causal).window_left(c.wl).window_right(c.wr).need_weights(c.weights);
        if (c.alibi) o.alibi_slopes(in[3]);
        if (c.sinks) o.sinks(in[4]);
        if (c.bias) o.attn_mask(in[5]);
        auto r = F::scaled_dot_product_attention(in[0], in[1], in[2], o.use_reference(ref == 1));
        std::vector<Tensor> outs{r.output}, gos{go};
        if (c.weights) {
          outs.push_back(r.weights);
          gos.push_back(gw);
        }
        grads[ref] = autograd::grad(outs, in, gos, false, false, true);
      }
      const double tol = dt == kFloat32 ? 2e-4 : 1e-10;
      for (std::size_t i = 0; i < 6; ++i) {
        CAPTURE(i);
        // Slopes and sinks sum over T * S (or T) terms: relative tolerance.
        double scale = 1.0;
        if (grads[1][i].defined()) scale = std::max(1.0, max_abs_diff(grads[1][i], zeros_like(grads[1][i])));
        CHECK(grad_diff(grads[0][i], grads[1][i]) <= tol * scale);
      }
    }
}
