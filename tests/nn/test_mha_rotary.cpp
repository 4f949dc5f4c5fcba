// nn::RotaryEmbedding against the direct formula (half-split and interleaved pairs, partial
// rotary), the relative-position property, gradients, positions forms and errors; the position
// hook of nn::MultiHeadAttention (rotary option and a custom position_fn).
#include "nn/test_mha_util.hpp"

using namespace kiln;
using namespace km;

namespace {

using O = nn::MultiHeadAttentionOptions;

// x (N, L, D) rotated by the textbook formula, element by element, positions pos[l].
std::vector<double> rope_reference(const Tensor& x, const std::vector<double>& pos, std::int64_t r, double base,
                                   bool interleaved) {
  const std::int64_t N = x.size(0), L = x.size(1), D = x.size(2);
  auto v = x.to_vector<double>();
  std::vector<double> out = v;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t i = 0; i < r / 2; ++i) {
        const double theta =
            pos[static_cast<std::size_t>(l)] * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(r));
        const std::int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + r / 2;
        const std::size_t row = static_cast<std::size_t>((n * L + l) * D);
        const double a = v[row + static_cast<std::size_t>(ia)], b = v[row + static_cast<std::size_t>(ib)];
        out[row + static_cast<std::size_t>(ia)] = a * std::cos(theta) - b * std::sin(theta);
        out[row + static_cast<std::size_t>(ib)] = b * std::cos(theta) + a * std::sin(theta);
      }
  return out;
}

}  // namespace

TEST_CASE("rotary: matches the direct formula (half-split, interleaved, partial rotary, offsets)") {
  Tensor x = rnd({3, 5, 8}, 1);
  for (bool inter : {false, true})
    for (std::int64_t r : {8, 4, 2})
      for (double base : {10000.0, 50.0}) {
        CAPTURE(inter);
        CAPTURE(r);
        CAPTURE(base);
        nn::RotaryEmbedding rope(nn::RotaryEmbeddingOptions(r).base(base).interleaved(inter));
        kt::expect_values(rope(x, 7), rope_reference(x, {7, 8, 9, 10, 11}, r, base, inter), 1e-12, 1e-12);
        // explicit (fractional) positions
        Tensor pos = tensor({0.0, 2.5, 100.0, 1000.0, 4096.0}, kFloat64);
        kt::expect_values(rope->forward(x, pos), rope_reference(x, {0, 2.5, 100, 1000, 4096}, r, base, inter), 1e-12,
                          1e-12);
      }
  // default base 10000, half-split; float32 keeps float64 angles (accurate at large positions)
  nn::RotaryEmbedding rope(8);
  CHECK(rope->options.base() == 10000.0);
  CHECK_FALSE(rope->options.interleaved());
  Tensor x32 = x.to(kFloat32);
  kt::expect_values(rope(x32, 100000),
                    rope_reference(x32.to(kFloat64), {100000, 100001, 100002, 100003, 100004}, 8, 10000.0, false), 1e-5,
                    1e-5);
  CHECK(fmt::format("{}", *rope).find("RotaryEmbedding(dim=8, base=10000)") != std::string::npos);
}

