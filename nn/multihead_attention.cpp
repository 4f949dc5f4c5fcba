#include "multihead_attention.hpp"

#include <cmath>
#include <limits>

#include "../autograd/ops_attention.hpp"

namespace kiln::nn {

namespace {

constexpr const char* kOp = "MultiHeadAttention";
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string shape_or_undefined(const Tensor& t) { return t.defined() ? shape_str(t.shape()) : "undefined"; }

bool broadcastable(const Shape& from, const Shape& to) {
  if (from.size() > to.size()) return false;
  for (std::size_t i = 1; i <= from.size(); ++i) {
    std::int64_t a = from[from.size() - i], b = to[to.size() - i];
    if (a != b && a != 1) return false;
  }
  return true;
}

// Linear's initializer from an MHA initializer (or the default) bound to the generator.
InitFn bind_init(const MhaInitFn& fn, Generator* gen, bool is_bias) {
  if (fn) return [fn, gen](Tensor t) { fn(t, gen); };
  if (is_bias) return [](Tensor t) { init::zeros_(t); };
  return [gen](Tensor t) { init::xavier_uniform_(t, 1.0, gen); };
}

// (batch..., L, n * d) -> (batch..., L, n, d)
Tensor split_last(const Tensor& t, std::int64_t n, std::int64_t d) {
  Shape s = t.shape();
  s.back() = n;
  s.push_back(d);
  return reshape(t, s);
}

}  // namespace

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_)
    : Module("MultiHeadAttention"), options(options_) {
  const auto& o = options;
  KILN_CHECK(o.embed_dim() > 0 && o.num_heads() > 0, kOp, "need embed_dim > 0 and num_heads > 0, got {} and {}",
             o.embed_dim(), o.num_heads());
  KILN_CHECK(num_kv_heads() > 0 && o.num_heads() % num_kv_heads() == 0, kOp,
             "num_heads={} must be a positive multiple of num_kv_heads={}", o.num_heads(), num_kv_heads());
  KILN_CHECK(o.head_dim().has_value() || o.embed_dim() % o.num_heads() == 0, kOp,
             "embed_dim={} is not divisible by num_heads={}; set head_dim explicitly", o.embed_dim(), o.num_heads());
  KILN_CHECK(head_dim() > 0 && v_head_dim() > 0, kOp, "head_dim and v_head_dim must be > 0, got {} and {}",
             head_dim(), v_head_dim());
  KILN_CHECK(kdim() > 0 && vdim() > 0 && out_dim() > 0, kOp, "kdim, vdim and out_dim must be > 0, got {}, {} and {}",
             kdim(), vdim(), out_dim());
  KILN_CHECK(o.dropout() >= 0.0 && o.dropout() <= 1.0, kOp, "dropout must be in [0, 1], got {}", o.dropout());
  KILN_CHECK(o.out_dropout() >= 0.0 && o.out_dropout() <= 1.0, kOp, "out_dropout must be in [0, 1], got {}",
             o.out_dropout());
  if (o.scale()) KILN_CHECK(std::isfinite(*o.scale()), kOp, "scale must be finite, got {}", *o.scale());
  if (o.qk_norm_eps()) KILN_CHECK(*o.qk_norm_eps() >= 0.0, kOp, "qk_norm_eps must be >= 0, got {}", *o.qk_norm_eps());
  reset();
}

std::int64_t MultiHeadAttentionImpl::head_dim() const {
  return options.head_dim().value_or(options.embed_dim() / options.num_heads());
}

