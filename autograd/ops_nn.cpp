// Fused nn ops: softmax / log_softmax, layer_norm, rms_norm, dropout, losses.
#include <array>
#include <cmath>
#include <initializer_list>
#include <limits>

#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

// x with `dim` moved last, contiguous (no autograd).
Tensor dim_last(const Tensor& x, std::int64_t dim) {
  if (dim == x.dim() - 1) return contiguous_raw(x);
  Dims p;
  for (std::int64_t d = 0; d < x.dim(); ++d)
    if (d != dim) p.push_back(d);
  p.push_back(dim);
  Shape s;
  Strides st;
  for (auto d : p) {
    s.push_back(x.size(d));
    st.push_back(x.stride(d));
  }
  return contiguous_raw(Tensor::make_view(x, s, st, x.offset()));
}

// Inverse of dim_last: a view of t (dim last) with `dim` back in place.
Tensor dim_back(const Tensor& t, std::int64_t dim) {
  std::int64_t n = t.dim();
  if (dim == n - 1) return t;
  Shape s(n);
  Strides st(n);
  std::int64_t j = 0;
  for (std::int64_t d = 0; d < n; ++d) {
    if (d == dim) {
      s[d] = t.size(n - 1);
      st[d] = t.stride(n - 1);
    } else {
      s[d] = t.size(j);
      st[d] = t.stride(j);
      ++j;
    }
  }
  return Tensor::make_view(t, s, st, t.offset());
}

Tensor softmax_impl(const Tensor& x, std::int64_t dim_in, bool log, const char* op) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast);
    if (cast) return softmax_impl(xc, dim_in, log, op);
  }
  check_defined(x, op);
  check_floating(x, op);
  if (x.dim() == 0) {
    normalize_dim(dim_in, 0, op);  // only 0 / -1 name the single position of a 0-D tensor
    return softmax_impl(reshape(x, {1}), 0, log, op).reshape({});
  }
  std::int64_t dim = normalize_dim(dim_in, x.dim(), op);
  Tensor xl = dim_last(x, dim);
  Tensor yl = Tensor::empty(xl.shape(), x.dtype(), x.device());
  backend(x, op).softmax(xl, yl, log);
  Tensor y = dim_back(yl, dim);
  if (auto node = record(op, {x}, {y}, [dim, log](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor y = n.saved(0);
        if (autograd::grad_enabled()) {  // differentiable form for create_graph
          if (log) return std::vector<Tensor>{sub(g[0], mul(exp(y), sum(g[0], {dim}, true)))};
          return std::vector<Tensor>{mul(y, sub(g[0], sum(mul(g[0], y), {dim}, true)))};
        }
        Tensor yl = dim_last(y, dim), gl = dim_last(g[0], dim);
        Tensor gx = Tensor::empty(yl.shape(), yl.dtype(), yl.device());
        backend(y, "softmax_backward").softmax_backward(yl, gl, gx, log);
        return std::vector<Tensor>{dim_back(gx, dim)};
      }))
    node->save(y, true);
  return y;
}

// layer_norm's gradients {gx, gweight, gbias} in one backend pass (those `want` asks for); w is the
// weight in x's dtype or undefined, mu/rs the forward's statistics.
std::vector<Tensor> layer_norm_backward_fused(const Tensor& x, const Tensor& w, const Tensor& mu, const Tensor& rs,
                                              const Tensor& gy, const Shape& normalized_shape,
                                              std::array<bool, 3> want) {
  const std::int64_t R = mu.numel(), N = numel_of(normalized_shape);
  Tensor gx = want[0] ? Tensor::empty({R, N}, x.dtype(), x.device()) : Tensor();
  Tensor gw = want[1] ? Tensor::empty({N}, x.dtype(), x.device()) : Tensor();
  Tensor gb = want[2] ? Tensor::empty({N}, x.dtype(), x.device()) : Tensor();
  if (gx.defined() || gw.defined() || gb.defined())
    backend(x, "layer_norm")
        .layer_norm_backward(contiguous_raw(x).reshape({R, N}), w.defined() ? contiguous_raw(w).reshape({N}) : Tensor(),
                             mu, rs, contiguous_raw(cast_raw(gy, x.dtype())).reshape({R, N}), gx, gw, gb);
  return {gx.defined() ? gx.reshape(x.shape()) : gx, gw.defined() ? gw.reshape(normalized_shape) : gw,
          gb.defined() ? gb.reshape(normalized_shape) : gb};
}

