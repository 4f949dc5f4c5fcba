// nn::functional::multi_head_attention (Ivy's functional form; declared in multihead_attention.hpp).
#include "multihead_attention.hpp"

namespace kiln::nn::functional {

namespace {

constexpr const char* kOp = "multi_head_attention";

// (batch..., L, h * f) -> (batch..., h, L, f)
Tensor heads(const Tensor& t, std::int64_t h, const char* what) {
  KILN_CHECK(t.defined() && t.dim() >= 2, kOp, "{} must be (batch..., L, features), got {}", what,
             t.defined() ? shape_str(t.shape()) : std::string("undefined"));
  KILN_CHECK(t.size(-1) % h == 0, kOp, "{} features ({}) are not divisible by num_heads={} (shape {})", what,
             t.size(-1), h, shape_str(t.shape()));
  Shape s = t.shape();
  s.back() = h;
  s.push_back(t.size(-1) / h);
  return reshape(t, s).transpose(-3, -2);
}

}  // namespace

Tensor multi_head_attention(const Tensor& x, double scale, std::int64_t num_heads, const Tensor& context,
                            const Tensor& mask, const std::function<Tensor(const Tensor&)>& to_q_fn,
                            const std::function<std::pair<Tensor, Tensor>(const Tensor&)>& to_kv_fn,
                            const std::function<Tensor(const Tensor&)>& to_out_fn) {
  KILN_CHECK(num_heads > 0, kOp, "num_heads must be > 0, got {}", num_heads);
  KILN_CHECK(x.defined() && x.dim() >= 2, kOp, "x must be (batch..., T, features), got {}",
             x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  const Tensor& ctx = context.defined() ? context : x;
  Tensor q = to_q_fn ? to_q_fn(x) : x;
  Tensor k, v;
  if (to_kv_fn) {
    std::tie(k, v) = to_kv_fn(ctx);
  } else {
    KILN_CHECK(ctx.dim() >= 2 && ctx.size(-1) % 2 == 0, kOp,
               "without to_kv_fn, keys and values are the two halves of the context's features, which must be even; "
               "got shape {}",
               shape_str(ctx.shape()));
    auto kv = chunk(ctx, 2, -1);
    k = kv[0];
    v = kv[1];
  }
  Tensor qh = heads(q, num_heads, "queries"), kh = heads(k, num_heads, "keys"), vh = heads(v, num_heads, "values");
  KILN_CHECK(qh.size(-1) == kh.size(-1), kOp,
             "queries {} and keys {} must have the same width per head (without to_q_fn, q = x: pass a context "
             "twice as wide as x)",
             shape_str(q.shape()), shape_str(k.shape()));
  SdpaOptions so;
  so.scale(scale);
  if (mask.defined()) {
    // (batch..., T, S) shared by the heads
    Shape logits = qh.shape();
    logits.back() = kh.size(-2);
    Shape no_heads = logits;
    no_heads.erase(no_heads.end() - 3);
    KILN_CHECK(mask.dtype() == kBool || mask.is_floating_point(), kOp,
               "mask must be bool (true = may attend) or floating point (added), got {}", dtype_name(mask.dtype()));
    KILN_CHECK(broadcastable(mask.shape(), no_heads), kOp,
               "mask of shape {} cannot be broadcast to (batch..., T, S) = {}", shape_str(mask.shape()),
               shape_str(no_heads));
    so.attn_mask(mask.dim() >= 2 ? unsqueeze(mask, -3) : mask);
  }
  Tensor o = kiln::scaled_dot_product_attention(qh, kh, vh, so).output;  // (batch..., H, T, Dv)
  Shape merged = o.shape();
  merged.erase(merged.end() - 3);
  merged.back() = num_heads * o.size(-1);
  Tensor y = reshape(o.transpose(-3, -2), merged);
  return to_out_fn ? to_out_fn(y) : y;
}

}  // namespace kiln::nn::functional
