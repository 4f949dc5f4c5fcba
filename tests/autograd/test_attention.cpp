// scaled_dot_product_attention values: hand-computed and host-loop references, fused kernels
// against the composite reference on a table of shapes and mask modes (float32 and float64),
// the decided semantics (empty rows, NaN in masked keys/values, weights), layouts and errors.
#include "autograd/test_attention_util.hpp"

using namespace kiln;
using namespace ka;

namespace {

enum class MaskMode { None, Bool, Float, KeyPadding, Causal, CausalBool, CausalFloat };
const char* mode_name(MaskMode m) {
  switch (m) {
    case MaskMode::None: return "none";
    case MaskMode::Bool: return "bool";
    case MaskMode::Float: return "float";
    case MaskMode::KeyPadding: return "key-padding";
    case MaskMode::Causal: return "causal";
    case MaskMode::CausalBool: return "causal+bool";
    case MaskMode::CausalFloat: return "causal+float";
  }
  return "?";
}

// Options with a mask of `mode` for logits of shape batch + (H, T, S).
SdpaOptions options_for(MaskMode mode, const Shape& batch, std::int64_t H, std::int64_t T, std::int64_t S, DType dt,
                        std::uint64_t seed) {
  SdpaOptions o;
  Shape full = batch;
  full.insert(full.end(), {H, T, S});
  Generator g(seed);
  switch (mode) {
    case MaskMode::None: break;
    case MaskMode::Causal: o.is_causal(true); break;
    case MaskMode::Bool:
    case MaskMode::CausalBool:
      // (T, S) broadcast over batch and heads; ~30% masked.
      o.attn_mask(gt(rand({T, S}, kFloat64, &g), scalar_tensor(0.3, kFloat64)));
      o.is_causal(mode == MaskMode::CausalBool);
      break;
    case MaskMode::Float:
    case MaskMode::CausalFloat: {
      // Per-head additive bias with some -inf entries.
      Shape ms = {H, T, S};
      Tensor bias = randn(ms, dt, &g);
      Tensor drop = lt(rand(ms, kFloat64, &g), scalar_tensor(0.2, kFloat64));
      o.attn_mask(where(drop, Scalar(-kInf), bias));
      o.is_causal(mode == MaskMode::CausalFloat);
      break;
    }
    case MaskMode::KeyPadding: {
      // (B, 1, 1, S): the last keys of each example are padding.
      Shape ms = batch;
      ms.insert(ms.end(), {1, 1, S});
      std::int64_t B = numel_of(batch);
      Tensor m = zeros(ms, kBool);
      auto* mp = static_cast<bool*>(m.raw_data());
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t j = 0; j < S; ++j) mp[b * S + j] = j < std::max<std::int64_t>(1, S - b - 1);
      o.attn_mask(m);
      break;
    }
  }
  return o;
}

// q/k/v for batch + (H|Hkv, T|S, D); every third case as transposed views of (batch, T, H, D).
struct QKV {
  Tensor q, k, v;
};
QKV make_qkv(const Shape& batch, std::int64_t H, std::int64_t Hkv, std::int64_t T, std::int64_t S, std::int64_t D,
             DType dt, std::uint64_t seed, bool transposed) {
  auto mk = [&](std::int64_t heads, std::int64_t len, std::uint64_t s) {
    Shape sh = batch;
    if (transposed) {
      sh.insert(sh.end(), {len, heads, D});
      return rnd(sh, s, dt).transpose(-3, -2);
    }
    sh.insert(sh.end(), {heads, len, D});
    return rnd(sh, s, dt);
  };
  return {mk(H, T, seed), mk(Hkv, S, seed + 1), mk(Hkv, S, seed + 2)};
}

}  // namespace

