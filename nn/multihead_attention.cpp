#include "multihead_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <fmt/ranges.h>

#include "../autograd/autocast.hpp"
#include "../autograd/ops_attention.hpp"

namespace kiln::nn {

namespace {

constexpr const char* kOp = "MultiHeadAttention";
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string shape_or_undefined(const Tensor& t) { return t.defined() ? shape_str(t.shape()) : "undefined"; }

// MultiHeadAttention's default initializers (Keras/Flax): Xavier-uniform kernels, zero biases.
void xavier_kernel(Tensor t, Generator* gen) { init::xavier_uniform_(std::move(t), 1.0, gen); }
void zero_bias(Tensor t, Generator*) { init::zeros_(std::move(t)); }

// (batch..., L, n * d) -> (batch..., L, n, d)
Tensor split_last(const Tensor& t, std::int64_t n, std::int64_t d) {
  Shape s = t.shape();
  s.back() = n;
  s.push_back(d);
  return reshape(t, s);
}

Shape cat_shape(Shape s, std::initializer_list<std::int64_t> tail) {
  s.insert(s.end(), tail);
  return s;
}

// kiln's bottom-right causal keep-mask (T, S): query t may attend key s <= S - T + t.
Tensor causal_keep(std::int64_t T, std::int64_t S, Device dev) {
  TensorOptions io = TensorOptions(kInt64).device(dev);
  return le(unsqueeze(arange(0, S, 1, io), 0), unsqueeze(arange(S - T, S, 1, io), 1));
}

// mask (keep or additive, or undefined) restricted to where the bool `keep` is true.
Tensor and_keep(const Tensor& mask, const Tensor& keep) {
  if (!mask.defined()) return keep;
  if (mask.dtype() == kBool) return logical_and(mask, keep);
  return where(keep, mask, Scalar(-kInf));
}

// The mask (broadcastable to (..., S)) with n always-attendable columns appended.
Tensor pad_columns(Tensor mask, std::int64_t S, std::int64_t n) {
  if (mask.dim() == 0) mask = unsqueeze(mask, 0);
  if (mask.size(-1) != S) {
    Shape full = mask.shape();
    full.back() = S;
    mask = expand(mask, full);
  }
  Shape ps = mask.shape();
  ps.back() = n;
  Tensor pad = mask.dtype() == kBool ? ones(ps, TensorOptions(kBool).device(mask.device()))
                                     : zeros(ps, TensorOptions(mask.dtype()).device(mask.device()));
  return cat({mask, pad}, -1);
}

// Explicit positions: int64 or floating, (L,) or (batch..., L); as (L,) or (batch..., 1, L) so
// they broadcast over the heads of (batch..., heads, L, D).
Tensor head_positions(const Tensor& p, const Shape& batch, std::int64_t L, const char* what) {
  KILN_CHECK(p.dtype() == kInt64 || p.is_floating_point(), kOp, "{} must be int64 or floating point, got {}", what,
             dtype_name(p.dtype()));
  const Shape per_batch = cat_shape(batch, {L});
  KILN_CHECK(p.shape() == Shape{L} || p.shape() == per_batch, kOp, "{} must have shape ({},) or {}, got {}", what, L,
             shape_str(per_batch), shape_str(p.shape()));
  return p.dim() > 1 ? unsqueeze(p, -2) : p;
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
  KILN_CHECK(head_dim() > 0 && v_head_dim() > 0, kOp, "head_dim and v_head_dim must be > 0, got {} and {}", head_dim(),
             v_head_dim());
  KILN_CHECK(kdim() > 0 && vdim() > 0 && out_dim() > 0, kOp, "kdim, vdim and out_dim must be > 0, got {}, {} and {}",
             kdim(), vdim(), out_dim());
  KILN_CHECK(o.dropout() >= 0.0 && o.dropout() <= 1.0, kOp, "dropout must be in [0, 1], got {}", o.dropout());
  KILN_CHECK(o.out_dropout() >= 0.0 && o.out_dropout() <= 1.0, kOp, "out_dropout must be in [0, 1], got {}",
             o.out_dropout());
  if (o.scale()) KILN_CHECK(std::isfinite(*o.scale()), kOp, "scale must be finite, got {}", *o.scale());
  if (o.qk_norm_eps()) KILN_CHECK(*o.qk_norm_eps() >= 0.0, kOp, "qk_norm_eps must be >= 0, got {}", *o.qk_norm_eps());
  KILN_CHECK(!o.reslink() || out_dim() == o.embed_dim(), kOp,
             "reslink adds the query to the output, which needs out_dim == embed_dim, got out_dim={} and embed_dim={}",
             out_dim(), o.embed_dim());
  KILN_CHECK(!(o.rotary() && o.position_fn()), kOp, "set either rotary or position_fn, not both");
  if (o.rotary())
    KILN_CHECK(o.rotary()->dim() <= head_dim(), kOp, "rotary dim={} exceeds head_dim={}", o.rotary()->dim(),
               head_dim());
  KILN_CHECK(!((o.add_bias_kv() || o.add_zero_attn()) &&
               (o.window_left() >= 0 || o.window_right() >= 0 || o.alibi() || o.alibi_slopes().defined())),
             kOp,
             "add_bias_kv / add_zero_attn cannot be combined with window or ALiBi (the extra keys have no position)");
  if (const Tensor& sl = o.alibi_slopes(); sl.defined())
    KILN_CHECK(sl.is_floating_point() && sl.shape() == Shape{o.num_heads()}, kOp,
               "alibi_slopes must be floating point of shape (num_heads,) = ({},), got {} of shape {}", o.num_heads(),
               dtype_name(sl.dtype()), shape_str(sl.shape()));
  {
    auto axes = o.attention_axes();
    std::sort(axes.begin(), axes.end());
    KILN_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(), kOp,
               "attention_axes must not repeat an axis, got {}", fmt::join(o.attention_axes(), ", "));
  }
  reset();
}

std::int64_t MultiHeadAttentionImpl::head_dim() const {
  return options.head_dim().value_or(options.embed_dim() / options.num_heads());
}

void MultiHeadAttentionImpl::reset() {
  const auto& o = options;
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), Dk = head_dim(), Dv = v_head_dim();
  Generator* gen = o.generator();
  auto make = [&](std::int64_t in, std::int64_t out, std::optional<bool> b, const InitFn& w_init) {
    return Linear(LinearOptions(in, out)
                      .bias(b.value_or(o.bias()))
                      .weight_init(w_init ? w_init : InitFn(xavier_kernel))
                      .bias_init(o.bias_init() ? o.bias_init() : InitFn(zero_bias))
                      .generator(gen));
  };
  q_proj = register_module("q_proj", make(o.embed_dim(), H * Dk, o.q_bias(), o.kernel_init()));
  k_proj = register_module("k_proj", make(kdim(), Hkv * Dk, o.k_bias(), o.kernel_init()));
  v_proj = register_module("v_proj", make(vdim(), Hkv * Dv, o.v_bias(), o.kernel_init()));
  out_proj = register_module("out_proj", make(H * Dv, out_dim(), o.out_bias(), o.out_kernel_init()));
  q_norm = k_norm = nullptr;
  if (o.qk_norm() != Norm::None) {
    q_norm = register_module("q_norm", make_norm(o.qk_norm(), Dk, o.qk_norm_eps()));
    k_norm = register_module("k_norm", make_norm(o.qk_norm(), Dk, o.qk_norm_eps()));
  }
  bias_k = bias_v = Tensor();
  if (o.add_bias_kv()) {
    bias_k = register_parameter("bias_k", empty({1, 1, Hkv * Dk}));
    bias_v = register_parameter("bias_v", empty({1, 1, Hkv * Dv}));
    init_extra_parameters();
  }
  rotary = nullptr;
  if (o.rotary()) rotary = register_module("rotary", RotaryEmbedding(*o.rotary()));
  alibi_slopes = Tensor();
  if (o.alibi_slopes().defined())
    alibi_slopes = register_buffer("alibi_slopes", o.alibi_slopes().detach().clone(), /*persistent=*/false);
  else if (o.alibi()) alibi_slopes = register_buffer("alibi_slopes", kiln::alibi_slopes(H), /*persistent=*/false);
  sinks = Tensor();
  if (o.attention_sinks()) {
    sinks = register_parameter("sinks", empty({H}));
    init_extra_parameters();
  }
}

