// Scaled dot-product attention: argument checks, the fused op (one graph node over the
// backend's attention kernels) and the composite reference, whose formulas also give the
// fused op's create_graph backward.
#include "ops_attention.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";
constexpr double kInf = std::numeric_limits<double>::infinity();

// The validated call: geometry and the options that shape the computation.
struct Plan {
  std::int64_t nb = 0;  // leading batch dims
  Shape batch;
  std::int64_t N = 1, H = 0, Hkv = 0, G = 1, T = 0, S = 0, Dk = 0, Dv = 0;
  Shape logits;  // batch + (H, T, S)
  double scale = 1;
  bool causal = false;
  double keep_prob = 1;  // < 1: dropout
  bool need_weights = false;
  Tensor mask;  // the user's mask, floats converted to q's dtype (differentiably)
  bool float_mask = false;
  std::int64_t window_left = -1, window_right = -1;  // -1: unbounded
  Tensor alibi, sinks;  // as given, converted to q's dtype (differentiably); broadcast to (batch..., H)
  bool extended() const { return window_left >= 0 || window_right >= 0 || alibi.defined() || sinks.defined(); }
};

// A per-head option (ALiBi slopes, sinks): floating point, broadcastable to (batch..., H).
Tensor per_head(const Tensor& t, const char* what, const Plan& p, const Tensor& q) {
  KILN_CHECK(t.is_floating_point(), kOp, "{} must be floating point, got {}", what, dtype_name(t.dtype()));
  KILN_CHECK(t.device() == q.device(), kOp, "{} is on {} but q is on {}", what, t.device().str(), q.device().str());
  Shape bh = p.batch;
  bh.push_back(p.H);
  KILN_CHECK(broadcastable(t.shape(), bh), kOp, "{} of shape {} cannot be broadcast to (batch..., H) = {}", what,
             shape_str(t.shape()), shape_str(bh));
  return t.dtype() != q.dtype() ? to(t, q.dtype()) : t;
}

