// nn::MultiHeadAttention attention_axes (Keras): attention over several input axes at once, or
// along one inner axis, against the flattened / permuted equivalent; masks over the flattened
// positions; gradients; errors.
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

// Two modules with the same parameters: one with attention_axes, one plain.
std::pair<nn::MultiHeadAttention, nn::MultiHeadAttention> pair_of(O with_axes, std::uint64_t seed = 3) {
  nn::MultiHeadAttention a(with_axes);
  O plain = with_axes;
  plain.attention_axes({});
  nn::MultiHeadAttention b(plain);
  a->to(kFloat64);
  b->to(kFloat64);
  randomize(*a, seed, 0.5);
  b->load_state_dict(a->state_dict());
  return {a, b};
}

}  // namespace

TEST_CASE("mha attention_axes: {1, 2} attends over all A1 * A2 positions (self and cross, reslink)") {
  for (bool reslink : {false, true}) {
    CAPTURE(reslink);
    auto [a, b] = pair_of(O(8, 2).num_kv_heads(1).attention_axes({1, 2}).reslink(reslink));
    Tensor x = rnd({2, 3, 4, 8}, 1);
    Tensor y = a(x);
    kt::expect_shape(y, {2, 3, 4, 8});
    CHECK(max_abs_diff(y, b(x.reshape({2, 12, 8})).reshape({2, 3, 4, 8})) < 1e-14);
    // negative axes name the same dims
    auto [an, bn] = pair_of(O(8, 2).num_kv_heads(1).attention_axes({-3, -2}).reslink(reslink));
    CHECK(max_abs_diff(an(x), bn(x.reshape({2, 12, 8})).reshape({2, 3, 4, 8})) < 1e-14);
  }
  // cross-attention: keys/values with their own attended sizes (5 x 2)
  auto [a, b] = pair_of(O(8, 2).kdim(6).vdim(5).attention_axes({1, 2}));
  Tensor q = rnd({2, 3, 4, 8}, 2), k = rnd({2, 5, 2, 6}, 3), v = rnd({2, 5, 2, 5}, 4);
  CHECK(max_abs_diff(a(q, k, v),
                     b(q.reshape({2, 12, 8}), k.reshape({2, 10, 6}), v.reshape({2, 10, 5})).reshape({2, 3, 4, 8})) <
        1e-14);
}

TEST_CASE("mha attention_axes: one inner axis attends per row / three-axis inputs permute as expected") {
  Tensor x = rnd({2, 3, 4, 8}, 5);
  {  // {2}: along A2 for every (B, A1) -- the default layout with A1 as a batch dim
    auto [a, b] = pair_of(O(8, 2).attention_axes({2}));
    CHECK(max_abs_diff(a(x), b(x)) < 1e-14);
  }
  {  // {1}: along A1 for every (B, A2)
    auto [a, b] = pair_of(O(8, 2).attention_axes({1}));
    Tensor want = b(x.transpose(1, 2)).transpose(1, 2);
    CHECK(max_abs_diff(a(x), want) < 1e-14);
    CHECK(max_abs_diff(a(x), b(x)) > 1e-3);  // really a different attention
  }
  {  // (B, A1, A2, A3, E) with {1, 3}: batch (B, A2), positions A1 * A3
    auto [a, b] = pair_of(O(8, 4).num_kv_heads(2).attention_axes({3, 1}));
    Tensor z = rnd({2, 3, 2, 4, 8}, 6);
    Tensor flat = z.permute({0, 2, 1, 3, 4}).reshape({2, 2, 12, 8});
    Tensor want = b(flat).reshape({2, 2, 3, 4, 8}).permute({0, 2, 1, 3, 4});
    CHECK(max_abs_diff(a(z), want) < 1e-14);
  }
}

TEST_CASE("mha attention_axes: masks, causal, padding and weights refer to the flattened positions") {
  auto [a, b] = pair_of(O(8, 2).attention_axes({1, 2}));
  Tensor x = rnd({2, 2, 3, 8}, 7);
  Tensor keep = rnd({6, 6}, 8) > Scalar(-0.5);
  Tensor bias = rnd({2, 6, 6}, 9);
  nn::MhaForward f =
      nn::MhaForward().attn_mask(keep).key_padding(tensor({6, 4})).is_causal(true).attn_bias(bias).need_weights(true);
  nn::MhaResult ra = a->forward_with_weights(x, f);
  nn::MhaResult rb = b->forward_with_weights(x.reshape({2, 6, 8}), f);
  CHECK(max_abs_diff(ra.output, rb.output.reshape({2, 2, 3, 8})) < 1e-14);
  kt::expect_shape(ra.weights, {2, 2, 6, 6});  // (batch', H, T, S) over the flattened positions
  CHECK(max_abs_diff(ra.weights, rb.weights) < 1e-14);
  // axes {2} with leading dims (B, A1) as batch: key_padding lengths of shape (B, A1)
  auto [c, d] = pair_of(O(8, 2).attention_axes({2}));
  Tensor lengths = tensor({3, 1, 2, 3}).reshape({2, 2});
  CHECK(max_abs_diff(c(x, nn::MhaForward().key_padding(lengths)), d(x, nn::MhaForward().key_padding(lengths))) < 1e-14);
}

TEST_CASE("mha attention_axes: float64 gradcheck and errors") {
  for (std::vector<std::int64_t> axes : {std::vector<std::int64_t>{1, 2}, std::vector<std::int64_t>{1}}) {
    CAPTURE(axes.size());
    auto [a, b] = pair_of(O(4, 2).attention_axes(axes));
    std::vector<Tensor> in{kt::leaf({1, 2, 3, 4}, 10)};
    for (Tensor p : a->parameters()) in.push_back(p);
    kt::grad_ok([&](const std::vector<Tensor>& v) { return a(v[0], nn::MhaForward().is_causal(true)); }, in);
  }
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).attention_axes({1, 1})),
                   "attention_axes must not repeat an axis, got 1, 1");
  nn::MultiHeadAttention m(O(8, 2).attention_axes({1, 3}));
  CHECK_KILN_ERROR(m(randn({2, 3, 4, 8})),
                   "[MultiHeadAttention] attention_axes 3 out of range for a query of shape (2, 3, 4, 8): axes must be "
                   "in [-4, 2] (not the feature dim)");
  nn::MultiHeadAttention r(O(8, 2).attention_axes({1, -2}));
  CHECK_KILN_ERROR(r(randn({2, 3, 8})),
                   "attention_axes (1, -2) name the same dim twice for a query of shape (2, 3, 8)");
  nn::MultiHeadAttention c(O(8, 2).attention_axes({2}));
  CHECK_KILN_ERROR(c(randn({2, 3, 4, 8}), randn({2, 2, 4, 8})),
                   "with attention_axes (2) the key must share the query's non-attended dims, got shape (2, 2, 4, 8) "
                   "(query (2, 3, 4, 8))");
  CHECK_KILN_ERROR(c(randn({2, 3, 4, 8}), randn({2, 3, 8})),
                   "with attention_axes the key must have the query's 4 dims, got shape (2, 3, 8)");
  CHECK(fmt::format("{}", c).find("attention_axes=(2)") != std::string::npos);
}
