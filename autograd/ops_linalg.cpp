// matmul with NumPy semantics, on the backend's batched GEMM.
#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

// (batch..., r, c) -> (B, r, c) view if the batch dims collapse to one stride, else a copy.
Tensor as_3d(const Tensor& t) {
  std::int64_t nb = t.dim() - 2;
  std::int64_t B = 1;
  for (std::int64_t d = 0; d < nb; ++d) B *= t.size(d);
  std::int64_t bstride = 0;
  bool ok = true;
  std::int64_t expect = -1;
  for (std::int64_t d = nb - 1; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (expect < 0) {
      bstride = t.stride(d);
      expect = t.stride(d) * t.size(d);
    } else if (t.stride(d) != expect) {
      ok = false;
      break;
    } else {
      expect *= t.size(d);
    }
  }
  if (!ok) {
    Tensor c = contiguous_raw(t);
    return Tensor::make_view(c, {B, t.size(-2), t.size(-1)}, {t.size(-2) * t.size(-1), c.stride(-2), c.stride(-1)},
                             c.offset());
  }
  return Tensor::make_view(t, {B, t.size(-2), t.size(-1)}, {bstride, t.stride(-2), t.stride(-1)}, t.offset());
}

// Both operands >= 2-D with matching inner dims; batch dims broadcast.
Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  DType dt = promote_types(a.dtype(), b.dtype());
  std::int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape sa = batch, sb = batch, so = batch;
  sa.insert(sa.end(), {M, K});
  sb.insert(sb.end(), {K, N});
  so.insert(so.end(), {M, N});
  for (const Shape* s : {&sa, &sb, &so}) checked_numel(*s, "matmul");
  Tensor out = Tensor::empty(so, dt, a.device());
  Tensor a3 = as_3d(expand_raw(cast_raw(a, dt), sa, "matmul"));
  Tensor b3 = as_3d(expand_raw(cast_raw(b, dt), sb, "matmul"));
  Tensor o3 = Tensor::make_view(out, {a3.size(0), M, N}, {M * N, N, 1}, 0);
  backend(a, "matmul").matmul(a3, b3, o3);
  if (auto node = record("matmul", {a, b}, {out}, [](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor a = n.saved(0), b = n.saved(1);
        Tensor ga = n.next_edges[0].valid() ? reduce_grad(matmul(g[0], transpose(b, -1, -2)), a) : Tensor();
        Tensor gb = n.next_edges[1].valid() ? reduce_grad(matmul(transpose(a, -1, -2), g[0]), b) : Tensor();
        return std::vector<Tensor>{ga, gb};
      })) {
    node->save(a);
    node->save(b);
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (autocast_active()) {
    bool cast = false;
    Tensor ac = autocast_arg(a, kLowPrecision, cast), bc = autocast_arg(b, kLowPrecision, cast);
    if (cast) return matmul(ac, bc);
  }
  check_defined(a, "matmul");
  check_defined(b, "matmul");
  check_same_device("matmul", a, b);
  KILN_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul", "both arguments must be at least 1-D, got shapes {} and {}",
             shape_str(a.shape()), shape_str(b.shape()));
  KILN_CHECK(a.dtype() != kBool && b.dtype() != kBool, "matmul", "bool tensors are not supported (got {} and {})",
             dtype_name(a.dtype()), dtype_name(b.dtype()));
  std::int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
  KILN_CHECK(ka == kb, "matmul", "shapes {} and {} cannot be multiplied: {} != {}", shape_str(a.shape()),
             shape_str(b.shape()), ka, kb);
  if (a.dim() >= 2 && b.dim() >= 2) {
    // Batch dims must broadcast; the message shows the full shapes.
    const std::int64_t nb = std::max(a.dim(), b.dim()) - 2;
    for (std::int64_t i = 0; i < nb; ++i) {
      std::int64_t ia = a.dim() - 3 - i, ib = b.dim() - 3 - i;
      std::int64_t da = ia >= 0 ? a.size(ia) : 1, db = ib >= 0 ? b.size(ib) : 1;
      KILN_CHECK(da == db || da == 1 || db == 1, "matmul",
                 "shapes {} and {} cannot be multiplied: batch dims cannot be broadcast ({} != {})",
                 shape_str(a.shape()), shape_str(b.shape()), da, db);
    }
  }
  // (..., M, K) @ (K, N): fold the batch into M for one large GEMM when it is free.
  if (a.dim() >= 3 && b.dim() == 2) {
    Shape out_shape(a.shape().begin(), a.shape().end() - 1);
    out_shape.push_back(b.size(1));
    std::int64_t rows = 1;
    for (std::int64_t d = 0; d + 1 < a.dim(); ++d) rows *= a.size(d);
    Tensor a2 = reshape(a, {rows, ka});
    return reshape(matmul_nd(a2, b), out_shape);
  }
  Tensor a2 = a.dim() == 1 ? unsqueeze(a, 0) : a;
  Tensor b2 = b.dim() == 1 ? unsqueeze(b, 1) : b;
  Tensor r = matmul_nd(a2, b2);
  if (a.dim() == 1) r = squeeze(r, -2);
  if (b.dim() == 1) r = squeeze(r, -1);
  return r;
}