void MultiHeadAttentionImpl::init_extra_parameters() {
  NoGradGuard ng;
  if (bias_k.defined()) {
    init::xavier_normal_(bias_k, 1.0, options.generator());
    init::xavier_normal_(bias_v, 1.0, options.generator());
  }
  if (sinks.defined()) init::zeros_(sinks);
}

void MultiHeadAttentionImpl::reset_parameters() {
  Module::reset_parameters();
  init_extra_parameters();
}

KVCache MultiHeadAttentionImpl::make_kv_cache(const Shape& batch, std::int64_t max_length) const {
  const Tensor& w = k_proj->weight;
  // The dtype the key projection produces: under autocast, the autocast dtype.
  return KVCache(batch, num_kv_heads(), max_length, head_dim(), v_head_dim(),
                 TensorOptions(autocast_input_dtype(w, AutocastPolicy::LowPrecision)).device(w.device()));
}

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
  if (o.qk_norm() != Norm::None) s += fmt::format(", qk_norm={}", to_string(o.qk_norm()));
  if (!o.attention_axes().empty()) s += fmt::format(", attention_axes=({})", fmt::join(o.attention_axes(), ", "));
  if (o.add_bias_kv()) s += ", add_bias_kv=true";
  if (o.add_zero_attn()) s += ", add_zero_attn=true";
  if (o.reslink()) s += ", reslink=true";
  if (o.window_left() >= 0 || o.window_right() >= 0)
    s += fmt::format(", window=({}, {})", o.window_left(), o.window_right());
  if (alibi_slopes.defined()) s += ", alibi=true";
  if (sinks.defined()) s += ", attention_sinks=true";
  return s;
}