Plan plan_for(const Tensor& q, const Tensor& k, const Tensor& v, const SdpaOptions& o) {
  check_defined(q, kOp, "q");
  check_defined(k, kOp, "k");
  check_defined(v, kOp, "v");
  KILN_CHECK(q.is_floating_point() && q.dtype() == k.dtype() && q.dtype() == v.dtype(), kOp,
             "q, k and v must share one floating point dtype, got {}, {} and {}", dtype_name(q.dtype()),
             dtype_name(k.dtype()), dtype_name(v.dtype()));
  KILN_CHECK(q.device() == k.device() && q.device() == v.device(), kOp,
             "q, k and v must be on one device, got {}, {} and {}", q.device().str(), k.device().str(),
             v.device().str());
  KILN_CHECK(q.dim() >= 3, kOp, "q must have at least 3 dims (batch..., heads, T, head_dim), got shape {}",
             shape_str(q.shape()));
  KILN_CHECK(k.dim() == q.dim() && v.dim() == q.dim(), kOp,
             "q, k and v must have the same number of dims, got shapes {}, {} and {}", shape_str(q.shape()),
             shape_str(k.shape()), shape_str(v.shape()));
  Plan p;
  p.nb = q.dim() - 3;
  p.batch.assign(q.shape().begin(), q.shape().begin() + p.nb);
  for (const Tensor* t : {&k, &v})
    KILN_CHECK(Shape(t->shape().begin(), t->shape().begin() + p.nb) == p.batch, kOp,
               "batch dims of q, k and v must match, got shapes {}, {} and {}", shape_str(q.shape()),
               shape_str(k.shape()), shape_str(v.shape()));
  p.N = numel_of(p.batch);
  p.H = q.size(-3);
  p.T = q.size(-2);
  p.Dk = q.size(-1);
  p.Hkv = k.size(-3);
  p.S = k.size(-2);
  p.Dv = v.size(-1);
  KILN_CHECK(v.size(-3) == p.Hkv, kOp, "k and v must have the same number of heads, got shapes {} and {}",
             shape_str(k.shape()), shape_str(v.shape()));
  KILN_CHECK((p.Hkv > 0 && p.H % p.Hkv == 0) || (p.H == 0 && p.Hkv == 0), kOp,
             "q has {} heads, which is not a multiple of the {} kv heads of k and v (q {}, k {})", p.H, p.Hkv,
             shape_str(q.shape()), shape_str(k.shape()));
  p.G = p.Hkv > 0 ? p.H / p.Hkv : 1;
  KILN_CHECK(k.size(-1) == p.Dk, kOp, "q and k must have the same head dim, got shapes {} and {} ({} != {})",
             shape_str(q.shape()), shape_str(k.shape()), p.Dk, k.size(-1));
  KILN_CHECK(v.size(-2) == p.S, kOp, "k and v must have the same sequence length, got shapes {} and {} ({} != {})",
             shape_str(k.shape()), shape_str(v.shape()), p.S, v.size(-2));
  p.logits = p.batch;
  p.logits.insert(p.logits.end(), {p.H, p.T, p.S});

  const Tensor& m = o.attn_mask();
  if (m.defined()) {
    KILN_CHECK(m.dtype() == kBool || m.is_floating_point(), kOp,
               "attn_mask must be bool (true = may attend) or floating point (added to the logits), got {}",
               dtype_name(m.dtype()));
    KILN_CHECK(m.device() == q.device(), kOp, "attn_mask is on {} but q is on {}", m.device().str(), q.device().str());
    KILN_CHECK(broadcastable(m.shape(), p.logits), kOp,
               "attn_mask of shape {} cannot be broadcast to the logits' shape (batch..., H, T, S) = {}",
               shape_str(m.shape()), shape_str(p.logits));
    p.float_mask = m.is_floating_point();
    p.mask = p.float_mask && m.dtype() != q.dtype() ? to(m, q.dtype()) : m;
  }
  if (o.scale()) {
    KILN_CHECK(std::isfinite(*o.scale()), kOp, "scale must be finite, got {}", *o.scale());
    p.scale = *o.scale();
  } else {
    p.scale = p.Dk > 0 ? 1.0 / std::sqrt(static_cast<double>(p.Dk)) : 1.0;
  }
  const double dp = o.dropout_p();
  KILN_CHECK(dp >= 0.0 && dp <= 1.0, kOp, "dropout_p must be in [0, 1], got {}", dp);
  p.causal = o.is_causal();
  p.keep_prob = o.training() ? 1.0 - dp : 1.0;
  p.need_weights = o.need_weights();
  // Widths that reach past every key are unbounded (which also keeps p +- width from overflowing).
  auto width = [&](std::int64_t w) { return w < 0 || w > p.S + p.T ? std::int64_t{-1} : w; };
  p.window_left = width(o.window_left());
  p.window_right = width(o.window_right());
  if (o.alibi_slopes().defined()) p.alibi = per_head(o.alibi_slopes(), "alibi_slopes", p, q);
  if (o.sinks().defined()) p.sinks = per_head(o.sinks(), "sinks", p, q);
  return p;
}

// t (batch..., a, b, c) as an (N, a, b, c) view when the batch dims collapse to one stride.
bool collapse(const Tensor& t, std::int64_t nb, Tensor& out) {
  std::int64_t N = 1, stride = 0, expect = -1;
  for (std::int64_t d = nb - 1; d >= 0; --d) {
    N *= t.size(d);
    if (t.size(d) == 1) continue;
    if (expect < 0) {
      stride = t.stride(d);
      expect = stride * t.size(d);
    } else if (t.stride(d) != expect) {
      return false;
    } else {
      expect *= t.size(d);
    }
  }
  out = Tensor::make_view(t, {N, t.size(nb), t.size(nb + 1), t.size(nb + 2)},
                          {stride, t.stride(nb), t.stride(nb + 1), t.stride(nb + 2)}, t.offset());
  return true;
}