TEST_CASE("rotary: q_m . k_n depends only on m - n / positions per batch element broadcast over heads") {
  nn::RotaryEmbedding rope(nn::RotaryEmbeddingOptions(8));
  Tensor q = rnd({1, 1, 8}, 2), k = rnd({1, 1, 8}, 3);
  auto dot_at = [&](std::int64_t m, std::int64_t n) { return sum(rope(q, m) * rope(k, n)).item<double>(); };
  for (std::int64_t shift : {1, 5, 100}) {
    CHECK(dot_at(3, 1) == doctest::Approx(dot_at(3 + shift, 1 + shift)).epsilon(1e-12));
    CHECK(dot_at(0, 6) == doctest::Approx(dot_at(shift, 6 + shift)).epsilon(1e-12));
  }
  CHECK(std::abs(dot_at(3, 1) - dot_at(1, 3)) > 1e-6);  // not symmetric: depends on the sign of m - n
  CHECK(std::abs(dot_at(0, 0) - sum(q * k).item<double>()) < 1e-12);
  // (B, H, L, D) with per-example positions (B, 1, L)
  Tensor x = rnd({2, 3, 4, 8}, 4);
  Tensor pos = tensor({0, 1, 2, 3, 10, 11, 12, 13}).reshape({2, 1, 4});
  Tensor y = rope->forward(x, pos);
  CHECK(max_abs_diff(y.select(0, 0), rope(x.select(0, 0), 0)) < 1e-14);
  CHECK(max_abs_diff(y.select(0, 1), rope(x.select(0, 1), 10)) < 1e-14);
}

TEST_CASE("rotary: float64 gradcheck (half-split, interleaved, partial) and errors") {
  for (bool inter : {false, true}) {
    CAPTURE(inter);
    nn::RotaryEmbedding rope(nn::RotaryEmbeddingOptions(4).interleaved(inter));
    kt::grad_ok([&](const std::vector<Tensor>& v) { return rope(v[0], 3); }, {kt::leaf({2, 3, 6}, 5)});
    kt::grad_ok([&](const std::vector<Tensor>& v) { return rope(v[0], 0); }, {kt::noncontig_leaf({2, 3, 4}, 6)});
  }
  CHECK_KILN_ERROR(nn::RotaryEmbedding(3),
                   "[RotaryEmbedding] dim (the rotated features) must be positive and even, got 3");
  CHECK_KILN_ERROR(nn::RotaryEmbedding(nn::RotaryEmbeddingOptions(4).base(-1)), "base must be positive and finite");
  nn::RotaryEmbedding rope(8);
  CHECK_KILN_ERROR(rope(randn({2, 3, 6}), 0), "expected input (..., L, D) with D >= dim=8, got shape (2, 3, 6)");
  CHECK_KILN_ERROR(rope->forward(randn({2, 3, 8}), tensor({0, 1})),
                   "positions of shape (2,) cannot be broadcast to the input's (2, 3)");
  CHECK_KILN_ERROR(rope->forward(randn({2, 3, 8}), ones({3}, kBool)),
                   "positions must be int64 or floating point, got bool");
}