Tensor MultiHeadAttentionImpl::forward(const Tensor& x, const MhaForward& f) { return run(x, x, x, f).output; }
Tensor MultiHeadAttentionImpl::forward(const Tensor& q, const Tensor& kv, const MhaForward& f) {
  return forward_with_weights(q, kv, f).output;
}
Tensor MultiHeadAttentionImpl::forward(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  return run(q, k, v, f).output;
}
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& x, const MhaForward& f) { return run(x, x, x, f); }
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& q, const Tensor& kv, const MhaForward& f) {
  KILN_CHECK(kdim() == vdim(), kOp,
             "one key/value input needs kdim == vdim, got kdim={} and vdim={}; pass k and v separately", kdim(),
             vdim());
  return run(q, kv, kv, f);
}
MhaResult MultiHeadAttentionImpl::forward_with_weights(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const MhaForward& f) {
  return run(q, k, v, f);
}

MhaResult MultiHeadAttentionImpl::run(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  return options.attention_axes().empty() ? attend(q, k, v, f) : attend_axes(q, k, v, f);
}

// Keras attention_axes: move the non-attended dims to the front as batch dims, flatten the
// attended ones into one sequence dim, attend, and undo both on the output.
MhaResult MultiHeadAttentionImpl::attend_axes(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  KILN_CHECK(q.defined() && k.defined() && v.defined(), kOp, "inputs must be defined, got q {}, k {}, v {}",
             shape_or_undefined(q), shape_or_undefined(k), shape_or_undefined(v));
  check_floating_input(kOp, q, "query");
  check_floating_input(kOp, k, "key");
  check_floating_input(kOp, v, "value");
  KILN_CHECK(f.cache() == nullptr, kOp, "a KV cache cannot be combined with attention_axes");
  const std::int64_t n = q.dim();
  std::vector<std::int64_t> axes;
  for (std::int64_t a : options.attention_axes()) {
    const std::int64_t d = a < 0 ? a + n : a;
    KILN_CHECK(d >= 0 && d < n - 1, kOp,
               "attention_axes {} out of range for a query of shape {}: axes must be in [{}, {}] (not the feature dim)",
               a, shape_str(q.shape()), -n, n - 2);
    axes.push_back(d);
  }
  std::sort(axes.begin(), axes.end());
  KILN_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(), kOp,
             "attention_axes ({}) name the same dim twice for a query of shape {}",
             fmt::join(options.attention_axes(), ", "), shape_str(q.shape()));
  std::vector<std::int64_t> perm;
  for (std::int64_t d = 0; d < n - 1; ++d)
    if (!std::binary_search(axes.begin(), axes.end(), d)) perm.push_back(d);
  const std::size_t nb = perm.size();
  perm.insert(perm.end(), axes.begin(), axes.end());
  perm.push_back(n - 1);

  auto flat = [&](const Tensor& x, const char* what) {
    KILN_CHECK(x.dim() == n, kOp, "with attention_axes the {} must have the query's {} dims, got shape {} (query {})",
               what, n, shape_str(x.shape()), shape_str(q.shape()));
    Shape s;
    for (std::size_t i = 0; i < nb; ++i) {
      KILN_CHECK(x.size(perm[i]) == q.size(perm[i]), kOp,
                 "with attention_axes ({}) the {} must share the query's non-attended dims, got shape {} (query {})",
                 fmt::join(options.attention_axes(), ", "), what, shape_str(x.shape()), shape_str(q.shape()));
      s.push_back(x.size(perm[i]));
    }
    std::int64_t L = 1;
    for (std::int64_t d : axes) L *= x.size(d);
    s.push_back(L);
    s.push_back(x.size(-1));
    return reshape(permute(x, perm), s);
  };
  Tensor qf = flat(q, "query");
  Tensor kf = k.is_same(q) ? qf : flat(k, "key");
  Tensor vf = v.is_same(k) ? kf : v.is_same(q) ? qf : flat(v, "value");
  MhaResult r = attend(qf, kf, vf, f);

  Shape us(r.output.shape().begin(), r.output.shape().begin() + static_cast<std::ptrdiff_t>(nb));
  for (std::int64_t d : axes) us.push_back(q.size(d));
  us.push_back(r.output.size(-1));
  std::vector<std::int64_t> inv(perm.size());
  for (std::size_t i = 0; i < perm.size(); ++i) inv[static_cast<std::size_t>(perm[i])] = static_cast<std::int64_t>(i);
  r.output = permute(reshape(r.output, us), inv);
  return r;
}