TEST_CASE("sdpa: hand-computed single query") {
  // logits (1, 0) -> p = (e, 1) / (e + 1); out = p0 * (1, 2) + p1 * (3, 4).
  Tensor q = tensor({1.0, 0.0}, kFloat64).reshape({1, 1, 2});
  Tensor k = tensor({1.0, 0.0, 0.0, 1.0}, kFloat64).reshape({1, 2, 2});
  Tensor v = tensor({1.0, 2.0, 3.0, 4.0}, kFloat64).reshape({1, 2, 2});
  double e = std::exp(1.0), p0 = e / (e + 1), p1 = 1 / (e + 1);
  for (bool ref : {false, true}) {
    auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions().scale(1.0).need_weights(true).use_reference(ref));
    kt::expect_shape(r.output, {1, 1, 2});
    kt::expect_values(r.output, {p0 * 1 + p1 * 3, p0 * 2 + p1 * 4}, 1e-12);
    kt::expect_values(r.weights, {p0, p1}, 1e-12);
  }
  // Default scale 1/sqrt(2); a float32 run of the same numbers.
  double s = 1 / std::sqrt(2.0), a = std::exp(s) / (std::exp(s) + 1), b = 1 - a;
  auto r = F::scaled_dot_product_attention(q.to(kFloat32), k.to(kFloat32), v.to(kFloat32));
  CHECK(r.output.dtype() == kFloat32);
  kt::expect_values(r.output, {a * 1 + b * 3, a * 2 + b * 4}, 1e-6);
  CHECK_FALSE(r.weights.defined());
}

TEST_CASE("sdpa: matches host loops (masks, causal bottom-right, GQA)") {
  const std::int64_t B = 2, H = 4, Hkv = 2, T = 5, S = 9, D = 3;
  for (int mode = 0; mode < 4; ++mode) {
    CAPTURE(mode);
    HostCase c{B, H, Hkv, T, S, D, D, 0.7, mode >= 2, {}, {}, {}, {}, false};
    Tensor q = rnd({B, H, T, D}, 1), k = rnd({B, Hkv, S, D}, 2), v = rnd({B, Hkv, S, D}, 3);
    c.q = q.to_vector<double>();
    c.k = k.to_vector<double>();
    c.v = v.to_vector<double>();
    SdpaOptions o = SdpaOptions().scale(0.7).is_causal(c.causal);
    if (mode == 1 || mode == 3) {  // bool (B, 1, T, S) or float (H, T, S) masks
      Generator g(5);
      Tensor full;
      if (mode == 1) {
        Tensor m = gt(rand({B, 1, T, S}, kFloat64, &g), scalar_tensor(0.4, kFloat64));
        o.attn_mask(m);
        full = m.expand({B, H, T, S}).to(kFloat64);
        c.bool_mask = true;
      } else {
        Tensor m = where(lt(rand({H, T, S}, kFloat64, &g), scalar_tensor(0.3, kFloat64)), Scalar(-kInf),
                         randn({H, T, S}, kFloat64, &g));
        o.attn_mask(m);
        full = m.expand({B, H, T, S}).contiguous();
      }
      c.mask = full.to_vector<double>();
    }
    auto expect = host_sdpa(c);
    for (bool ref : {false, true}) {
      CAPTURE(ref);
      kt::expect_values(F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).use_reference(ref)).output, expect,
                        1e-12, 1e-10);
    }
  }
}