void MultiHeadAttentionImpl::reset() {
  const auto& o = options;
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), Dk = head_dim(), Dv = v_head_dim();
  Generator* gen = o.generator();
  auto make = [&](std::int64_t in, std::int64_t out, std::optional<bool> b, const MhaInitFn& w_init) {
    return Linear(LinearOptions(in, out)
                      .bias(b.value_or(o.bias()))
                      .weight_init(bind_init(w_init, gen, false))
                      .bias_init(bind_init(o.bias_init(), gen, true)));
  };
  q_proj = register_module("q_proj", make(o.embed_dim(), H * Dk, o.q_bias(), o.kernel_init()));
  k_proj = register_module("k_proj", make(kdim(), Hkv * Dk, o.k_bias(), o.kernel_init()));
  v_proj = register_module("v_proj", make(vdim(), Hkv * Dv, o.v_bias(), o.kernel_init()));
  out_proj = register_module("out_proj", make(H * Dv, out_dim(), o.out_bias(), o.out_kernel_init()));
  q_norm = k_norm = nullptr;
  if (o.qk_norm() == QKNorm::LayerNorm) {
    double eps = o.qk_norm_eps().value_or(1e-5);
    q_norm = register_module("q_norm", LayerNorm(LayerNormOptions({Dk}).eps(eps))).ptr();
    k_norm = register_module("k_norm", LayerNorm(LayerNormOptions({Dk}).eps(eps))).ptr();
  } else if (o.qk_norm() == QKNorm::RMSNorm) {
    q_norm = register_module("q_norm", RMSNorm(RMSNormOptions({Dk}).eps(o.qk_norm_eps()))).ptr();
    k_norm = register_module("k_norm", RMSNorm(RMSNormOptions({Dk}).eps(o.qk_norm_eps()))).ptr();
  }
}

void MultiHeadAttentionImpl::reset_parameters() { Module::reset_parameters(); }

std::string MultiHeadAttentionImpl::extra_repr() const {
  const auto& o = options;
  std::string s = fmt::format("embed_dim={}, num_heads={}", o.embed_dim(), num_heads());
  if (num_kv_heads() != num_heads()) s += fmt::format(", num_kv_heads={}", num_kv_heads());
  s += fmt::format(", head_dim={}", head_dim());
  if (v_head_dim() != head_dim()) s += fmt::format(", v_head_dim={}", v_head_dim());
  if (kdim() != o.embed_dim()) s += fmt::format(", kdim={}", kdim());
  if (vdim() != o.embed_dim()) s += fmt::format(", vdim={}", vdim());
  if (out_dim() != o.embed_dim()) s += fmt::format(", out_dim={}", out_dim());
  if (o.dropout() > 0) s += fmt::format(", dropout={}", o.dropout());
  if (o.out_dropout() > 0) s += fmt::format(", out_dropout={}", o.out_dropout());
  if (o.broadcast_dropout()) s += ", broadcast_dropout=true";
  if (o.qk_norm() != QKNorm::None) s += o.qk_norm() == QKNorm::LayerNorm ? ", qk_norm=layer_norm" : ", qk_norm=rms_norm";
  return s;
}

Tensor MultiHeadAttentionImpl::forward(const Tensor& x, const MhaForward& f) { return attend(x, x, x, f).output; }
Tensor MultiHeadAttentionImpl::forward(const Tensor& q, const Tensor& kv, const MhaForward& f) {
  return forward_with_weights(q, kv, f).output;
}
Tensor MultiHeadAttentionImpl::forward(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  return attend(q, k, v, f).output;
}
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& x, const MhaForward& f) {
  return attend(x, x, x, f);
}
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& q, const Tensor& kv, const MhaForward& f) {
  KILN_CHECK(kdim() == vdim(), kOp,
             "one key/value input needs kdim == vdim, got kdim={} and vdim={}; pass k and v separately", kdim(),
             vdim());
  return attend(q, kv, kv, f);
}
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const MhaForward& f) {
  return attend(q, k, v, f);
}

Tensor MultiHeadAttentionImpl::norm_heads(const std::shared_ptr<Module>& norm, const Tensor& x) const {
  if (!norm) return x;
  if (auto* ln = dynamic_cast<LayerNormImpl*>(norm.get())) return ln->forward(x);
  return static_cast<RMSNormImpl*>(norm.get())->forward(x);
}

