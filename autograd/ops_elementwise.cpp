// Elementwise ops: forward on the backend, backward from differentiable ops.
#include <cmath>
#include <limits>

#include "internal.hpp"

namespace kiln {
using namespace detail;
using autograd::FunctionNode;
using autograd::record;

namespace {

constexpr double kPi = 3.14159265358979323846;

struct Prepared {
  Tensor a, b;
  Shape shape;
};

// Validates and broadcasts two operands to a common shape and dtype (views only).
Prepared prepare_binary(const Tensor& a, const Tensor& b, const char* op, DType compute) {
  check_defined(a, op);
  check_defined(b, op);
  check_same_device(op, a, b);
  Prepared p;
  p.shape = broadcast_shapes(a.shape(), b.shape(), op);
  p.a = expand_raw(cast_raw(a, compute), p.shape, op);
  p.b = expand_raw(cast_raw(b, compute), p.shape, op);
  return p;
}

Tensor binary_forward(BinaryOp bop, const Tensor& a, const Tensor& b, const char* op, DType compute) {
  Prepared p = prepare_binary(a, b, op, compute);
  Tensor out = Tensor::empty(p.shape, compute, a.device());
  backend(a, op).binary(bop, p.a, p.b, out);
  return out;
}

Tensor unary_raw(UnaryOp uop, const Tensor& x, DType dtype, double pa = 0, double pb = 0, const char* op = "unary") {
  Tensor xin = cast_raw(x, dtype);
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  backend(x, op).unary(uop, xin, out, pa, pb);
  return out;
}

// Float-valued functions promote integer inputs to float32.
DType float_type(const Tensor& x) { return x.is_floating_point() ? x.dtype() : kFloat32; }

// 1 where x > threshold else 0, same dtype as x (no grad).
Tensor step(const Tensor& x, double threshold) { return unary_raw(UnaryOp::Step, x, x.dtype(), threshold); }

Tensor scalar_for(const Tensor& t, const Scalar& s) {
  return scalar_on(s, result_type_with_scalar(t.dtype(), s.kind()), t.device());
}

Tensor cscalar(double v, const Tensor& like) { return scalar_on(v, like.dtype(), like.device()); }

// Whether the 16-bit dtype `dt` holds the float32 value of v exactly.
bool reduced_holds(DType dt, double v) {
  const float f = static_cast<float>(v);
  return static_cast<float>(dt == kBFloat16 ? static_cast<float>(BFloat16(f)) : static_cast<float>(Half(f))) == f;
}

// PyTorch multiplies and divides a bfloat16/float16 tensor by a number, or by a 0-dim tensor of
// another floating dtype, in float32 with the number at float32 precision, rounding only the
// result: x * 0.1 is bf16(x * 0.1f), not bf16(x * bf16(0.1)).
Tensor mul_div_in_float32(const Tensor& a, const Tensor& b, DType dt, bool divide) {
  Tensor a32 = to(a, kFloat32), b32 = to(b, kFloat32);
  return to(divide ? div(a32, b32) : mul(a32, b32), dt);
}
bool wide_scalar_operand(const Tensor& b, DType dt) {
  return is_reduced_float(dt) && b.dim() == 0 && is_floating(b.dtype()) && b.dtype() != dt;
}

// t * s and t / s for a number s (Python's scalar semantics for the dtype).
Tensor mul_div_number(const Tensor& t, const Scalar& s, bool divide) {
  const DType dt = result_type_with_scalar(t.dtype(), s.kind());
  if (is_reduced_float(dt) && !reduced_holds(dt, s.to_double()))
    return mul_div_in_float32(t, scalar_on(s, kFloat32, t.device()), dt, divide);
  Tensor n = scalar_for(t, s);
  return divide ? div(t, n) : mul(t, n);
}

// a + alpha * b (sub: a - alpha * b) with alpha != 1, as PyTorch: an integral result takes no
// floating alpha; a 16-bit result is computed in float32 (alpha rounded to the dtype) and rounded once.
Tensor add_scaled(const Tensor& a, const Tensor& b, const Scalar& alpha, bool subtract, const char* op) {
  const DType dt = result_type(a, b);
  KILN_CHECK(is_floating(dt) || !alpha.is_floating(), op,
             "alpha must not be a floating point number ({}) for a {} result", alpha.to_double(), dtype_name(dt));
  if (is_reduced_float(dt)) {
    Tensor al = cast_raw(scalar_on(alpha, dt, b.device()), kFloat32);
    Tensor a32 = to(a, kFloat32), sb = mul(to(b, kFloat32), al);
    return to(subtract ? sub(a32, sb) : add(a32, sb), dt);
  }
  Tensor sb = mul(b, scalar_for(b, alpha));
  return subtract ? sub(a, sb) : add(a, sb);
}

// Records a one-input op; backward(g, x, y) gets the saved input and (if save_out) output.
template <typename F>
void record_unary(const char* op, const Tensor& x, const Tensor& y, bool save_out, F backward) {
  if (auto node = record(op, {x}, {y}, [backward, save_out](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor xs = n.saved(0);
        Tensor ys = save_out ? n.saved(1) : Tensor();
        Tensor gx = backward(g[0], xs, ys);
        return std::vector<Tensor>{gx.dtype() == xs.dtype() ? gx : to(gx, xs.dtype())};
      })) {
    node->save(x);
    if (save_out) node->save(y, true);
  }
}

template <typename F>
Tensor float_unary(UnaryOp uop, const Tensor& x, const char* op, bool save_out, F backward) {
  check_defined(x, op);
  Tensor y = unary_raw(uop, x, float_type(x), 0, 0, op);
  record_unary(op, x, y, save_out, backward);
  return y;
}

// gx = g * op'(v) in one backend pass (v: the op's input, or its output for tanh and sigmoid).
// Undefined when the caller must build the composite instead: under create_graph (the
// composite is differentiable) or when g does not match v (dtype, shape, device).
Tensor fused_unary_grad(UnaryOp uop, const Tensor& g, const Tensor& v) {
  if (autograd::grad_enabled() || !v.is_floating_point() || g.dtype() != v.dtype() || g.shape() != v.shape() ||
      g.device() != v.device())
    return Tensor();
  Tensor gx = Tensor::empty(v.shape(), v.dtype(), v.device());
  backend(v, "unary_backward").unary_backward(uop, g, v, gx);
  return gx;
}

Tensor compare_op(CompareOp cop, const Tensor& a, const Tensor& b, const char* op) {
  Prepared p = prepare_binary(a, b, op, result_type(a, b));
  Tensor out = Tensor::empty(p.shape, kBool, a.device());
  backend(a, op).compare(cop, p.a, p.b, out);
  return out;
}

// Records a two-input op with backward(g, a, b, out) -> {ga, gb} at the broadcast shape.
template <typename F>
void record_binary(const char* op, const Tensor& a, const Tensor& b, const Tensor& out, bool save_out, F backward) {
  if (auto node = record(op, {a, b}, {out}, [backward, save_out](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor as = n.saved(0), bs = n.saved(1);
        Tensor os = save_out ? n.saved(2) : Tensor();
        auto [ga, gb] = backward(g[0], as, bs, os, n.next_edges[0].valid(), n.next_edges[1].valid());
        return std::vector<Tensor>{ga.defined() ? reduce_grad(ga, as) : ga, gb.defined() ? reduce_grad(gb, bs) : gb};
      })) {
    node->save(a);
    node->save(b);
    if (save_out) node->save(out, true);
  }
}

}  // namespace

// ---------------- binary ----------------

Tensor add(const Tensor& a, const Tensor& b, const Scalar& alpha) {
  check_defined(a, "add");
  check_defined(b, "add");
  if (alpha.to_double() != 1.0) return add_scaled(a, b, alpha, false, "add");
  Tensor out = binary_forward(BinaryOp::Add, a, b, "add", result_type(a, b));
  Shape sa = a.shape(), sb = b.shape();
  DType da = a.dtype(), db = b.dtype();
  // add keeps no tensors: only shapes and dtypes are needed for its gradient.
  record("add", {a, b}, {out}, [sa, sb, da, db](FunctionNode& n, std::vector<Tensor>& g) {
    Tensor ga, gb;
    if (n.next_edges[0].valid()) ga = to(sum_to_shape(g[0], sa), da);
    if (n.next_edges[1].valid()) gb = to(sum_to_shape(g[0], sb), db);
    return std::vector<Tensor>{ga, gb};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b, const Scalar& alpha) {
  check_defined(a, "sub");
  check_defined(b, "sub");
  KILN_CHECK(a.dtype() != kBool && b.dtype() != kBool, "sub",
             "subtraction with a bool tensor ({} - {}) is not supported; use logical_not to invert a mask",
             dtype_name(a.dtype()), dtype_name(b.dtype()));
  if (alpha.to_double() != 1.0) return add_scaled(a, b, alpha, true, "sub");
  Tensor out = binary_forward(BinaryOp::Sub, a, b, "sub", result_type(a, b));
  Shape sa = a.shape(), sb = b.shape();
  DType da = a.dtype(), db = b.dtype();
  record("sub", {a, b}, {out}, [sa, sb, da, db](FunctionNode& n, std::vector<Tensor>& g) {
    Tensor ga, gb;
    if (n.next_edges[0].valid()) ga = to(sum_to_shape(g[0], sa), da);
    if (n.next_edges[1].valid()) gb = to(sum_to_shape(neg(g[0]), sb), db);
    return std::vector<Tensor>{ga, gb};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_defined(a, "mul");
  check_defined(b, "mul");
  const DType dt = result_type(a, b);
  if (wide_scalar_operand(b, dt)) return mul_div_in_float32(a, b, dt, false);
  Tensor out = binary_forward(BinaryOp::Mul, a, b, "mul", dt);
  record_binary("mul", a, b, out, false,
                [](const Tensor& g, const Tensor& a, const Tensor& b, const Tensor&, bool na, bool nb) {
                  return std::pair<Tensor, Tensor>{na ? mul(g, b) : Tensor(), nb ? mul(g, a) : Tensor()};
                });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  check_defined(a, "div");
  check_defined(b, "div");
  DType dt = result_type(a, b);
  if (!is_floating(dt)) dt = kFloat32;
  if (wide_scalar_operand(b, dt)) return mul_div_in_float32(a, b, dt, true);
  Tensor out = binary_forward(BinaryOp::Div, a, b, "div", dt);
  record_binary("div", a, b, out, false,
                [](const Tensor& g, const Tensor& a, const Tensor& b, const Tensor&, bool na, bool nb) {
                  Tensor ga = na ? div(g, b) : Tensor();
                  Tensor gb = nb ? neg(div(mul(g, a), mul(b, b))) : Tensor();
                  return std::pair<Tensor, Tensor>{ga, gb};
                });
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  check_defined(a, "pow");
  check_defined(b, "pow");
  Tensor out = binary_forward(BinaryOp::Pow, a, b, "pow", result_type(a, b));
  record_binary("pow", a, b, out, true,
                [](const Tensor& g, const Tensor& a, const Tensor& b, const Tensor& y, bool na, bool nb) {
                  Tensor ga, gb;
                  if (na) ga = mul(g, mul(b, pow(a, sub(b, cscalar(1, b)))));
                  if (nb) {
                    // d/db a^b = a^b log a, taken as 0 where a == 0 (the limit for b > 0).
                    Tensor la = where(eq(a, cscalar(0, a)), cscalar(0, a), log(a));
                    gb = mul(g, mul(y, la));
                  }
                  return std::pair<Tensor, Tensor>{ga, gb};
                });
  return out;
}

Tensor pow(const Tensor& a, const Scalar& e) {
  check_defined(a, "pow");
  double ev = e.to_double();
  KILN_CHECK(is_floating(a.dtype()) || e.is_floating() || ev >= 0, "pow",
             "integers to negative integer powers are not allowed ({} tensor to the power {})", dtype_name(a.dtype()),
             e.to_int());
  if (e.is_floating() || ev < 0) {
    DType dt = result_type_with_scalar(a.dtype(), e.kind());
    if (ev < 0 && !is_floating(dt)) dt = kFloat32;
    Tensor y = unary_raw(UnaryOp::PowScalar, a, dt, ev, 0, "pow");
    record_unary("pow", a, y, false, [ev](const Tensor& g, const Tensor& x, const Tensor&) {
      if (ev == 0) return zeros_like(g);
      return mul(g, mul(cscalar(ev, g), pow(to(x, g.dtype()), ev - 1)));
    });
    return y;
  }
  Tensor y = unary_raw(UnaryOp::PowScalar, a, a.dtype() == kBool ? kInt64 : a.dtype(), ev, 0, "pow");
  record_unary("pow", a, y, false, [ev](const Tensor& g, const Tensor& x, const Tensor&) {
    if (ev == 0) return zeros_like(g);
    if (ev == 1) return g;
    return mul(g, mul(cscalar(ev, g), pow(x, static_cast<std::int64_t>(ev) - 1)));
  });
  return y;
}

Tensor pow(const Scalar& base, const Tensor& e) { return pow(scalar_for(e, base), e); }

namespace {
Tensor minmax(BinaryOp bop, const Tensor& a, const Tensor& b, const char* op) {
  check_defined(a, op);
  check_defined(b, op);
  Tensor out = binary_forward(bop, a, b, op, result_type(a, b));
  bool is_max = bop == BinaryOp::Maximum;
  record_binary(op, a, b, out, false,
                [is_max](const Tensor& g, const Tensor& a, const Tensor& b, const Tensor&, bool, bool) {
                  // Ties share the gradient evenly, as PyTorch does.
                  Tensor ae = to(is_max ? gt(a, b) : lt(a, b), g.dtype());
                  Tensor tie = mul(to(eq(a, b), g.dtype()), cscalar(0.5, g));
                  Tensor be = to(is_max ? lt(a, b) : gt(a, b), g.dtype());
                  return std::pair<Tensor, Tensor>{mul(g, add(ae, tie)), mul(g, add(be, tie))};
                });
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return minmax(BinaryOp::Maximum, a, b, "maximum"); }
Tensor minimum(const Tensor& a, const Tensor& b) { return minmax(BinaryOp::Minimum, a, b, "minimum"); }

// ---------------- unary ----------------

Tensor neg(const Tensor& x) {
  check_defined(x, "neg");
  KILN_CHECK(x.dtype() != kBool, "neg", "negation of a bool tensor is not supported; use logical_not");
  Tensor y = unary_raw(UnaryOp::Neg, x, x.dtype(), 0, 0, "neg");
  if (auto node =
          record("neg", {x}, {y}, [](FunctionNode&, std::vector<Tensor>& g) { return std::vector<Tensor>{neg(g[0])}; }))
    (void)node;
  return y;
}

Tensor exp(const Tensor& x) {
  return float_unary(UnaryOp::Exp, x, "exp", true,
                     [](const Tensor& g, const Tensor&, const Tensor& y) { return mul(g, y); });
}
Tensor log(const Tensor& x) {
  return float_unary(UnaryOp::Log, x, "log", false,
                     [](const Tensor& g, const Tensor& x, const Tensor&) { return div(g, x); });
}
Tensor sqrt(const Tensor& x) {
  return float_unary(UnaryOp::Sqrt, x, "sqrt", true,
                     [](const Tensor& g, const Tensor&, const Tensor& y) { return div(g, mul(y, cscalar(2, y))); });
}
Tensor rsqrt(const Tensor& x) {
  return float_unary(UnaryOp::Rsqrt, x, "rsqrt", true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return mul(g, mul(cscalar(-0.5, y), mul(y, mul(y, y))));
  });
}
Tensor abs(const Tensor& x) {
  check_defined(x, "abs");
  Tensor y = unary_raw(UnaryOp::Abs, x, x.dtype(), 0, 0, "abs");
  record_unary("abs", x, y, false, [](const Tensor& g, const Tensor& x, const Tensor&) { return mul(g, sign(x)); });
  return y;
}
Tensor sign(const Tensor& x) {
  check_defined(x, "sign");
  Tensor y = unary_raw(UnaryOp::Sign, x, x.dtype(), 0, 0, "sign");
  record_unary("sign", x, y, false, [](const Tensor& g, const Tensor&, const Tensor&) { return zeros_like(g); });
  return y;
}
Tensor square(const Tensor& x) {
  check_defined(x, "square");
  Tensor y = unary_raw(UnaryOp::Square, x, x.dtype() == kBool ? kInt64 : x.dtype(), 0, 0, "square");
  record_unary("square", x, y, false,
               [](const Tensor& g, const Tensor& x, const Tensor&) { return mul(g, mul(x, cscalar(2, x))); });
  return y;
}
Tensor reciprocal(const Tensor& x) {
  return float_unary(UnaryOp::Reciprocal, x, "reciprocal", true,
                     [](const Tensor& g, const Tensor&, const Tensor& y) { return neg(mul(g, mul(y, y))); });
}
Tensor sin(const Tensor& x) {
  return float_unary(UnaryOp::Sin, x, "sin", false,
                     [](const Tensor& g, const Tensor& x, const Tensor&) { return mul(g, cos(x)); });
}
Tensor cos(const Tensor& x) {
  return float_unary(UnaryOp::Cos, x, "cos", false,
                     [](const Tensor& g, const Tensor& x, const Tensor&) { return neg(mul(g, sin(x))); });
}
Tensor erf(const Tensor& x) {
  return float_unary(UnaryOp::Erf, x, "erf", false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    return mul(g, mul(cscalar(2.0 / std::sqrt(kPi), x), exp(neg(mul(x, x)))));
  });
}
Tensor tanh(const Tensor& x) {
  return float_unary(UnaryOp::Tanh, x, "tanh", true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    if (Tensor gx = fused_unary_grad(UnaryOp::Tanh, g, y); gx.defined()) return gx;
    return mul(g, sub(cscalar(1, y), mul(y, y)));
  });
}
Tensor sigmoid(const Tensor& x) {
  return float_unary(UnaryOp::Sigmoid, x, "sigmoid", true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    if (Tensor gx = fused_unary_grad(UnaryOp::Sigmoid, g, y); gx.defined()) return gx;
    return mul(g, mul(y, sub(cscalar(1, y), y)));
  });
}
Tensor relu(const Tensor& x) {
  check_defined(x, "relu");
  KILN_CHECK(x.dtype() != kBool, "relu", "relu of a bool tensor is not supported");
  Tensor y = unary_raw(UnaryOp::Relu, x, x.dtype(), 0, 0, "relu");
  record_unary("relu", x, y, false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    if (Tensor gx = fused_unary_grad(UnaryOp::Relu, g, x); gx.defined()) return gx;
    return mul(g, step(x, 0.0));
  });
  return y;
}
Tensor gelu(const Tensor& x, const std::string& approximate) {
  KILN_CHECK(approximate == "none" || approximate == "tanh", "gelu",
             "approximate must be \"none\" or \"tanh\", got \"{}\"", approximate);
  if (approximate == "none")
    return float_unary(UnaryOp::GeluErf, x, "gelu", false, [](const Tensor& g, const Tensor& x, const Tensor&) {
      // One backend pass, one activation-sized output (this is the peak of a transformer's
      // backward, where every activation is still held); create_graph: differentiable ops.
      if (Tensor gx = fused_unary_grad(UnaryOp::GeluErf, g, x); gx.defined()) return gx;
      // Phi(x) + x * phi(x)
      Tensor cdf = mul(cscalar(0.5, x), add(cscalar(1, x), erf(mul(x, cscalar(M_SQRT1_2, x)))));
      Tensor pdf = mul(cscalar(1.0 / std::sqrt(2 * kPi), x), exp(mul(mul(x, x), cscalar(-0.5, x))));
      return mul(g, add(cdf, mul(x, pdf)));
    });
  return float_unary(UnaryOp::GeluTanh, x, "gelu", false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    if (Tensor gx = fused_unary_grad(UnaryOp::GeluTanh, g, x); gx.defined()) return gx;
    const double k = std::sqrt(2.0 / kPi), c = 0.044715;
    Tensor x2 = mul(x, x);
    Tensor t = tanh(mul(cscalar(k, x), add(x, mul(cscalar(c, x), mul(x2, x)))));
    Tensor left = mul(cscalar(0.5, x), add(cscalar(1, x), t));
    Tensor dt = mul(sub(cscalar(1, x), mul(t, t)), mul(cscalar(k, x), add(cscalar(1, x), mul(cscalar(3 * c, x), x2))));
    return mul(g, add(left, mul(mul(cscalar(0.5, x), x), dt)));
  });
}
Tensor silu(const Tensor& x) {
  return float_unary(UnaryOp::Silu, x, "silu", false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    if (Tensor gx = fused_unary_grad(UnaryOp::Silu, g, x); gx.defined()) return gx;
    Tensor s = sigmoid(x);
    return mul(g, mul(s, add(cscalar(1, x), mul(x, sub(cscalar(1, x), s)))));
  });
}
Tensor hardswish(const Tensor& x) {
  return float_unary(UnaryOp::Hardswish, x, "hardswish", false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    if (Tensor gx = fused_unary_grad(UnaryOp::Hardswish, g, x); gx.defined()) return gx;
    // PyTorch's convention at the kinks: both -3 and 3 take the middle piece x / 3 + 1/2.
    Tensor mid = add(mul(x, cscalar(1.0 / 3, x)), cscalar(0.5, x));
    Tensor d = where(lt(x, cscalar(-3, x)), Scalar(0.0), where(le(x, cscalar(3, x)), mid, Scalar(1.0)));
    return mul(g, d);
  });
}

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  check_defined(x, "clamp");
  KILN_CHECK(lo || hi, "clamp", "at least one of min and max must be given");
  KILN_CHECK(!lo || !hi || *lo <= *hi, "clamp", "min ({}) must not exceed max ({})", *lo, *hi);
  KILN_CHECK(x.dtype() != kBool, "clamp", "clamp of a bool tensor is not supported");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double a = lo ? *lo : nan, b = hi ? *hi : nan;
  DType dt = x.dtype();
  if (!is_floating(dt) && ((lo && *lo != std::floor(*lo)) || (hi && *hi != std::floor(*hi)))) dt = kFloat32;
  Tensor y = unary_raw(UnaryOp::Clamp, x, dt, a, b, "clamp");
  record_unary("clamp", x, y, false, [lo, hi](const Tensor& g, const Tensor& x, const Tensor&) {
    Tensor keep = ones_like(g);
    if (lo) keep = mul(keep, to(ge(x, cscalar(*lo, x)), g.dtype()));
    if (hi) keep = mul(keep, to(le(x, cscalar(*hi, x)), g.dtype()));
    return mul(g, keep);
  });
  return y;
}
Tensor clamp_min(const Tensor& x, double m) { return clamp(x, m, std::nullopt); }
Tensor clamp_max(const Tensor& x, double m) { return clamp(x, std::nullopt, m); }