TEST_CASE("sdpa: fused matches reference on a table of shapes and masks") {
  const std::vector<std::pair<std::int64_t, std::int64_t>> ts = {{1, 1},  {1, 7},   {7, 1},   {7, 7},    {7, 64},
                                                                 {64, 7}, {64, 64}, {1, 130}, {130, 64}, {130, 130}};
  const std::vector<std::pair<std::int64_t, std::int64_t>> heads = {{4, 4}, {4, 2}, {4, 1}};
  const std::vector<Shape> batches = {{2}, {}, {2, 3}};
  const MaskMode modes[] = {MaskMode::None,   MaskMode::Bool,       MaskMode::Float,      MaskMode::KeyPadding,
                            MaskMode::Causal, MaskMode::CausalBool, MaskMode::CausalFloat};
  int n = 0;
  for (DType dt : {kFloat32, kFloat64})
    for (auto [T, S] : ts)
      for (std::int64_t D : {8, 64}) {
        for (auto [H, Hkv] : heads) {
          for (MaskMode mode : modes) {
            ++n;
            // Big shapes get fewer combinations (the reference is O(T*S) per head).
            if (T * S >= 64 * 64 && (n % 3) != 0) continue;
            const Shape& batch = batches[static_cast<std::size_t>(n) % batches.size()];
            CAPTURE(dtype_name(dt));
            CAPTURE(T);
            CAPTURE(S);
            CAPTURE(D);
            CAPTURE(H);
            CAPTURE(Hkv);
            CAPTURE(mode_name(mode));
            CAPTURE(shape_str(batch));
            QKV x = make_qkv(batch, H, Hkv, T, S, D, dt, 100 + static_cast<std::uint64_t>(n), n % 3 == 0);
            SdpaOptions o = options_for(mode, batch, H, T, S, dt, static_cast<std::uint64_t>(n));
            auto f = F::scaled_dot_product_attention(x.q, x.k, x.v, o);
            auto r = F::scaled_dot_product_attention_reference(x.q, x.k, x.v, o);
            Shape os = batch;
            os.insert(os.end(), {H, T, D});
            kt::expect_shape(f.output, os);
            CHECK(max_abs_diff(f.output, r.output) <= 1e-5);
          }
        }
      }
}

TEST_CASE("sdpa: causal is bottom-right aligned and combines with the mask by AND") {
  // T = 2 queries over S = 4 keys: query 0 sits at position 2 (keys 0..2), query 1 at 3 (all).
  Tensor q = zeros({1, 2, 1}, kFloat64), k = zeros({1, 4, 1}, kFloat64);
  Tensor v = tensor({1.0, 2.0, 3.0, 4.0}, kFloat64).reshape({1, 4, 1});
  auto r = F::scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true).need_weights(true));
  kt::expect_values(r.output, {2.0, 2.5}, 1e-12);
  kt::expect_values(r.weights, {1 / 3.0, 1 / 3.0, 1 / 3.0, 0, 0.25, 0.25, 0.25, 0.25}, 1e-12);
  // AND with a mask that drops key 0: query 0 keeps keys 1, 2.
  Tensor keep = tensor({false, true, true, true});
  r = F::scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true).attn_mask(keep));
  kt::expect_values(r.output, {2.5, 3.0}, 1e-12);
  // T > S: the first T - S queries see no key at all.
  Tensor q3 = zeros({1, 3, 1}, kFloat64), k2 = zeros({1, 2, 1}, kFloat64);
  Tensor v2 = tensor({1.0, 3.0}, kFloat64).reshape({1, 2, 1});
  for (bool ref : {false, true}) {
    r = F::scaled_dot_product_attention(q3, k2, v2, SdpaOptions().is_causal(true).use_reference(ref));
    kt::expect_values(r.output, {0.0, 1.0, 2.0}, 1e-12);
  }
}