// rms_norm's gradients {gx, gweight} in one backend pass (those `want` asks for); w is the weight
// in x's dtype or undefined, rs the forward's rstd.
std::vector<Tensor> rms_norm_backward_fused(const Tensor& x, const Tensor& w, const Tensor& rs, const Tensor& gy,
                                            const Shape& normalized_shape, std::array<bool, 2> want) {
  const std::int64_t R = rs.numel(), N = numel_of(normalized_shape);
  Tensor gx = want[0] ? Tensor::empty({R, N}, x.dtype(), x.device()) : Tensor();
  Tensor gw = want[1] ? Tensor::empty({N}, x.dtype(), x.device()) : Tensor();
  if (gx.defined() || gw.defined())
    backend(x, "rms_norm")
        .rms_norm_backward(contiguous_raw(x).reshape({R, N}), w.defined() ? contiguous_raw(w).reshape({N}) : Tensor(),
                           rs, contiguous_raw(cast_raw(gy, x.dtype())).reshape({R, N}), gx, gw);
  return {gx.defined() ? gx.reshape(x.shape()) : gx, gw.defined() ? gw.reshape(normalized_shape) : gw};
}

// rms_norm's gradients as differentiable ops (create_graph), rstd recomputed so second order is
// exact; bfloat16/float16 in float32 as the forward (the engine rounds each gradient back).
std::vector<Tensor> rms_norm_backward_composite(const Tensor& x, const Tensor& w, const Tensor& gy, double eps,
                                                const Dims& norm_dims, const Shape& normalized_shape,
                                                std::array<bool, 2> want) {
  const DType dt = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  Tensor xf = to(x, dt), g = to(gy, dt);
  Tensor rs = rsqrt(add(mean(mul(xf, xf), norm_dims, true), scalar_on(eps, dt, x.device())));
  Tensor xhat = mul(xf, rs);
  Tensor gxhat = w.defined() ? mul(g, to(w, dt)) : g;
  Tensor gx = want[0] ? mul(rs, sub(gxhat, mul(xhat, mean(mul(gxhat, xhat), norm_dims, true)))) : Tensor();
  Tensor gw;
  if (want[1]) {
    gw = mul(g, xhat);
    Dims batch_dims;
    for (std::int64_t d = 0; d < x.dim() - static_cast<std::int64_t>(norm_dims.size()); ++d) batch_dims.push_back(d);
    if (!batch_dims.empty()) gw = reshape(sum(gw, batch_dims, false), normalized_shape);
  }
  return {gx, gw};
}
// The dtype a norm computes in when its weight or bias has a dtype other than x's: the widest of
// x's compute type (float32 for bfloat16/float16) and theirs; nullopt when they all match x's.
// The norm then runs in that dtype and rounds once to x's dtype, as PyTorch's mixed-dtype norms
// (a bfloat16 activation with float32 parameters keeps the parameters unrounded).
std::optional<DType> norm_compute_dtype(const Tensor& x, std::initializer_list<const Tensor*> params, const char* op) {
  DType ct = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  bool mixed = false;
  for (const Tensor* p : params)
    if (p->defined() && p->dtype() != x.dtype()) {
      KILN_CHECK(p->is_floating_point(), op, "{} must be floating point, got {}",
                 p == *params.begin() ? "weight" : "bias", dtype_name(p->dtype()));
      mixed = true;
      ct = promote_types(ct, is_reduced_float(p->dtype()) ? kFloat32 : p->dtype());
    }
  return mixed ? std::optional<DType>(ct) : std::nullopt;
}

Tensor to_if_defined(const Tensor& t, DType dt) { return t.defined() ? to(t, dt) : t; }
}  // namespace