// ---------------- where / masked_fill ----------------

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined(cond, "where", "condition");
  check_defined(a, "where");
  check_defined(b, "where");
  KILN_CHECK(cond.dtype() == kBool, "where", "condition must be a bool tensor, got {}", dtype_name(cond.dtype()));
  check_same_device("where", cond, a);
  check_same_device("where", a, b);
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  DType dt = result_type(a, b);
  Tensor out = Tensor::empty(shape, dt, a.device());
  backend(a, "where")
      .where(expand_raw(cond, shape, "where"), expand_raw(cast_raw(a, dt), shape, "where"),
             expand_raw(cast_raw(b, dt), shape, "where"), out);
  if (auto node = record("where", {a, b}, {out}, [](FunctionNode& n, std::vector<Tensor>& g) {
        Tensor c = n.saved(0), a = n.saved(1), b = n.saved(2);
        Tensor z = zeros({}, TensorOptions(g[0].dtype()).device(g[0].device()));
        Tensor ga = n.next_edges[0].valid() ? reduce_grad(where(c, g[0], z), a) : Tensor();
        Tensor gb = n.next_edges[1].valid() ? reduce_grad(where(c, z, g[0]), b) : Tensor();
        return std::vector<Tensor>{ga, gb};
      })) {
    node->save(cond);
    node->save(a);
    node->save(b);
  }
  return out;
}
Tensor where(const Tensor& cond, const Tensor& a, const Scalar& b) { return where(cond, a, scalar_for(a, b)); }
Tensor where(const Tensor& cond, const Scalar& a, const Tensor& b) { return where(cond, scalar_for(b, a), b); }