MhaResult MultiHeadAttentionImpl::attend(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  const std::int64_t E = options.embed_dim(), H = num_heads(), Hkv = num_kv_heads(), Dk = head_dim(),
                     Dv = v_head_dim();
  KILN_CHECK(q.defined() && k.defined() && v.defined(), kOp, "inputs must be defined, got q {}, k {}, v {}",
             shape_or_undefined(q), shape_or_undefined(k), shape_or_undefined(v));
  KILN_CHECK(q.dim() >= 2 && q.size(-1) == E, kOp, "query must be (batch..., T, embed_dim={}), got shape {}", E,
             shape_str(q.shape()));
  KILN_CHECK(k.dim() == q.dim() && k.size(-1) == kdim(), kOp,
             "key must be (batch..., S, kdim={}) with the query's {} dims, got shape {} (query {})", kdim(), q.dim(),
             shape_str(k.shape()), shape_str(q.shape()));
  KILN_CHECK(v.dim() == q.dim() && v.size(-1) == vdim(), kOp,
             "value must be (batch..., S, vdim={}) with the query's {} dims, got shape {} (query {})", vdim(),
             q.dim(), shape_str(v.shape()), shape_str(q.shape()));
  const Shape batch(q.shape().begin(), q.shape().end() - 2);
  KILN_CHECK(Shape(k.shape().begin(), k.shape().end() - 2) == batch &&
                 Shape(v.shape().begin(), v.shape().end() - 2) == batch,
             kOp, "query, key and value must share the batch dims, got shapes {}, {} and {}", shape_str(q.shape()),
             shape_str(k.shape()), shape_str(v.shape()));
  const std::int64_t T = q.size(-2), S = k.size(-2);
  KILN_CHECK(v.size(-2) == S, kOp, "key and value must have the same length, got shapes {} and {} ({} != {})",
             shape_str(k.shape()), shape_str(v.shape()), S, v.size(-2));
  const Device dev = q.device();
  Shape logits = batch;
  logits.insert(logits.end(), {H, T, S});

  // ---- masks: one keep/additive mask for the core, and the keys no query may attend to
  Tensor mask = f.attn_mask();
  Tensor live;  // bool, broadcastable to (batch..., S): keys some query may attend to
  if (mask.defined()) {
    KILN_CHECK(mask.dtype() == kBool || mask.is_floating_point(), kOp,
               "attn_mask must be bool (true = may attend) or floating point (added to the logits), got {}",
               dtype_name(mask.dtype()));
    KILN_CHECK(broadcastable(mask.shape(), logits), kOp,
               "attn_mask of shape {} cannot be broadcast to (batch..., H, T, S) = {}", shape_str(mask.shape()),
               shape_str(logits));
    Tensor km = mask.dtype() == kBool ? mask : mask != Scalar(-kInf);
    if (km.dim() >= 3) live = any(km, {-3, -2});
    else if (km.dim() == 2) live = any(km, {-2});
    else live = km;
  }
  if (const Tensor& kp = f.key_padding(); kp.defined()) {
    Tensor keep;
    if (kp.dtype() == kInt64) {
      KILN_CHECK(kp.shape() == batch, kOp, "key_padding lengths must have the batch shape {}, got shape {}",
                 shape_str(batch), shape_str(kp.shape()));
      keep = lt(arange(0, S, 1, TensorOptions(kInt64).device(dev)), unsqueeze(kp, -1));
    } else {
      Shape want = batch;
      want.push_back(S);
      KILN_CHECK(kp.dtype() == kBool && kp.shape() == want, kOp,
                 "key_padding must be int64 lengths of shape {} or a bool keep-mask of shape {}, got {} of shape {}",
                 shape_str(batch), shape_str(want), dtype_name(kp.dtype()), shape_str(kp.shape()));
      keep = kp;
    }
    live = live.defined() ? logical_and(live, keep) : keep;
    Tensor k4 = unsqueeze(unsqueeze(keep, -2), -2);  // (batch..., 1, 1, S)
    if (!mask.defined()) mask = k4;
    else if (mask.dtype() == kBool) mask = logical_and(mask, k4);
    else mask = where(k4, mask, Scalar(-kInf));
  }

  // Keys nobody attends to become zeros before the projections: NaN/Inf there must not reach
  // the parameters' gradients through the projection's backward (0 * NaN).
  Tensor kin = k, vin = v;
  if (live.defined()) {
    Tensor lv = unsqueeze(live, -1);
    kin = where(lv, k, Scalar(0.0));
    vin = v.is_same(k) ? kin : where(lv, v, Scalar(0.0));
  }

  // ---- projections and heads: (batch..., L, n * d) -> (batch..., n, L, d)
  Tensor qh = norm_heads(q_norm, split_last(q_proj(q), H, Dk)).transpose(-3, -2);
  Tensor kh = norm_heads(k_norm, split_last(k_proj(kin), Hkv, Dk)).transpose(-3, -2);
  Tensor vh = split_last(v_proj(vin), Hkv, Dv).transpose(-3, -2);

  const double p = options.dropout();
  const bool train = is_training();
  const bool bcast = options.broadcast_dropout() && train && p > 0.0;
  SdpaOptions so;
  so.attn_mask(mask)
      .is_causal(f.is_causal())
      .scale(options.scale())
      .dropout_p(bcast ? 0.0 : p)
      .training(train)
      .generator(options.generator())
      .need_weights(f.need_weights() || bcast);
  SdpaResult r = scaled_dot_product_attention(qh, kh, vh, so);
  Tensor o = r.output;  // (batch..., H, T, Dv)
  if (bcast) o = broadcast_dropout_attention(r.weights, vh);

  Shape merged = batch;
  merged.insert(merged.end(), {T, H * Dv});
  Tensor y = out_proj(reshape(o.transpose(-3, -2), merged));
  y = dropout(y, options.out_dropout(), train, options.generator());

  MhaResult res{y, Tensor()};
  if (f.need_weights()) res.weights = f.average_attn_weights() ? mean(r.weights, {-3}) : r.weights;
  return res;
}