// (N, a, b, c) view of t, copying only when the batch dims do not collapse.
Tensor as4(const Tensor& t, std::int64_t nb) {
  Tensor r;
  if (collapse(t, nb, r)) return r;
  collapse(contiguous_raw(t), nb, r);
  return r;
}

// The mask as an (N, H, T, S) view with broadcast strides. Only batch broadcasting that does not
// collapse is materialized (over the batch dims, not over H, T, S).
Tensor mask4(const Plan& p) {
  if (!p.mask.defined()) return Tensor();
  Tensor full = expand_raw(p.mask, p.logits, kOp), r;
  if (collapse(full, p.nb, r)) return r;
  Shape own = p.logits;  // batch dims full, (H, T, S) as the mask has them
  for (std::int64_t i = 1; i <= 3; ++i)
    own[own.size() - static_cast<std::size_t>(i)] = i <= p.mask.dim() ? p.mask.size(-i) : 1;
  Tensor mb = contiguous_raw(expand_raw(p.mask, own, kOp));
  collapse(expand_raw(mb, p.logits, kOp), p.nb, r);
  return r;
}

// An uninitialized tensor shaped like t. A (batch..., H, T, D) view of a (batch..., T, H, D)
// buffer (heads split off a projection) gets that layout again, so the gradient flows back
// through the head split without a copy.
Tensor empty_like_layout(const Tensor& t) {
  const std::size_t n = static_cast<std::size_t>(t.dim());
  if (t.size(-3) > 1 && t.size(-2) > 1 && t.stride(-3) < t.stride(-2)) {
    Shape s = t.shape();
    std::swap(s[n - 3], s[n - 2]);
    Tensor b = Tensor::empty(s, t.dtype(), t.device());
    Strides st = b.strides();
    std::swap(st[n - 3], st[n - 2]);
    return Tensor::make_view(b, t.shape(), st, 0);
  }
  return Tensor::empty(t.shape(), t.dtype(), t.device());
}

// A per-head tensor as a contiguous (N, H) copy (it is tiny).
Tensor as_nh(const Tensor& t, const Plan& p) {
  if (!t.defined()) return Tensor();
  Shape bh = p.batch;
  bh.push_back(p.H);
  Tensor c = contiguous_raw(expand_raw(t, bh, kOp));
  return Tensor::make_view(c, {p.N, p.H}, {p.H, 1}, c.offset());
}

AttentionArgs args_for(const Plan& p, const Tensor& q, const Tensor& k, const Tensor& v, std::uint64_t seed,
                       std::uint64_t offset) {
  AttentionArgs a;
  a.q = as4(q, p.nb);
  a.k = as4(k, p.nb);
  a.v = as4(v, p.nb);
  a.mask = mask4(p);
  a.alibi = as_nh(p.alibi, p);
  a.sinks = as_nh(p.sinks, p);
  a.window_left = p.window_left;
  a.window_right = p.window_right;
  a.scale = p.scale;
  a.causal = p.causal;
  a.keep_prob = p.keep_prob;
  a.seed = seed;
  a.offset = offset;
  return a;
}

// Reserves the dropout counters of one call; returns (seed, offset).
std::pair<std::uint64_t, std::uint64_t> reserve_dropout(const Plan& p, const SdpaOptions& o) {
  if (p.keep_prob >= 1.0) return {0, 0};
  Generator& g = o.generator() ? *o.generator() : default_generator();
  return {g.seed(), g.reserve(attention_dropout_counters(p.N, p.H, p.T, p.S))};
}

// ---------------------------------------------------------------- composite formulation
Tensor finite_or_zero(const Tensor& x) { return where(isfinite(x), x, Scalar(0.0)); }

// (batch..., Hkv, S, D) -> (batch..., H, S, D): kv head j serves query heads j*G .. j*G+G-1.
Tensor expand_heads(const Tensor& x, const Plan& p) {
  if (p.G == 1) return x;
  Shape e = x.shape();
  e.insert(e.end() - 2, p.G);
  Shape r = x.shape();
  r[r.size() - 3] = p.H;
  return reshape(expand(unsqueeze(x, -3), e), r);
}