namespace {

// y = x @ weight^T (+ bias) as one node on one 2-D GEMM over the rows of x, the bias folded into
// it (Backend::matmul_bias). Its backward gives weight's gradient in weight's own layout
// (g^T @ x) and bias's as a sum over rows.
Tensor linear_node(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const std::int64_t K = weight.size(1), N = weight.size(0);
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(N);
  checked_numel(out_shape, "linear");
  const std::int64_t R = numel_of(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor xc = contiguous_raw(x);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor a3 = Tensor::make_view(xc, {1, R, K}, {R * K, K, 1}, xc.offset());
  Tensor w3 = Tensor::make_view(weight, {1, K, N}, {0, weight.stride(1), weight.stride(0)}, weight.offset());
  Tensor o3 = Tensor::make_view(out, {1, R, N}, {R * N, N, 1}, 0);
  Backend& be = backend(x, "linear");
  if (bias.defined()) be.matmul_bias(a3, w3, bias, o3);
  else be.matmul(a3, w3, o3);
  if (auto node = record("linear", {x, weight, bias}, {out}, [R, K, N](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor x = n.saved(0), w = n.saved(1);
        Tensor g2 = reshape(g[0], {R, N});
        const bool want_x = n.next_edges[0].valid(), want_w = n.next_edges[1].valid();
        Tensor gb = n.next_edges.size() > 2 && n.next_edges[2].valid() ? sum(g2, {0}) : Tensor();
        if (autograd::grad_enabled() || g2.dtype() != x.dtype()) {  // create_graph: differentiable matmuls
          Tensor gx = want_x ? reshape(matmul(g2, w), x.shape()) : Tensor();
          Tensor gw = want_w ? matmul(transpose(g2, 0, 1), reshape(x, {R, K})) : Tensor();
          return std::vector<Tensor>{gx, gw, gb};
        }
        // Both products in one backend call, which may share work between them.
        Tensor gx = want_x ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
        Tensor gw = want_w ? Tensor::empty({N, K}, x.dtype(), x.device()) : Tensor();
        backend(x, "linear").linear_backward(g2, reshape(x, {R, K}), w, want_x ? reshape(gx, {R, K}) : Tensor(), gw);
        return std::vector<Tensor>{gx, gw, gb};
      })) {
    node->save(x);
    node->save(weight);
  }
  return out;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (autocast_active()) {
    bool cast = false;
    Tensor xc = autocast_arg(x, kLowPrecision, cast), wc = autocast_arg(weight, kLowPrecision, cast),
           bc = autocast_arg(bias, kLowPrecision, cast);
    if (cast) return linear(xc, wc, bc);
  }
  check_defined(x, "linear");
  check_defined(weight, "linear", "weight");
  KILN_CHECK(weight.dim() == 2, "linear", "weight must be 2-D (out_features, in_features), got shape {}",
             shape_str(weight.shape()));
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear",
             "input shape {} does not match weight shape {}: last dim {} != in_features {}", shape_str(x.shape()),
             shape_str(weight.shape()), x.dim() ? x.size(-1) : 0, weight.size(1));
  if (bias.defined())
    KILN_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear", "bias must have shape ({},), got {}",
               weight.size(0), shape_str(bias.shape()));
  // One dtype on one device: the fused node. Mixed dtypes or devices take matmul's promotion
  // and checks, then the broadcast add.
  const bool same = x.dtype() == weight.dtype() && x.device() == weight.device() &&
                    (!bias.defined() || (bias.dtype() == x.dtype() && bias.device() == x.device()));
  if (same && x.is_floating_point()) return linear_node(x, weight, bias);
  Tensor y = matmul(x, transpose(weight, 0, 1));
  return bias.defined() ? add(y, bias) : y;
}

}  // namespace kiln