Tensor masked_fill(const Tensor& x, const Tensor& mask, const Scalar& value) {
  check_defined(x, "masked_fill");
  check_defined(mask, "masked_fill", "mask");
  KILN_CHECK(mask.dtype() == kBool, "masked_fill", "mask must be a bool tensor, got {}", dtype_name(mask.dtype()));
  Shape b = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  KILN_CHECK(b == x.shape(), "masked_fill", "mask of shape {} cannot be broadcast to the input's shape {}",
             shape_str(mask.shape()), shape_str(x.shape()));
  KILN_CHECK(is_floating(x.dtype()) || !value.is_floating(), "masked_fill",
             "cannot fill a {} tensor with the floating point value {}", dtype_name(x.dtype()), value.to_double());
  return where(mask, scalar_on(value, x.dtype(), x.device()), x);
}

// ---------------- comparisons and logic ----------------

Tensor eq(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Eq, a, b, "eq"); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Ne, a, b, "ne"); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Lt, a, b, "lt"); }
Tensor le(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Le, a, b, "le"); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Gt, a, b, "gt"); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Ge, a, b, "ge"); }
Tensor logical_and(const Tensor& a, const Tensor& b) {
  Prepared p = prepare_binary(a, b, "logical_and", kBool);
  Tensor out = Tensor::empty(p.shape, kBool, a.device());
  backend(a, "logical_and").binary(BinaryOp::LogicalAnd, p.a, p.b, out);
  return out;
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  Prepared p = prepare_binary(a, b, "logical_or", kBool);
  Tensor out = Tensor::empty(p.shape, kBool, a.device());
  backend(a, "logical_or").binary(BinaryOp::LogicalOr, p.a, p.b, out);
  return out;
}
Tensor logical_not(const Tensor& x) {
  check_defined(x, "logical_not");
  Tensor out = Tensor::empty(x.shape(), kBool, x.device());
  backend(x, "logical_not").unary(UnaryOp::LogicalNot, x, out, 0, 0);
  return out;
}
Tensor isnan(const Tensor& x) { return ne(x, x); }
Tensor isfinite(const Tensor& x) {
  check_defined(x, "isfinite");
  if (!x.is_floating_point()) return full(x.shape(), true, TensorOptions(kBool).device(x.device()));
  // finite <=> x - x == 0 (inf - inf and nan give nan)
  Tensor d = binary_forward(BinaryOp::Sub, x, x, "isfinite", x.dtype());
  return compare_op(CompareOp::Eq, d, zeros({}, TensorOptions(x.dtype()).device(x.device())), "isfinite");
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol, bool equal_nan) {
  check_defined(a, "allclose");
  check_defined(b, "allclose");
  Shape s = broadcast_shapes(a.shape(), b.shape(), "allclose");
  auto av = expand_raw(a, s, "allclose").to_vector<double>();
  auto bv = expand_raw(b, s, "allclose").to_vector<double>();
  for (std::size_t i = 0; i < av.size(); ++i) {
    double x = av[i], y = bv[i];
    if (std::isnan(x) || std::isnan(y)) {
      if (!(equal_nan && std::isnan(x) && std::isnan(y))) return false;
      continue;
    }
    if (x == y) continue;
    if (std::isinf(x) || std::isinf(y)) return false;  // an infinity is close only to itself
    if (!(std::abs(x - y) <= atol + rtol * std::abs(y))) return false;
  }
  return true;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  return a.to_vector<double>() == b.to_vector<double>();
}