// Inverse of expand_heads for gradients: sums each group of G query heads.
Tensor reduce_heads(const Tensor& x, const Plan& p) {
  if (p.G == 1) return x;
  Shape s = x.shape();
  s[s.size() - 3] = p.Hkv;
  s.insert(s.end() - 2, p.G);
  return sum(reshape(x, s), {-3});
}

// The pieces both the reference forward and the composite backward need.
struct Composite {
  Tensor qf, kf, vf;  // NaN/Inf replaced by 0; kf, vf expanded to H heads
  Tensor keep;        // bool, logits' shape: entry takes part
  Tensor any;         // bool (..., T, 1): the row attends to something
  Tensor p;           // probabilities, exactly 0 where !keep and on empty rows
  Tensor psink;       // (..., T, 1) sink probabilities, 0 on empty rows (undefined without sinks)
  Tensor dist;        // (T, S) |position - key| in q's dtype (undefined without ALiBi)
  Tensor drop;        // dropout multipliers (undefined without dropout)
};

Composite composite(const Plan& p, const Tensor& q, const Tensor& k, const Tensor& v, std::uint64_t seed,
                    std::uint64_t offset) {
  Composite c;
  const Device dev = q.device();
  c.qf = finite_or_zero(q);
  c.kf = expand_heads(finite_or_zero(k), p);
  c.vf = expand_heads(finite_or_zero(v), p);
  Tensor logits = mul(matmul(c.qf, transpose(c.kf, -1, -2)), scalar_on(p.scale, q.dtype(), dev));
  // Query positions (T, 1) and keys (1, S) for causal, window and ALiBi.
  auto i64 = [&](std::int64_t x) { return scalar_on(x, kInt64, dev); };
  const Tensor pos = add(unsqueeze(arange(0, p.T, 1, TensorOptions(kInt64).device(dev)), 1), i64(p.S - p.T));
  const Tensor key = unsqueeze(arange(0, p.S, 1, TensorOptions(kInt64).device(dev)), 0);
  if (p.alibi.defined()) {
    c.dist = to(abs(sub(pos, key)), q.dtype());
    logits = sub(logits, mul(unsqueeze(unsqueeze(p.alibi, -1), -1), c.dist));
  }
  c.keep = ones(p.logits, TensorOptions(kBool).device(dev));
  if (p.mask.defined()) {
    if (p.float_mask) {
      logits = add(logits, p.mask);
      c.keep = ne(logits, scalar_on(-kInf, q.dtype(), dev));
    } else {
      c.keep = logical_and(c.keep, p.mask);
    }
  }
  if (p.causal) c.keep = logical_and(c.keep, le(key, pos));
  if (p.window_left >= 0) c.keep = logical_and(c.keep, ge(key, sub(pos, i64(p.window_left))));
  if (p.window_right >= 0) c.keep = logical_and(c.keep, le(key, add(pos, i64(p.window_right))));
  c.any = any(c.keep, {-1}, true);
  Tensor s = where(c.keep, logits, Scalar(-kInf));
  s = where(c.any, s, Scalar(0.0));  // empty rows: softmax of zeros, then zeroed below (no NaN)
  if (p.sinks.defined()) {
    // The sink is one more logit per row whose probability is dropped (it has no value).
    Shape col = p.logits;
    col.back() = 1;
    Tensor pe = softmax(cat({s, expand(unsqueeze(unsqueeze(p.sinks, -1), -1), col)}, -1), -1);
    c.p = where(c.keep, narrow(pe, -1, 0, p.S), Scalar(0.0));
    c.psink = where(c.any, narrow(pe, -1, p.S, 1), Scalar(0.0));
  } else {
    c.p = where(c.keep, softmax(s, -1), Scalar(0.0));
  }
  if (p.keep_prob < 1.0) {
    // Only the shapes of q, k, v matter here: zero-stride views, no copies.
    auto shaped = [](const Tensor& t, const Shape& sh) { return Tensor::make_view(t, sh, Strides(4, 0), t.offset()); };
    AttentionArgs a;
    a.q = shaped(q, {p.N, p.H, p.T, p.Dk});
    a.k = shaped(k, {p.N, p.Hkv, p.S, p.Dk});
    a.v = shaped(v, {p.N, p.Hkv, p.S, p.Dv});
    a.keep_prob = p.keep_prob;
    a.seed = seed;
    a.offset = offset;
    Tensor d = Tensor::empty({p.N, p.H, p.T, p.S}, q.dtype(), dev);
    backend(q, kOp).attention_dropout_mask(a, d);
    c.drop = reshape(d, p.logits);
  }
  return c;
}