Tensor MultiHeadAttentionImpl::norm_heads(const std::shared_ptr<Module>& norm, const Tensor& x) const {
  if (!norm) return x;
  if (auto* ln = dynamic_cast<LayerNormImpl*>(norm.get())) return ln->forward(x);
  return static_cast<RMSNormImpl*>(norm.get())->forward(x);
}

// What one attend() call carries from stage to stage. Shapes: q (batch..., T, E), k and v
// (batch..., S_new, kdim / vdim); S = past + S_new keys once a KV cache is counted.
struct MultiHeadAttentionImpl::Call {
  const Tensor &q, &k, &v;
  const MhaForward& f;
  Shape batch;
  std::int64_t T = 0, S_new = 0, past = 0, S = 0;
  Device dev;
  Tensor mask;  // keep (bool) or additive mask for the core, broadcastable to (batch..., H, T, S)
  Tensor live;  // bool, broadcastable to (batch..., S): keys some query may attend to
  bool causal = false;
  Tensor qh, kh, vh;  // (batch..., H, T, Dk), (batch..., Hkv, S, Dk), (batch..., Hkv, S, Dv)
};

MhaResult MultiHeadAttentionImpl::attend(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f) {
  Call c{q, k, v, f, check_inputs(q, k, v), q.size(-2), k.size(-2), 0, 0, q.device(), {}, {}, false, {}, {}, {}};
  c.causal = f.is_causal();
  open_cache(c);
  build_mask(c);
  add_key_padding(c);
  project_heads(c);
  apply_positions(c);
  if (KVCache* cache = f.cache()) std::tie(c.kh, c.vh) = cache->append(c.kh, c.vh);
  append_extra_keys(c);
  return attend_core(c);
}