TEST_CASE("sdpa: a query with nothing to attend to outputs exactly 0 and gets 0 gradient") {
  const std::int64_t B = 2, H = 2, T = 6, S = 70, D = 5;
  for (DType dt : {kFloat32, kFloat64})
    for (int how = 0; how < 3; ++how)
      for (bool ref : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(how);
        CAPTURE(ref);
        Tensor q = rnd({B, H, T, D}, 1, dt).requires_grad_(), k = rnd({B, H, S, D}, 2, dt).requires_grad_();
        Tensor v = rnd({B, H, S, D}, 3, dt).requires_grad_();
        SdpaOptions o = SdpaOptions().use_reference(ref);
        std::vector<bool> keep(static_cast<std::size_t>(T * S), true);
        for (std::int64_t j = 0; j < S; ++j) keep[static_cast<std::size_t>(2 * S + j)] = false;  // row 2
        Tensor km = zeros({T, S}, kBool);
        std::copy(keep.begin(), keep.end(), static_cast<bool*>(km.raw_data()));
        if (how == 0) o.attn_mask(km);
        if (how == 1) o.attn_mask(sel(km, 0.5, -kInf, dt));
        if (how == 2) o.attn_mask(km.unsqueeze(0).expand({H, T, S})).is_causal(true);
        Tensor go = rnd({B, H, T, D}, 9, dt);
        auto r = F::scaled_dot_product_attention(q, k, v, o);
        auto out = r.output.to_vector<double>();
        for (std::int64_t b = 0; b < B * H; ++b)
          for (std::int64_t d = 0; d < D; ++d) CHECK(out[static_cast<std::size_t>((b * T + 2) * D + d)] == 0.0);
        auto gs = autograd::grad({r.output}, {q, k, v}, {go}, true);
        auto gq = gs[0].to_vector<double>();
        for (std::int64_t b = 0; b < B * H; ++b)
          for (std::int64_t d = 0; d < D; ++d) CHECK(gq[static_cast<std::size_t>((b * T + 2) * D + d)] == 0.0);
        // The empty row's upstream gradient has no effect on k and v.
        Tensor go2 = go.clone();
        {
          NoGradGuard ng;
          go2.select(2, 2).fill_(1e30);
        }
        auto gs2 = autograd::grad({r.output}, {q, k, v}, {go2}, false);
        CHECK(max_abs_diff(gs[1], gs2[1]) == 0.0);
        CHECK(max_abs_diff(gs[2], gs2[2]) == 0.0);
        for (auto& g : gs) CHECK(all_finite(g));
      }
}

TEST_CASE("sdpa: NaN/Inf in masked-out keys and values never reaches outputs or gradients") {
  const std::int64_t B = 2, H = 2, T = 5, S = 150, D = 4;
  for (DType dt : {kFloat32, kFloat64})
    for (int how = 0; how < 2; ++how)
      for (bool ref : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(how);
        CAPTURE(ref);
        // Keys >= 140 of example 0 and >= 100 of example 1 are masked out (key padding).
        Tensor keep = zeros({B, 1, 1, S}, kBool);
        auto* kp = static_cast<bool*>(keep.raw_data());
        for (std::int64_t j = 0; j < S; ++j) {
          kp[j] = j < 140;
          kp[S + j] = j < 100;
        }
        SdpaOptions o = SdpaOptions().use_reference(ref);
        o.attn_mask(how == 0 ? keep : sel(keep, 0.0, -kInf, dt));
        Tensor q = rnd({B, H, T, D}, 1, dt), k = rnd({B, H, S, D}, 2, dt), v = rnd({B, H, S, D}, 3, dt);
        Tensor kd = k.clone(), vd = v.clone();
        {
          NoGradGuard ng;
          kd.narrow(2, 140, 10).fill_(std::nan(""));
          kd.select(0, 1).narrow(1, 100, 20).fill_(kInf);
          vd.narrow(2, 145, 5).fill_(-kInf);
          vd.select(0, 1).narrow(1, 100, 50).fill_(std::nan(""));
        }
        Tensor go = rnd({B, H, T, D}, 7, dt);
        auto run = [&](const Tensor& kk, const Tensor& vv) {
          Tensor qq = q.detach().requires_grad_(), kl = kk.detach().requires_grad_(), vl = vv.detach().requires_grad_();
          auto r = F::scaled_dot_product_attention(qq, kl, vl, o);
          auto g = autograd::grad({r.output}, {qq, kl, vl}, {go});
          return std::vector<Tensor>{r.output, g[0], g[1], g[2]};
        };
        auto clean = run(k, v), dirty = run(kd, vd);
        const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
        for (int i = 0; i < 4; ++i) {
          CAPTURE(i);
          CHECK(all_finite(dirty[static_cast<std::size_t>(i)]));
          CHECK(max_abs_diff(clean[static_cast<std::size_t>(i)], dirty[static_cast<std::size_t>(i)]) <= tol);
        }
        // Masked-out keys and values get exactly 0 gradient.
        CHECK(max_abs_diff(dirty[2].narrow(2, 140, 10), zeros({B, H, 10, D}, dt)) == 0.0);
        CHECK(max_abs_diff(dirty[3].select(0, 1).narrow(1, 100, 50), zeros({H, 50, D}, dt)) == 0.0);
      }
}