TEST_CASE("mha rotary: equals rotating the projected heads by hand / position_fn gets the positions") {
  nn::MultiHeadAttention m(O(8, 2).num_kv_heads(1).rotary(nn::RotaryEmbeddingOptions(4)));
  m->to(kFloat64);
  randomize(*m, 7, 0.5);
  CHECK_FALSE(m->rotary.is_empty());
  CHECK(m->state_dict().keys().size() == 8);  // no parameters or buffers of its own
  Tensor x = rnd({2, 5, 8}, 8);
  Tensor y = m(x, nn::MhaForward().is_causal(true));
  nn::RotaryEmbedding rope(4);
  Tensor q = rope(m->q_proj(x).reshape({2, 5, 2, 4}).transpose(1, 2), 0);
  Tensor k = rope(m->k_proj(x).reshape({2, 5, 1, 4}).transpose(1, 2), 0);
  Tensor v = m->v_proj(x).reshape({2, 5, 1, 4}).transpose(1, 2);
  Tensor o = nn::functional::scaled_dot_product_attention_reference(q, k, v, SdpaOptions().is_causal(true)).output;
  CHECK(max_abs_diff(y, m->out_proj(o.transpose(1, 2).reshape({2, 5, 8}))) < 1e-12);
  // explicit positions: shifting every position by the same amount changes nothing (relative),
  // also per example (B, T); other spacings change the result exactly as rotating by hand does
  Tensor p = arange(0, 5, 1, kInt64);
  CHECK(max_abs_diff(m(x, nn::MhaForward().is_causal(true).positions(p + tensor({40}))), y) < 1e-12);
  Tensor pb = stack({p + tensor({3}), p + tensor({1000})}, 0);
  CHECK(max_abs_diff(m(x, nn::MhaForward().is_causal(true).positions(pb)), y) < 1e-12);
  Tensor sp = p * tensor({2});
  Tensor q2 = rope->forward(m->q_proj(x).reshape({2, 5, 2, 4}).transpose(1, 2), sp);
  Tensor k2 = rope->forward(m->k_proj(x).reshape({2, 5, 1, 4}).transpose(1, 2), sp);
  Tensor o2 = nn::functional::scaled_dot_product_attention_reference(q2, k2, v, SdpaOptions()).output;
  Tensor y2 = m(x, nn::MhaForward().positions(sp));
  CHECK(max_abs_diff(y2, m->out_proj(o2.transpose(1, 2).reshape({2, 5, 8}))) < 1e-12);
  CHECK(max_abs_diff(y2, m(x)) > 1e-6);
  kt::grad_ok([&](const std::vector<Tensor>& in) { return m(in[0], nn::MhaForward().is_causal(true)); },
              {kt::leaf({2, 3, 8}, 9)});

  // a custom hook sees q (B, H, T, Dk) and k (B, Hkv, S, Dk) with their positions
  std::vector<std::pair<Shape, std::vector<std::int64_t>>> seen;
  nn::MultiHeadAttention h(O(8, 2).num_kv_heads(1).position_fn([&](const Tensor& t, const Tensor& pos, bool is_key) {
    seen.push_back({t.shape(), pos.to_vector<std::int64_t>()});
    return is_key ? t * 2.0 : t;
  }));
  nn::KVCache cache = h->make_kv_cache(2, 6);
  NoGradGuard ng;
  Tensor x2 = randn({2, 2, 8});
  h(randn({2, 3, 8}), nn::MhaForward().cache(&cache));
  h(x2, nn::MhaForward().cache(&cache));
  REQUIRE(seen.size() == 4);
  CHECK(seen[0].first == Shape{2, 2, 3, 4});
  CHECK(seen[0].second == std::vector<std::int64_t>{0, 1, 2});
  CHECK(seen[1].first == Shape{2, 1, 3, 4});
  CHECK(seen[2].second == std::vector<std::int64_t>{3, 4});
  CHECK(seen[3].second == std::vector<std::int64_t>{3, 4});
  // the cache stores the hook's keys
  CHECK(max_abs_diff(cache.keys().narrow(2, 3, 2), h->k_proj(x2).reshape({2, 2, 1, 4}).transpose(1, 2) * 2.0) < 1e-6);
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2).rotary(nn::RotaryEmbeddingOptions(6))),
                   "rotary dim=6 exceeds head_dim=4");
  CHECK_KILN_ERROR(nn::MultiHeadAttention(O(8, 2)
                                              .rotary(nn::RotaryEmbeddingOptions(4))
                                              .position_fn([](const Tensor& t, const Tensor&, bool) { return t; })),
                   "set either rotary or position_fn, not both");
  nn::MultiHeadAttention plain(O(8, 2));
  CHECK_KILN_ERROR(plain(randn({2, 3, 8}), nn::MhaForward().positions(tensor({0, 1, 2}))),
                   "positions were given but the module has no rotary or position_fn to use them");
  CHECK_KILN_ERROR(m(x, nn::MhaForward().positions(tensor({0, 1, 2}))),
                   "positions must have shape (5,) or (2, 5), got (3,)");
  nn::MultiHeadAttention bad(
      O(8, 2).position_fn([](const Tensor& t, const Tensor&, bool) { return t.narrow(-1, 0, 2); }));
  CHECK_KILN_ERROR(bad(randn({2, 3, 8})), "position_fn must keep the shapes of q (2, 2, 3, 4) and k (2, 2, 3, 4)");
}