// The batch dims q, k and v share, after checking their shapes.
Shape MultiHeadAttentionImpl::check_inputs(const Tensor& q, const Tensor& k, const Tensor& v) const {
  const std::int64_t E = options.embed_dim();
  KILN_CHECK(q.defined() && k.defined() && v.defined(), kOp, "inputs must be defined, got q {}, k {}, v {}",
             shape_or_undefined(q), shape_or_undefined(k), shape_or_undefined(v));
  check_floating_input(kOp, q, "query");
  check_floating_input(kOp, k, "key");
  check_floating_input(kOp, v, "value");
  KILN_CHECK(q.dim() >= 2 && q.size(-1) == E, kOp, "query must be (batch..., T, embed_dim={}), got shape {}", E,
             shape_str(q.shape()));
  KILN_CHECK(k.dim() == q.dim() && k.size(-1) == kdim(), kOp,
             "key must be (batch..., S, kdim={}) with the query's {} dims, got shape {} (query {})", kdim(), q.dim(),
             shape_str(k.shape()), shape_str(q.shape()));
  KILN_CHECK(v.dim() == q.dim() && v.size(-1) == vdim(), kOp,
             "value must be (batch..., S, vdim={}) with the query's {} dims, got shape {} (query {})", vdim(), q.dim(),
             shape_str(v.shape()), shape_str(q.shape()));
  Shape batch(q.shape().begin(), q.shape().end() - 2);
  KILN_CHECK(Shape(k.shape().begin(), k.shape().end() - 2) == batch &&
                 Shape(v.shape().begin(), v.shape().end() - 2) == batch,
             kOp, "query, key and value must share the batch dims, got shapes {}, {} and {}", shape_str(q.shape()),
             shape_str(k.shape()), shape_str(v.shape()));
  KILN_CHECK(v.size(-2) == k.size(-2), kOp, "key and value must have the same length, got shapes {} and {} ({} != {})",
             shape_str(k.shape()), shape_str(v.shape()), k.size(-2), v.size(-2));
  return batch;
}

// The KV cache is checked before any work, so an overflow leaves it untouched; S counts the
// cached keys too (before bias_kv / zero_attn).
void MultiHeadAttentionImpl::open_cache(Call& c) const {
  if (KVCache* cache = c.f.cache()) {
    const std::int64_t Hkv = num_kv_heads(), Dk = head_dim(), Dv = v_head_dim();
    KILN_CHECK(cache->defined(), kOp, "the KV cache is empty (default-constructed); use make_kv_cache");
    KILN_CHECK(cache->batch_shape() == c.batch && cache->num_kv_heads() == Hkv && cache->head_dim() == Dk &&
                   cache->v_head_dim() == Dv,
               kOp,
               "the KV cache holds batch {} with num_kv_heads={}, head_dim={}, v_head_dim={}, but this call needs "
               "batch {} with {}, {}, {}",
               shape_str(cache->batch_shape()), cache->num_kv_heads(), cache->head_dim(), cache->v_head_dim(),
               shape_str(c.batch), Hkv, Dk, Dv);
    const DType projected = autocast_input_dtype(c.q, AutocastPolicy::LowPrecision);
    KILN_CHECK(cache->dtype() == projected, kOp, "the KV cache is {} but the projected query is {}{}",
               dtype_name(cache->dtype()), dtype_name(projected),
               is_autocast_enabled(c.q.device().type) ? " (under autocast: make the cache inside the autocast region)"
                                                      : "");
    cache->check_append(c.S_new);
    c.past = cache->length();
  }
  c.S = c.past + c.S_new;
}

// attn_mask and attn_bias as one keep/additive mask for the core, and the keys it leaves live.
void MultiHeadAttentionImpl::build_mask(Call& c) const {
  const Shape logits = cat_shape(c.batch, {num_heads(), c.T, c.S});
  Tensor mask = c.f.attn_mask();
  if (mask.defined()) {
    KILN_CHECK(mask.dtype() == kBool || mask.is_floating_point(), kOp,
               "attn_mask must be bool (true = may attend) or floating point (added to the logits), got {}",
               dtype_name(mask.dtype()));
    KILN_CHECK(broadcastable(mask.shape(), logits), kOp,
               "attn_mask of shape {} cannot be broadcast to (batch..., H, T, S) = {}", shape_str(mask.shape()),
               shape_str(logits));
  }
  if (const Tensor& bias = c.f.attn_bias(); bias.defined()) {
    KILN_CHECK(bias.is_floating_point(), kOp, "attn_bias must be floating point, got {}", dtype_name(bias.dtype()));
    KILN_CHECK(broadcastable(bias.shape(), logits), kOp,
               "attn_bias of shape {} cannot be broadcast to (batch..., H, T, S) = {}", shape_str(bias.shape()),
               shape_str(logits));
    if (!mask.defined()) mask = bias;
    else if (mask.dtype() == kBool) mask = where(mask, bias, Scalar(-kInf));
    else mask = mask + bias;
  }
  if (mask.defined()) {
    Tensor km = mask.dtype() == kBool ? mask : mask != Scalar(-kInf);
    if (km.dim() >= 3) c.live = any(km, {-3, -2});
    else if (km.dim() == 2) c.live = any(km, {-2});
    else c.live = km;
  }
  c.mask = mask;
}