// One (T, S) dropout mask for every batch element and head, applied to the core's
// probabilities P (batch..., H, T, S); v is (batch..., Hkv, S, Dv).
Tensor MultiHeadAttentionImpl::broadcast_dropout_attention(const Tensor& P, const Tensor& v) const {
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), G = H / Hkv;
  const std::int64_t T = P.size(-2), S = P.size(-1), Dv = v.size(-1);
  const DType dt = P.dtype();
  Tensor keep = dropout(ones({T, S}, TensorOptions(dt).device(P.device())), options.dropout(), true,
                        options.generator());
  Shape grouped(P.shape().begin(), P.shape().end() - 3);  // batch
  Shape out = grouped;
  grouped.insert(grouped.end(), {Hkv, G * T, S});
  out.insert(out.end(), {H, T, Dv});
  // kv head j serves query heads j*G .. j*G+G-1: group them as rows of one matmul.
  Tensor vz = where(isfinite(v), v, Scalar(0.0));
  Tensor o = reshape(matmul(reshape(mul(P, keep), grouped), vz), out);
  // A non-finite value that a row attends to makes that row NaN (as the core does), without
  // letting NaN * 0 leak into the other rows.
  Tensor vbad = kiln::to(any(logical_not(isfinite(v)), {-1}, true), dt);                 // (..., Hkv, S, 1)
  Tensor att = kiln::to(reshape(P, grouped) > Scalar(0.0), dt);                        // (..., Hkv, G*T, S)
  Shape rows = out;
  rows.back() = 1;
  Tensor bad = reshape(matmul(att, vbad) > Scalar(0.0), rows);                 // (..., H, T, 1)
  return where(bad, Scalar(std::numeric_limits<double>::quiet_NaN()), o);
}

}  // namespace kiln::nn