TEST_CASE("sdpa: NaN in an attended value or query shows in the output") {
  Tensor q = rnd({1, 2, 4, 3}, 1), k = rnd({1, 2, 9, 3}, 2), v = rnd({1, 2, 9, 3}, 3);
  Tensor vd = v.clone();
  vd.select(2, 4).fill_(std::nan(""));
  for (bool ref : {false, true}) {
    auto out = F::scaled_dot_product_attention(q, k, vd, SdpaOptions().use_reference(ref)).output;
    CHECK(std::isnan(out.to_vector<double>()[0]));
  }
}

TEST_CASE("sdpa: need_weights returns pre-dropout probabilities") {
  const std::int64_t B = 2, H = 3, T = 5, S = 140, D = 8;
  Tensor q = rnd({B, H, T, D}, 1), k = rnd({B, H, S, D}, 2), v = rnd({B, H, S, D}, 3);
  Tensor keep = ones({T, S}, kBool);
  static_cast<bool*>(keep.raw_data())[0] = false;
  for (std::int64_t j = 0; j < S; ++j) static_cast<bool*>(keep.raw_data())[S + j] = false;  // row 1 empty
  for (bool causal : {false, true}) {
    SdpaOptions o = SdpaOptions().attn_mask(keep).is_causal(causal).need_weights(true);
    auto f = F::scaled_dot_product_attention(q, k, v, o);
    auto r = F::scaled_dot_product_attention_reference(q, k, v, o);
    kt::expect_shape(f.weights, {B, H, T, S});
    CHECK(max_abs_diff(f.weights, r.weights) <= 1e-12);
    auto rowsum = sum(f.weights, {-1}).to_vector<double>();
    for (std::size_t i = 0; i < rowsum.size(); ++i) {
      CAPTURE(i);
      CHECK(std::abs(rowsum[i] - (i % T == 1 ? 0.0 : 1.0)) <= 1e-12);
    }
    // Dropout does not change the returned weights.
    Generator g(3);
    auto fd = F::scaled_dot_product_attention(q, k, v, SdpaOptions(o).dropout_p(0.5).generator(&g));
    CHECK(max_abs_diff(fd.weights, f.weights) == 0.0);
    CHECK(max_abs_diff(fd.output, f.output) > 1e-3);
  }
}