// key_padding (lengths or a keep-mask (batch..., S)) joins the mask and the live keys.
void MultiHeadAttentionImpl::add_key_padding(Call& c) const {
  const Tensor& kp = c.f.key_padding();
  if (!kp.defined()) return;
  Tensor keep;
  if (kp.dtype() == kInt64) {
    KILN_CHECK(kp.shape() == c.batch, kOp, "key_padding lengths must have the batch shape {}, got shape {}",
               shape_str(c.batch), shape_str(kp.shape()));
    keep = lt(arange(0, c.S, 1, TensorOptions(kInt64).device(c.dev)), unsqueeze(kp, -1));
  } else {
    const Shape want = cat_shape(c.batch, {c.S});
    KILN_CHECK(kp.dtype() == kBool && kp.shape() == want, kOp,
               "key_padding must be int64 lengths of shape {} or a bool keep-mask of shape {}, got {} of shape {}",
               shape_str(c.batch), shape_str(want), dtype_name(kp.dtype()), shape_str(kp.shape()));
    keep = kp;
  }
  c.live = c.live.defined() ? logical_and(c.live, keep) : keep;
  c.mask = and_keep(c.mask, unsqueeze(unsqueeze(keep, -2), -2));  // (batch..., 1, 1, S)
}

// Projections and heads: (batch..., L, n * d) -> (batch..., n, L, d), with qk_norm. Keys nobody
// attends to become zeros before the projections: NaN/Inf there must not reach the parameters'
// gradients through the projection's backward (0 * NaN). With a cache only this call's keys
// are projected.
void MultiHeadAttentionImpl::project_heads(Call& c) {
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), Dk = head_dim(), Dv = v_head_dim();
  Tensor kin = c.k, vin = c.v;
  if (c.live.defined()) {
    Tensor lv = c.live;
    if (c.past > 0 && lv.dim() > 0 && lv.size(-1) == c.S) lv = lv.narrow(-1, c.past, c.S_new);
    lv = unsqueeze(lv, -1);
    kin = where(lv, c.k, Scalar(0.0));
    vin = c.v.is_same(c.k) ? kin : where(lv, c.v, Scalar(0.0));
  }
  Tensor qp = options.to_q_fn() ? options.to_q_fn()(c.q, q_proj) : q_proj(c.q);  // (batch..., T, H * Dk)
  Tensor kp, vp;                                                                 // (batch..., S_new, Hkv * D)
  if (options.to_kv_fn()) {
    std::tie(kp, vp) = options.to_kv_fn()(kin, vin, k_proj, v_proj);
  } else {
    kp = k_proj(kin);
    vp = v_proj(vin);
  }
  if (options.to_q_fn() || options.to_kv_fn()) {
    KILN_CHECK(qp.defined() && qp.shape() == cat_shape(c.batch, {c.T, H * Dk}), kOp,
               "to_q_fn must return (batch..., T, num_heads * head_dim) = {}, got {}",
               shape_str(cat_shape(c.batch, {c.T, H * Dk})), shape_or_undefined(qp));
    KILN_CHECK(kp.defined() && kp.shape() == cat_shape(c.batch, {c.S_new, Hkv * Dk}) && vp.defined() &&
                   vp.shape() == cat_shape(c.batch, {c.S_new, Hkv * Dv}),
               kOp, "to_kv_fn must return keys {} and values {}, got {} and {}",
               shape_str(cat_shape(c.batch, {c.S_new, Hkv * Dk})), shape_str(cat_shape(c.batch, {c.S_new, Hkv * Dv})),
               shape_or_undefined(kp), shape_or_undefined(vp));
  }
  c.qh = norm_heads(q_norm, split_last(qp, H, Dk)).transpose(-3, -2);
  c.kh = norm_heads(k_norm, split_last(kp, Hkv, Dk)).transpose(-3, -2);
  c.vh = split_last(vp, Hkv, Dv).transpose(-3, -2);
}