// Gradients for (q, k, v, mask) from g = dL/d output (and gw = dL/d weights), written with
// differentiable ops: the create_graph backward of the fused op.
std::vector<Tensor> composite_backward(const Plan& p, const Tensor& q, const Tensor& k, const Tensor& v,
                                       std::uint64_t seed, std::uint64_t offset, const Tensor& g, const Tensor& gw,
                                       const std::vector<autograd::Edge>& edges) {
  Composite c = composite(p, q, k, v, seed, offset);
  Tensor pd = c.drop.defined() ? mul(c.p, c.drop) : c.p;
  Tensor dp = matmul(g, transpose(c.vf, -1, -2));
  if (c.drop.defined()) dp = mul(dp, c.drop);
  if (gw.defined()) dp = add(dp, gw);
  Tensor delta = sum(mul(c.p, dp), {-1}, true);
  Tensor ds = mul(c.p, sub(dp, delta));
  ds = where(c.keep, ds, Scalar(0.0));
  const Tensor sc = scalar_on(p.scale, q.dtype(), q.device());
  Tensor gq, gk, gv, gm;
  if (edges[0].valid()) gq = where(isfinite(q), mul(matmul(ds, c.kf), sc), Scalar(0.0));
  if (edges[1].valid())
    gk = where(isfinite(k), reduce_heads(mul(matmul(transpose(ds, -1, -2), c.qf), sc), p), Scalar(0.0));
  if (edges[2].valid()) gv = where(isfinite(v), reduce_heads(matmul(transpose(pd, -1, -2), g), p), Scalar(0.0));
  if (edges.size() > 3 && edges[3].valid()) gm = reduce_grad(ds, p.mask);
  // d logits / d slope = -|position - key|; d out / d sink = -P(sink) * out, so d sink = -P(sink) * delta.
  Tensor ga, gs;
  if (edges.size() > 4 && edges[4].valid()) ga = reduce_grad(neg(sum(mul(ds, c.dist), {-2, -1})), p.alibi);
  if (edges.size() > 5 && edges[5].valid()) gs = reduce_grad(neg(sum(mul(c.psink, delta), {-2, -1})), p.sinks);
  return {gq, gk, gv, gm, ga, gs};
}

SdpaResult reference(const Plan& p, const Tensor& q, const Tensor& k, const Tensor& v, std::uint64_t seed,
                     std::uint64_t offset) {
  Composite c = composite(p, q, k, v, seed, offset);
  Tensor pd = c.drop.defined() ? mul(c.p, c.drop) : c.p;
  Tensor out = matmul(pd, c.vf);
  // NaN/Inf in an attended q row, key or value makes the output NaN there (the zeroed copies
  // above keep it out of everything else).
  const Device dev = q.device();
  Tensor qbad = logical_and(any(logical_not(isfinite(q)), {-1}, true), c.any);
  Tensor kbad = unsqueeze(any(logical_not(isfinite(expand_heads(k, p))), {-1}), -2);
  Tensor rowbad = logical_or(qbad, any(logical_and(c.keep, kbad), {-1}, true));
  Tensor vbad = to(logical_not(isfinite(expand_heads(v, p))), q.dtype());
  Tensor bad = logical_or(rowbad, gt(matmul(to(c.keep, q.dtype()), vbad), scalar_on(0.0, q.dtype(), dev)));
  out = where(bad, Scalar(std::numeric_limits<double>::quiet_NaN()), out);
  return {out, p.need_weights ? c.p : Tensor()};
}