// ---------------- operators ----------------

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, const Scalar& b) { return add(a, scalar_for(a, b)); }
Tensor operator-(const Tensor& a, const Scalar& b) {
  KILN_CHECK(b.kind() != kBool, "sub", "subtraction of a bool value is not supported");
  return sub(a, scalar_for(a, b));
}
Tensor operator*(const Tensor& a, const Scalar& b) { return mul_div_number(a, b, false); }
Tensor operator/(const Tensor& a, const Scalar& b) { return mul_div_number(a, b, true); }
Tensor operator+(const Scalar& a, const Tensor& b) { return add(scalar_for(b, a), b); }
Tensor operator-(const Scalar& a, const Tensor& b) {
  KILN_CHECK(a.kind() != kBool, "sub", "subtraction of a bool value is not supported");
  return sub(scalar_for(b, a), b);
}
Tensor operator*(const Scalar& a, const Tensor& b) { return mul_div_number(b, a, false); }
// As Python's `s / t` on a torch tensor (Tensor.__rtruediv__): reciprocal(t) * s.
Tensor operator/(const Scalar& a, const Tensor& b) { return mul_div_number(reciprocal(b), a, false); }
Tensor operator==(const Tensor& a, const Tensor& b) { return eq(a, b); }
Tensor operator!=(const Tensor& a, const Tensor& b) { return ne(a, b); }
Tensor operator<(const Tensor& a, const Tensor& b) { return lt(a, b); }
Tensor operator<=(const Tensor& a, const Tensor& b) { return le(a, b); }
Tensor operator>(const Tensor& a, const Tensor& b) { return gt(a, b); }
Tensor operator>=(const Tensor& a, const Tensor& b) { return ge(a, b); }
Tensor operator==(const Tensor& a, const Scalar& b) { return eq(a, scalar_for(a, b)); }
Tensor operator!=(const Tensor& a, const Scalar& b) { return ne(a, scalar_for(a, b)); }
Tensor operator<(const Tensor& a, const Scalar& b) { return lt(a, scalar_for(a, b)); }
Tensor operator<=(const Tensor& a, const Scalar& b) { return le(a, scalar_for(a, b)); }
Tensor operator>(const Tensor& a, const Scalar& b) { return gt(a, scalar_for(a, b)); }
Tensor operator>=(const Tensor& a, const Scalar& b) { return ge(a, scalar_for(a, b)); }
Tensor operator&(const Tensor& a, const Tensor& b) { return logical_and(a, b); }
Tensor operator|(const Tensor& a, const Tensor& b) { return logical_or(a, b); }
Tensor operator~(const Tensor& a) { return logical_not(a); }

}  // namespace kiln