// Positions (rotary or a custom hook) on qh and kh, before the keys enter the cache.
void MultiHeadAttentionImpl::apply_positions(Call& c) {
  const MhaForward& f = c.f;
  const bool has_pos = !rotary.is_empty() || static_cast<bool>(options.position_fn());
  KILN_CHECK(has_pos || (!f.positions().defined() && !f.key_positions().defined()), kOp,
             "positions were given but the module has no rotary or position_fn to use them");
  if (!has_pos) return;
  const TensorOptions io = TensorOptions(kInt64).device(c.dev);
  Tensor qpos = f.positions().defined() ? head_positions(f.positions(), c.batch, c.T, "positions")
                                        : arange(c.past, c.past + c.T, 1, io);
  Tensor kpos = f.key_positions().defined() ? head_positions(f.key_positions(), c.batch, c.S_new, "key_positions")
                : f.positions().defined() && c.S_new == c.T ? qpos
                                                            : arange(c.past, c.past + c.S_new, 1, io);
  if (!rotary.is_empty()) {
    c.qh = rotary->forward(c.qh, qpos);
    c.kh = rotary->forward(c.kh, kpos);
    return;
  }
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), Dk = head_dim();
  c.qh = options.position_fn()(c.qh, qpos, false);
  c.kh = options.position_fn()(c.kh, kpos, true);
  KILN_CHECK(c.qh.defined() && c.kh.defined() && c.qh.shape() == cat_shape(c.batch, {H, c.T, Dk}) &&
                 c.kh.shape() == cat_shape(c.batch, {Hkv, c.S_new, Dk}),
             kOp, "position_fn must keep the shapes of q {} and k {}, got {} and {}",
             shape_str(cat_shape(c.batch, {H, c.T, Dk})), shape_str(cat_shape(c.batch, {Hkv, c.S_new, Dk})),
             shape_or_undefined(c.qh), shape_or_undefined(c.kh));
}

// PyTorch's add_bias_kv / add_zero_attn: extra key/value positions after the S real ones.
void MultiHeadAttentionImpl::append_extra_keys(Call& c) const {
  const std::int64_t extra = (options.add_bias_kv() ? 1 : 0) + (options.add_zero_attn() ? 1 : 0);
  if (extra == 0) return;
  const std::int64_t Hkv = num_kv_heads(), Dk = head_dim(), Dv = v_head_dim();
  const Shape col_k = cat_shape(c.batch, {Hkv, 1, Dk}), col_v = cat_shape(c.batch, {Hkv, 1, Dv});
  std::vector<Tensor> ks{c.kh}, vs{c.vh};
  if (options.add_bias_kv()) {
    const Shape ones_b(c.batch.size(), 1);
    ks.push_back(expand(reshape(bias_k, cat_shape(ones_b, {Hkv, 1, Dk})), col_k));
    vs.push_back(expand(reshape(bias_v, cat_shape(ones_b, {Hkv, 1, Dv})), col_v));
  }
  if (options.add_zero_attn()) {
    ks.push_back(zeros(col_k, TensorOptions(c.kh.dtype()).device(c.dev)));
    vs.push_back(zeros(col_v, TensorOptions(c.vh.dtype()).device(c.dev)));
  }
  c.kh = cat(ks, -2);  // (batch..., Hkv, S + extra, Dk)
  c.vh = cat(vs, -2);
  // causal concerns the real keys only: made explicit, then every mask gets true columns
  if (c.causal) {
    c.mask = and_keep(c.mask, causal_keep(c.T, c.S, c.dev));
    c.causal = false;
  }
  if (c.mask.defined()) c.mask = pad_columns(c.mask, c.S, extra);
}