// ---------------------------------------------------------------- the fused op
SdpaResult fused(const Plan& p, const Tensor& q, const Tensor& k, const Tensor& v, std::uint64_t seed,
                 std::uint64_t offset) {
  const DType dt = q.dtype();
  const Device dev = q.device();
  AttentionArgs a = args_for(p, q, k, v, seed, offset);
  // (N, T, H, Dv) in memory, viewed as (N, H, T, Dv): merging heads afterwards is free.
  Tensor ob = Tensor::empty({p.N, p.T, p.H, p.Dv}, dt, dev);
  Tensor o4 = Tensor::make_view(ob, {p.N, p.H, p.T, p.Dv}, {p.T * p.H * p.Dv, p.Dv, p.H * p.Dv, 1}, 0);
  Tensor lse = Tensor::empty({p.N, p.H, p.T}, is_reduced_float(dt) ? kFloat32 : dt, dev);  // float32 state
  Tensor w4 = p.need_weights ? Tensor::empty({p.N, p.H, p.T, p.S}, dt, dev) : Tensor();
  backend(q, kOp).attention_forward(a, o4, lse, w4);

  Shape os = p.batch;
  os.insert(os.end(), {p.H, p.T, p.Dv});
  Strides ost(os.size());
  std::int64_t bs = p.T * p.H * p.Dv;
  for (std::int64_t d = p.nb - 1; d >= 0; --d) {
    ost[static_cast<std::size_t>(d)] = bs;
    bs *= p.batch[static_cast<std::size_t>(d)];
  }
  ost[ost.size() - 3] = p.Dv;
  ost[ost.size() - 2] = p.H * p.Dv;
  ost[ost.size() - 1] = 1;
  Tensor out = Tensor::make_view(ob, os, ost, 0);
  Tensor w = p.need_weights ? Tensor::make_view(w4, p.logits, contiguous_strides(p.logits), 0) : Tensor();

  std::vector<Tensor> outputs{out};
  if (p.need_weights) outputs.push_back(w);
  Tensor mgrad = p.float_mask ? p.mask : Tensor();
  Plan pc = p;
  // The node keeps mask, slopes and sinks as saved (version-checked) tensors.
  pc.mask = pc.alibi = pc.sinks = Tensor();
  const std::size_t extra = p.need_weights ? 6 : 5;  // slot of the mask; slopes and sinks follow
  if (auto node =
          record(kOp, {q, k, v, mgrad, p.alibi, p.sinks}, outputs,
                 [pc, seed, offset, extra](FunctionNode& n, std::vector<Tensor>& g) {
                   const Plan& p = pc;
                   Tensor q = n.saved(0), k = n.saved(1), v = n.saved(2), out = n.saved(3), lse = n.saved(4);
                   Tensor w = p.need_weights ? n.saved(5) : Tensor();
                   Tensor gw = p.need_weights ? g[1] : Tensor();
                   Plan pl = p;
                   pl.mask = n.saved(extra);
                   pl.alibi = n.saved(extra + 1);
                   pl.sinks = n.saved(extra + 2);
                   if (autograd::grad_enabled())
                     return composite_backward(pl, q, k, v, seed, offset, g[0], gw, n.next_edges);
                   AttentionArgs a = args_for(pl, q, k, v, seed, offset);
                   Tensor gq = empty_like_layout(q), gk = empty_like_layout(k), gv = empty_like_layout(v);
                   AttentionGrads gr{as4(gq, pl.nb), as4(gk, pl.nb), as4(gv, pl.nb), Tensor(), Tensor(), Tensor()};
                   const TensorOptions fo = TensorOptions(q.dtype()).device(q.device());
                   // Only inputs that require grad get one: the full d logits buffer is O(T * S).
                   const bool want_gm = n.next_edges[3].valid(), want_ga = n.next_edges[4].valid();
                   const bool want_gs = n.next_edges[5].valid();
                   if (want_gm) gr.gmask = zeros({pl.N, pl.H, pl.T, pl.S}, fo);
                   if (want_ga) gr.galibi = Tensor::empty({pl.N, pl.H}, q.dtype(), q.device());
                   if (want_gs) gr.gsinks = Tensor::empty({pl.N, pl.H}, q.dtype(), q.device());
                   Tensor gw4 = gw.defined() ? contiguous_raw(as4(gw, pl.nb)) : Tensor();
                   Tensor w4 = w.defined() ? contiguous_raw(as4(w, pl.nb)) : Tensor();
                   backend(q, "scaled_dot_product_attention_backward")
                       .attention_backward(a, as4(out, pl.nb), lse, as4(g[0], pl.nb), w4, gw4, gr);
                   Shape bh = pl.batch;
                   bh.push_back(pl.H);
                   auto per_head_grad = [&](const Tensor& g2, const Tensor& x) {
                     return g2.defined() ? reduce_grad(Tensor::make_view(g2, bh, contiguous_strides(bh), 0), x)
                                         : Tensor();
                   };
                   Tensor gm;
                   if (want_gm)
                     gm =
                         reduce_grad(Tensor::make_view(gr.gmask, pl.logits, contiguous_strides(pl.logits), 0), pl.mask);
                   return std::vector<Tensor>{
                       gq, gk, gv, gm, per_head_grad(gr.galibi, pl.alibi), per_head_grad(gr.gsinks, pl.sinks)};
                 })) {
    node->save(q);
    node->save(k);
    node->save(v);
    node->save(out, true);
    node->save(lse);
    if (p.need_weights) node->save(w, true);
    node->save(p.mask);
    node->save(p.alibi);
    node->save(p.sinks);
  }
  return {out, w};
}

}  // namespace