TEST_CASE("sdpa: layouts, broadcast and empty inputs") {
  // Output memory is (batch, T, H, Dv): merging heads is a view.
  Tensor q = rnd({2, 4, 6, 8}, 1), k = rnd({2, 4, 7, 8}, 2), v = rnd({2, 4, 7, 5}, 3);
  auto o = F::scaled_dot_product_attention(q, k, v).output;
  kt::expect_shape(o, {2, 4, 6, 5});
  CHECK(o.transpose(1, 2).is_contiguous());
  // Broadcast (stride-0) keys/values and a non-contiguous query.
  Tensor k1 = rnd({1, 4, 7, 8}, 4).expand({2, 4, 7, 8}), v1 = rnd({1, 4, 7, 5}, 5).expand({2, 4, 7, 5});
  Tensor qt = rnd({2, 8, 6, 4}, 6).permute({0, 3, 2, 1});
  auto f = F::scaled_dot_product_attention(qt, k1, v1).output;
  auto r = F::scaled_dot_product_attention_reference(qt.contiguous(), k1.contiguous(), v1.contiguous()).output;
  CHECK(max_abs_diff(f, r) <= 1e-12);
  // Sizes 0: no queries, no keys (outputs 0), no batch.
  CHECK(F::scaled_dot_product_attention(rnd({2, 4, 0, 8}, 1), k, v).output.numel() == 0);
  Tensor z = F::scaled_dot_product_attention(q, rnd({2, 4, 0, 8}, 1), rnd({2, 4, 0, 5}, 1)).output;
  CHECK(max_abs_diff(z, zeros({2, 4, 6, 5}, kFloat64)) == 0.0);
  CHECK(F::scaled_dot_product_attention(rnd({0, 4, 6, 8}, 1), rnd({0, 4, 7, 8}, 1), rnd({0, 4, 7, 5}, 1))
            .output.numel() == 0);
  // Head dims differ between q/k (Dk) and v (Dv); float32 mask on float64 inputs is converted.
  Tensor fm = rnd({6, 7}, 8, kFloat32);
  auto a = F::scaled_dot_product_attention(q, k, v, SdpaOptions().attn_mask(fm)).output;
  auto b = F::scaled_dot_product_attention_reference(q, k, v, SdpaOptions().attn_mask(fm.to(kFloat64))).output;
  CHECK(max_abs_diff(a, b) <= 1e-12);
}

TEST_CASE("sdpa: errors name the problem") {
  Tensor q = rnd({2, 4, 6, 8}, 1), k = rnd({2, 2, 7, 8}, 2), v = rnd({2, 2, 7, 5}, 3);
  auto call = [](const Tensor& q, const Tensor& k, const Tensor& v, const SdpaOptions& o = {}) {
    return F::scaled_dot_product_attention(q, k, v, o).output;
  };
  CHECK_KILN_ERROR(call(rnd({6, 8}, 1), rnd({7, 8}, 1), rnd({7, 8}, 1)), "q must have at least 3 dims");
  CHECK_KILN_ERROR(call(q, rnd({4, 7, 8}, 1), v), "same number of dims");
  CHECK_KILN_ERROR(call(q, rnd({3, 2, 7, 8}, 1), rnd({3, 2, 7, 5}, 1)), "batch dims of q, k and v must match");
  CHECK_KILN_ERROR(call(q, rnd({2, 3, 7, 8}, 1), rnd({2, 3, 7, 5}, 1)), "not a multiple of the 3 kv heads");
  CHECK_KILN_ERROR(call(q, k, rnd({2, 1, 7, 5}, 1)), "same number of heads");
  CHECK_KILN_ERROR(call(q, rnd({2, 2, 7, 9}, 1), v), "same head dim");
  CHECK_KILN_ERROR(call(q, k, rnd({2, 2, 8, 5}, 1)), "same sequence length");
  CHECK_KILN_ERROR(call(q, k.to(kFloat32), v), "share one floating point dtype");
  CHECK_KILN_ERROR(call(q.to(kInt64), k.to(kInt64), v.to(kInt64)), "floating point dtype");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().attn_mask(zeros({6, 7}, kInt64))), "attn_mask must be bool");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().attn_mask(zeros({6, 8}, kBool))),
                   "attn_mask of shape (6, 8) cannot be broadcast to the logits' shape (batch..., H, T, S) = "
                   "(2, 4, 6, 7)");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().attn_mask(zeros({3, 2, 4, 6, 7}, kBool))), "cannot be broadcast");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().dropout_p(1.5)), "dropout_p must be in [0, 1], got 1.5");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().dropout_p(-0.1)), "dropout_p must be in [0, 1]");
  CHECK_KILN_ERROR(call(q, k, v, SdpaOptions().scale(kInf)), "scale must be finite");
  CHECK_KILN_ERROR(call(Tensor(), k, v), "q tensor is undefined");
  CHECK_KILN_ERROR(F::scaled_dot_product_attention_reference(q, k, rnd({2, 2, 8, 5}, 1)), "same sequence length");
}
