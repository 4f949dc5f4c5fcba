// The one option convention (KILN_ARG: a chained setter and a same-named getter) on the op-level
// option structs, and the argument order of embedding (indices first, as torch's F.embedding).
#include "test_util.hpp"

using namespace kiln;

TEST_CASE("SdpaOptions: chained KILN_ARG setters, defaults, getters") {
  SdpaOptions d;
  CHECK_FALSE(d.attn_mask().defined());
  CHECK_FALSE(d.is_causal());
  CHECK_FALSE(d.scale().has_value());
  CHECK(d.dropout_p() == 0.0);
  CHECK(d.training());
  CHECK(d.generator() == nullptr);
  CHECK_FALSE(d.need_weights());
  CHECK_FALSE(d.use_reference());
  CHECK(d.window_left() == -1);
  CHECK(d.window_right() == -1);
  CHECK_FALSE(d.alibi_slopes().defined());
  CHECK_FALSE(d.sinks().defined());

  Generator g(3);
  Tensor mask = ones({2, 2}, kBool), slopes = alibi_slopes(4), sinks = zeros({4});
  SdpaOptions o = SdpaOptions()
                      .attn_mask(mask)
                      .is_causal(true)
                      .scale(0.5)
                      .dropout_p(0.25)
                      .training(false)
                      .generator(&g)
                      .need_weights(true)
                      .use_reference(true)
                      .window_left(7)
                      .window_right(0)
                      .alibi_slopes(slopes)
                      .sinks(sinks);
  CHECK(o.attn_mask().is_same(mask));
  CHECK(o.is_causal());
  CHECK(o.scale() == 0.5);
  CHECK(o.dropout_p() == 0.25);
  CHECK_FALSE(o.training());
  CHECK(o.generator() == &g);
  CHECK(o.need_weights());
  CHECK(o.use_reference());
  CHECK(o.window_left() == 7);
  CHECK(o.window_right() == 0);
  CHECK(o.alibi_slopes().is_same(slopes));
  CHECK(o.sinks().is_same(sinks));
}

TEST_CASE("SdpaOptions: window_left / window_right reach the kernels") {
  // T = S = 4, causal: with window_left(1) query t sees keys t - 1 and t only.
  Tensor q = randn({1, 1, 4, 2}, kFloat64), k = randn({1, 1, 4, 2}, kFloat64), v = randn({1, 1, 4, 2}, kFloat64);
  auto r = scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true).window_left(1).need_weights(true));
  auto w = r.weights.to_vector<double>();
  for (int t = 0; t < 4; ++t)
    for (int s = 0; s < 4; ++s) {
      INFO("t " << t << " s " << s);
      CHECK((w[t * 4 + s] != 0.0) == (s <= t && s >= t - 1));
    }
  auto ref = scaled_dot_product_attention_reference(q, k, v, SdpaOptions().is_causal(true).window_left(1));
  CHECK(allclose(r.output, ref.output, 1e-9, 1e-12));
}

TEST_CASE("CrossEntropyOptions: chained KILN_ARG setters, defaults, getters") {
  CrossEntropyOptions d;
  CHECK(d.ignore_index() == -100);
  CHECK(d.label_smoothing() == 0.0);
  CHECK(d.reduction() == Reduction::Mean);
  CrossEntropyOptions o = CrossEntropyOptions().ignore_index(2).label_smoothing(0.1).reduction(Reduction::Sum);
  CHECK(o.ignore_index() == 2);
  CHECK(o.label_smoothing() == 0.1);
  CHECK(o.reduction() == Reduction::Sum);
  // the setters reach the op: class 2 ignored, the rest summed
  Tensor logits = zeros({3, 4}, kFloat64), target = tensor(std::vector<std::int64_t>{0, 2, 1}, {3});
  kt::expect_values(cross_entropy(logits, target, CrossEntropyOptions().ignore_index(2).reduction(Reduction::Sum)),
                    {2 * std::log(4.0)}, 1e-12);
}

TEST_CASE("GradcheckOptions and TensorOptions: chained KILN_ARG setters") {
  autograd::GradcheckOptions g = autograd::GradcheckOptions().eps(1e-4).atol(1e-3).rtol(1e-2).raise_on_failure(false);
  CHECK(g.eps() == 1e-4);
  CHECK(g.atol() == 1e-3);
  CHECK(g.rtol() == 1e-2);
  CHECK_FALSE(g.raise_on_failure());
  CHECK(autograd::GradcheckOptions().eps() == 1e-6);
  TensorOptions t = TensorOptions().dtype(kFloat64).requires_grad(true);
  CHECK(t.dtype() == kFloat64);
  CHECK(t.device() == Device::cpu());
  CHECK(t.requires_grad());
  CHECK(TensorOptions(kInt64).dtype() == kInt64);  // a DType still converts implicitly
  CHECK(zeros({2}, t).requires_grad());
}

TEST_CASE("embedding: indices first, weight second (kiln::embedding and F::embedding agree)") {
  Tensor w = arange(0, 12, 1, kFloat64).reshape({4, 3});
  Tensor ids = tensor(std::vector<std::int64_t>{3, 0, 3, 1}, {2, 2});
  Tensor e = embedding(ids, w);
  kt::expect_shape(e, {2, 2, 3});
  kt::expect_values(e, {9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5});
  CHECK(equal(nn::functional::embedding(ids, w), e));
  // the old (weight, indices) order is an error, not a silent misread
  CHECK_KILN_ERROR(embedding(w, ids), "[embedding] index must be an int64 tensor, got float64");
}