SdpaResult scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const SdpaOptions& opts) {
  if (autocast_active()) {
    bool cast = false;
    Tensor qc = autocast_arg(q, kLowPrecision, cast), kc = autocast_arg(k, kLowPrecision, cast),
           vc = autocast_arg(v, kLowPrecision, cast);
    if (cast) return scaled_dot_product_attention(qc, kc, vc, opts);
  }
  if (opts.use_reference()) return scaled_dot_product_attention_reference(q, k, v, opts);
  Plan p = plan_for(q, k, v, opts);
  auto [seed, offset] = reserve_dropout(p, opts);
  // A backend whose kernels lack window / ALiBi / sinks runs the composite formulation instead.
  if (p.extended() && !backend(q, kOp).attention_has_extensions()) return reference(p, q, k, v, seed, offset);
  return fused(p, q, k, v, seed, offset);
}

SdpaResult scaled_dot_product_attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const SdpaOptions& opts) {
  if (autocast_active()) {
    bool cast = false;
    Tensor qc = autocast_arg(q, kLowPrecision, cast), kc = autocast_arg(k, kLowPrecision, cast),
           vc = autocast_arg(v, kLowPrecision, cast);
    if (cast) return scaled_dot_product_attention_reference(qc, kc, vc, opts);
  }
  Plan p = plan_for(q, k, v, opts);
  auto [seed, offset] = reserve_dropout(p, opts);
  return reference(p, q, k, v, seed, offset);
}

Tensor alibi_slopes(std::int64_t num_heads) {
  KILN_CHECK(num_heads > 0, "alibi_slopes", "num_heads must be positive, got {}", num_heads);
  // Slope i of a power of two m is 2^(-8 (i + 1) / m).
  auto slope = [](std::int64_t m, std::int64_t i) {
    return static_cast<float>(std::exp2(-8.0 * static_cast<double>(i + 1) / static_cast<double>(m)));
  };
  std::int64_t m = 1;
  while (m * 2 <= num_heads) m *= 2;
  std::vector<float> s;
  for (std::int64_t i = 0; i < m; ++i) s.push_back(slope(m, i));
  for (std::int64_t i = 0; static_cast<std::int64_t>(s.size()) < num_heads; i += 2) s.push_back(slope(2 * m, i));
  return tensor(s);
}

}  // namespace kiln