Tensor softmax(const Tensor& x, std::int64_t dim) { return softmax_impl(x, dim, false, "softmax"); }
Tensor log_softmax(const Tensor& x, std::int64_t dim) { return softmax_impl(x, dim, true, "log_softmax"); }

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast), wc = autocast_arg(weight, kFloat32Policy, cast),
           bc = autocast_arg(bias, kFloat32Policy, cast);
    if (cast) return layer_norm(xc, normalized_shape, wc, bc, eps);
  }
  check_defined(x, "layer_norm");
  check_floating(x, "layer_norm");
  if (const auto ct = norm_compute_dtype(x, {&weight, &bias}, "layer_norm"))
    return to(layer_norm(to(x, *ct), normalized_shape, to_if_defined(weight, *ct), to_if_defined(bias, *ct), eps),
              x.dtype());
  const std::int64_t k = static_cast<std::int64_t>(normalized_shape.size());
  KILN_CHECK(k >= 1 && k <= x.dim(), "layer_norm", "normalized_shape {} does not fit input shape {}",
             shape_str(normalized_shape), shape_str(x.shape()));
  for (std::int64_t i = 0; i < k; ++i)
    KILN_CHECK(x.size(x.dim() - k + i) == normalized_shape[i], "layer_norm",
               "input shape {} does not end with normalized_shape {}", shape_str(x.shape()),
               shape_str(normalized_shape));
  for (const Tensor* p : {&weight, &bias})
    if (p->defined()) {
      KILN_CHECK(p->shape() == normalized_shape, "layer_norm", "{} shape {} must equal normalized_shape {}",
                 p == &weight ? "weight" : "bias", shape_str(p->shape()), shape_str(normalized_shape));
      check_same_device("layer_norm", x, *p);
    }
  KILN_CHECK(eps >= 0, "layer_norm", "eps must be >= 0, got {}", eps);
  Shape stat_shape(x.shape().begin(), x.shape().end() - k);
  std::int64_t R = numel_of(stat_shape);  // one (mean, rstd) per row, even when rows are empty
  Tensor xc = contiguous_raw(x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  // Statistics of a bfloat16/float16 input stay float32 (the backward then runs in float32).
  const DType stat_dt = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  Tensor mu = Tensor::empty({R}, stat_dt, x.device()), rs = Tensor::empty({R}, stat_dt, x.device());
  Tensor w = weight.defined() ? contiguous_raw(weight) : Tensor();  // of x's dtype here
  Tensor b = bias.defined() ? contiguous_raw(bias) : Tensor();
  backend(x, "layer_norm").layer_norm(xc, w, b, eps, y, mu, rs);
  Dims norm_dims, batch_dims;
  for (std::int64_t d = 0; d < x.dim(); ++d) (d >= x.dim() - k ? norm_dims : batch_dims).push_back(d);
  bool has_w = weight.defined(), has_b = bias.defined();
  if (auto node =
          record("layer_norm", {x, weight, bias}, {y},
                 [norm_dims, batch_dims, has_w, has_b, eps, normalized_shape](FunctionNode& n, std::vector<Tensor>& g) {
                   Tensor x = n.saved(0), w = n.saved(1), mu = n.saved(2), rs = n.saved(3);
                   if (!autograd::grad_enabled())
                     return layer_norm_backward_fused(x, w, mu, rs, g[0], normalized_shape,
                                                      {n.next_edges[0].valid(), has_w && n.next_edges[1].valid(),
                                                       has_b && n.next_edges[2].valid()});
                   // create_graph: the statistics recomputed differentiably, so second order is exact.
                   Tensor d = sub(x, mean(x, norm_dims, true));
                   rs = rsqrt(add(mean(mul(d, d), norm_dims, true), scalar_on(eps, x.dtype(), x.device())));
                   Tensor xhat = mul(d, rs);
                   Tensor gy = g[0];
                   Tensor gxhat = has_w ? mul(gy, w) : gy;
                   Tensor gx;
                   if (n.next_edges[0].valid()) {
                     Tensor t = sub(sub(gxhat, mean(gxhat, norm_dims, true)),
                                    mul(xhat, mean(mul(gxhat, xhat), norm_dims, true)));
                     gx = mul(rs, t);
                   }
                   auto over_batch = [&](const Tensor& t) {
                     return batch_dims.empty() ? t : reshape(sum(t, batch_dims, false), normalized_shape);
                   };
                   Tensor gw = has_w && n.next_edges[1].valid() ? over_batch(mul(gy, xhat)) : Tensor();
                   Tensor gb = has_b && n.next_edges[2].valid() ? over_batch(gy) : Tensor();
                   return std::vector<Tensor>{gx, gw, gb};
                 })) {
    node->save(x);
    node->save(weight);
    node->save(mu);
    node->save(rs);
  }
  return y;
}

Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, std::optional<double> eps) {
  if (autocast_active()) {  // statistics and output in float32
    bool cast = false;
    Tensor xc = autocast_arg(x, kFloat32Policy, cast), wc = autocast_arg(weight, kFloat32Policy, cast);
    if (cast) return rms_norm(xc, normalized_shape, wc, eps);
  }
  check_defined(x, "rms_norm");
  KILN_CHECK(x.is_floating_point(), "rms_norm", "expected a floating point input, got {}", dtype_name(x.dtype()));
  const auto k = static_cast<std::int64_t>(normalized_shape.size());
  bool fits = k >= 1 && k <= x.dim();
  for (std::int64_t i = 0; fits && i < k; ++i)
    fits = x.size(x.dim() - k + i) == normalized_shape[static_cast<std::size_t>(i)];
  KILN_CHECK(fits, "rms_norm", "input shape {} does not end with normalized_shape {}", shape_str(x.shape()),
             shape_str(normalized_shape));
  if (weight.defined()) {
    KILN_CHECK(weight.shape() == normalized_shape, "rms_norm", "weight shape {} must equal normalized_shape {}",
               shape_str(weight.shape()), shape_str(normalized_shape));
    check_same_device("rms_norm", x, weight);
  }
  // The machine epsilon of the type the norm computes in, as PyTorch's rms_norm (its opmath
  // type): 2^-52 for float64, 2^-23 otherwise. Not 2^-7 / 2^-10 for bfloat16 / float16: rows of
  // small values (mean square ~1e-3) would be pulled far toward 0.
  const double dtype_eps =
      x.dtype() == kFloat64 ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
  const double e = eps.value_or(dtype_eps);
  KILN_CHECK(e >= 0, "rms_norm", "eps must be >= 0, got {}", e);
  if (const auto ct = norm_compute_dtype(x, {&weight}, "rms_norm"))
    return to(rms_norm(to(x, *ct), normalized_shape, to(weight, *ct), e), x.dtype());
  Shape stat_shape(x.shape().begin(), x.shape().end() - k);
  const std::int64_t R = numel_of(stat_shape);
  const bool fuse_w = weight.defined();  // of x's dtype here
  Tensor w = fuse_w ? contiguous_raw(weight) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  // rstd of a bfloat16/float16 input stays float32 (the backward then runs in float32).
  Tensor rs = Tensor::empty({R}, is_reduced_float(x.dtype()) ? kFloat32 : x.dtype(), x.device());
  backend(x, "rms_norm").rms_norm(contiguous_raw(x), w, e, y, rs);
  Dims norm_dims;
  for (std::int64_t d = x.dim() - k; d < x.dim(); ++d) norm_dims.push_back(d);
  if (auto node =
          record("rms_norm", {x, fuse_w ? weight : Tensor()}, {y},
                 [norm_dims, fuse_w, e, normalized_shape](FunctionNode& n, std::vector<Tensor>& g) {
                   Tensor x = n.saved(0), w = n.saved(1);
                   const std::array<bool, 2> want = {n.next_edges[0].valid(), fuse_w && n.next_edges[1].valid()};
                   if (!autograd::grad_enabled())
                     return rms_norm_backward_fused(x, w, n.saved(2), g[0], normalized_shape, want);
                   return rms_norm_backward_composite(x, w, g[0], e, norm_dims, normalized_shape, want);
                 })) {
    node->save(x);
    node->save(fuse_w ? weight : Tensor());
    node->save(rs);
  }
  return y;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  check_defined(x, "dropout");
  KILN_CHECK(p >= 0.0 && p <= 1.0, "dropout", "probability must be in [0, 1], got {}", p);
  if (!training || p == 0.0) return x;
  check_floating(x, "dropout");
  if (p == 1.0) return mul(x, zeros({}, TensorOptions(x.dtype()).device(x.device())));
  Tensor mask = Tensor::empty(x.shape(), x.dtype(), x.device());
  Generator& g = gen ? *gen : default_generator();
  RandomSpec spec{RandomSpec::Bernoulli, 1.0 - p, 1.0 / (1.0 - p)};
  spec.seed = g.seed();
  spec.offset = g.reserve(static_cast<std::uint64_t>(x.numel()));
  Backend& be = backend(x, "dropout");
  // Backward needs only the mask: recorded as mul, x would be kept too (for the mask's gradient),
  // an activation per dropout held until backward for nothing.
  Tensor y;
  if (x.is_contiguous()) {
    y = Tensor::empty(x.shape(), x.dtype(), x.device());
    be.dropout(x, mask, y, spec);  // mask and y in one pass: the values of random + mul
  } else {
    be.random(mask, spec);
    NoGradGuard ng;
    y = mul(x, mask);
  }
  if (auto node = record("dropout", {x}, {y}, [](FunctionNode& n, std::vector<Tensor>& g) {
        return std::vector<Tensor>{mul(g[0], n.saved(0))};
      }))
    node->save(mask);
  return y;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts) {
  if (autocast_active()) {
    bool cast = false;
    Tensor lc = autocast_arg(logits, kFloat32Policy, cast);
    if (cast) return cross_entropy(lc, target, opts);
  }
  check_defined(logits, "cross_entropy", "logits");
  check_defined(target, "cross_entropy", "target");
  check_floating(logits, "cross_entropy");
  check_same_device("cross_entropy", logits, target);
  KILN_CHECK(target.dtype() == kInt64, "cross_entropy", "target must hold int64 class indices, got {}",
             dtype_name(target.dtype()));
  KILN_CHECK(logits.dim() >= 1, "cross_entropy", "logits must be at least 1-D, got shape {}",
             shape_str(logits.shape()));
  KILN_CHECK(opts.label_smoothing() >= 0.0 && opts.label_smoothing() <= 1.0, "cross_entropy",
             "label_smoothing must be in [0, 1], got {}", opts.label_smoothing());
  const std::int64_t cdim = logits.dim() == 1 ? 0 : 1;
  const std::int64_t C = logits.size(cdim);
  Shape expect = logits.shape();
  expect.erase(expect.begin() + cdim);
  KILN_CHECK(target.shape() == expect, "cross_entropy",
             "target shape {} does not match logits shape {}: expected {} (logits without the class dim {})",
             shape_str(target.shape()), shape_str(logits.shape()), shape_str(expect), cdim);
  Tensor valid = ne(target, scalar_on(opts.ignore_index(), kInt64, target.device()));
  Tensor safe = where(valid, target, scalar_on(0, kInt64, target.device()));
  if (safe.numel() > 0) {
    auto lo = amin(safe).item<std::int64_t>(), hi = amax(safe).item<std::int64_t>();
    KILN_CHECK(lo >= 0 && hi < C, "cross_entropy", "target {} is out of range for {} classes (ignore_index is {})",
               lo < 0 ? lo : hi, C, opts.ignore_index());
  }
  Tensor moved = cdim == 0 ? logits : (logits.dim() == 2 ? logits : transpose(logits, 1, -1));
  // moved: (..., C) with the same leading layout as target (for >2-D, dims after 1 are permuted once)
  Tensor tgt = safe, vmask = valid;
  if (logits.dim() > 2) {
    tgt = transpose(unsqueeze(safe, 1), 1, -1).squeeze(-1);
    vmask = transpose(unsqueeze(valid, 1), 1, -1).squeeze(-1);
  }
  Tensor lp = log_softmax(moved, -1);
  Tensor nll = neg(squeeze(gather(lp, -1, unsqueeze(tgt, -1)), -1));
  Tensor loss = nll;
  if (opts.label_smoothing() > 0) {
    double ls = opts.label_smoothing();
    Tensor smooth = neg(mean(lp, {-1}));
    loss = add(mul(nll, scalar_on(1.0 - ls, nll.dtype(), nll.device())),
               mul(smooth, scalar_on(ls, nll.dtype(), nll.device())));
  }
  loss = where(vmask, loss, zeros({}, TensorOptions(loss.dtype()).device(loss.device())));
  if (logits.dim() > 2) loss = transpose(unsqueeze(loss, 1), 1, -1).squeeze(-1);
  switch (opts.reduction()) {
    case Reduction::None: return loss;
    case Reduction::Sum: return sum(loss);
    case Reduction::Mean: return div(sum(loss), to(sum(valid), loss.dtype()));
  }
  return loss;
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  if (autocast_active()) {
    bool cast = false;
    Tensor ic = autocast_arg(input, kFloat32Policy, cast), tc = autocast_arg(target, kFloat32Policy, cast);
    if (cast) return mse_loss(ic, tc, reduction);
  }
  check_defined(input, "mse_loss");
  check_defined(target, "mse_loss", "target");
  KILN_CHECK(input.shape() == target.shape(), "mse_loss",
             "input shape {} and target shape {} differ (kiln does not broadcast losses)", shape_str(input.shape()),
             shape_str(target.shape()));
  Tensor d = sub(input, target);
  Tensor l = mul(d, d);
  switch (reduction) {
    case Reduction::None: return l;
    case Reduction::Sum: return sum(l);
    case Reduction::Mean: return mean(l);
  }
  return l;
}

}  // namespace kiln