// The attention core on the heads, then heads merged, out_proj, out_dropout and reslink.
MhaResult MultiHeadAttentionImpl::attend_core(Call& c) {
  const std::int64_t H = num_heads(), Dv = v_head_dim();
  const double p = options.dropout();
  const bool train = is_training();
  const bool bcast = options.broadcast_dropout() && train && p > 0.0;
  SdpaOptions so;
  so.attn_mask(c.mask)
      .is_causal(c.causal)
      .scale(options.scale())
      .dropout_p(bcast ? 0.0 : p)
      .training(train)
      .generator(options.generator())
      .need_weights(c.f.need_weights() || bcast);
  if (options.window_left() >= 0 || options.window_right() >= 0)
    so.window_left(options.window_left()).window_right(options.window_right());
  if (alibi_slopes.defined()) so.alibi_slopes(alibi_slopes);
  if (sinks.defined()) so.sinks(sinks);
  SdpaResult r = options.attention_fn() ? options.attention_fn()(c.qh, c.kh, c.vh, so)
                                        : scaled_dot_product_attention(c.qh, c.kh, c.vh, so);
  Tensor o = r.output;  // (batch..., H, T, Dv)
  KILN_CHECK(o.defined() && o.shape() == cat_shape(c.batch, {H, c.T, Dv}), kOp,
             "the attention function must return output (batch..., H, T, v_head_dim) = {}, got {}",
             shape_str(cat_shape(c.batch, {H, c.T, Dv})), shape_or_undefined(o));
  KILN_CHECK(!so.need_weights() || r.weights.defined(), kOp,
             "the attention function returned no weights although need_weights was set");
  if (bcast) o = broadcast_dropout_attention(r.weights, c.vh);

  Tensor merged = reshape(o.transpose(-3, -2), cat_shape(c.batch, {c.T, H * Dv}));  // (batch..., T, H * Dv)
  Tensor y = options.to_out_fn() ? options.to_out_fn()(merged, out_proj) : out_proj(merged);
  y = dropout(y, options.out_dropout(), train, options.generator());
  if (options.reslink()) {
    KILN_CHECK(y.shape() == c.q.shape(), kOp,
               "reslink: the output of shape {} cannot be added to the query of shape {}", shape_str(y.shape()),
               shape_str(c.q.shape()));
    y = y + c.q;
  }
  MhaResult res{y, Tensor()};
  if (c.f.need_weights()) res.weights = c.f.average_attn_weights() ? mean(r.weights, {-3}) : r.weights;
  return res;
}

// One (T, S) dropout mask for every batch element and head, applied to the core's
// probabilities P (batch..., H, T, S); v is (batch..., Hkv, S, Dv).
Tensor MultiHeadAttentionImpl::broadcast_dropout_attention(const Tensor& P, const Tensor& v) const {
  const std::int64_t H = num_heads(), Hkv = num_kv_heads(), G = H / Hkv;
  const std::int64_t T = P.size(-2), S = P.size(-1), Dv = v.size(-1);
  const DType dt = P.dtype();
  Tensor keep =
      dropout(ones({T, S}, TensorOptions(dt).device(P.device())), options.dropout(), true, options.generator());
  Shape grouped(P.shape().begin(), P.shape().end() - 3);  // batch
  Shape out = grouped;
  grouped.insert(grouped.end(), {Hkv, G * T, S});
  out.insert(out.end(), {H, T, Dv});
  // kv head j serves query heads j*G .. j*G+G-1: group them as rows of one matmul.
  Tensor vz = where(isfinite(v), v, Scalar(0.0));
  Tensor o = reshape(matmul(reshape(mul(P, keep), grouped), vz), out);
  // A non-finite value that a row attends to makes that row NaN (as the core does), without
  // letting NaN * 0 leak into the other rows.
  Tensor vbad = kiln::to(any(logical_not(isfinite(v)), {-1}, true), dt);  // (..., Hkv, S, 1)
  Tensor att = kiln::to(reshape(P, grouped) > Scalar(0.0), dt);           // (..., Hkv, G*T, S)
  Shape rows = out;
  rows.back() = 1;
  Tensor bad = reshape(matmul(att, vbad) > Scalar(0.0), rows);  // (..., H, T, 1)
  return where(bad, Scalar(std::numeric_limits<double>::quiet_NaN()), o);
}

}  // namespace kiln::nn
