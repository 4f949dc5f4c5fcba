#pragma once
/// The seam between ops and devices. Every primitive a device must provide is a
/// virtual here; ops (autograd/) validate arguments, allocate outputs with the
/// device's allocator and call these. Outputs are contiguous unless said
/// otherwise; inputs may be any strided view (broadcast inputs have 0 strides)
/// and, for binary/ternary ops, already have the output's shape and dtype.
/// Adding a device = implementing this class and registering it.
#include <cstdint>
#include <vector>

#include "generator.hpp"
#include "tensor.hpp"

namespace kiln {

enum class UnaryOp : std::uint8_t {
  Neg,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Abs,
  Sign,
  Tanh,
  Sigmoid,
  Relu,
  GeluErf,
  GeluTanh,
  Silu,
  Hardswish,
  Erf,
  Reciprocal,
  Square,
  Sin,
  Cos,
  LogicalNot,
  PowScalar,  // x ** a
  Clamp,      // clamp(x, a, b); NaN bound = no bound
  Step,       // 1 where x > a else 0 (relu' and similar)
};

enum class BinaryOp : std::uint8_t { Add, Sub, Mul, Div, Pow, Maximum, Minimum, LogicalAnd, LogicalOr };
enum class CompareOp : std::uint8_t { Eq, Ne, Lt, Le, Gt, Ge };
enum class ReduceOp : std::uint8_t { Sum, Mean, Max, Min, Prod };

/// Draw parameters for Backend::random_.
struct RandomSpec {
  enum Kind : std::uint8_t { Uniform, Normal, Int, Bernoulli } kind = Uniform;
  double a = 0, b = 1;  // uniform [a, b); normal (mean a, std b); int [a, b); bernoulli keep-prob a, value b
  std::uint64_t seed = 0, offset = 0;  // Philox key and first counter
};

/// Inputs of the fused attention kernels (scaled dot-product attention, flash style).
///   q (N, H, T, Dk), k (N, Hkv, S, Dk), v (N, Hkv, S, Dv): one float dtype, any strides;
///   query head h reads kv head h / (H / Hkv) (grouped-query attention).
///   mask: undefined, or bool (true = may attend) or q's dtype (added to the logits), with
///   shape (N, H, T, S) and any strides (broadcast views have 0 strides).
///   alibi, sinks: undefined, or (N, H) of q's dtype, any strides (see below).
/// Query t sits at absolute position p = S - T + t (bottom-right aligned). Logits are
/// scale * q.k + mask - alibi[n, h] * |p - s|; causal keeps key s when s <= p; the window keeps
/// p - window_left <= s <= p + window_right (a negative width is unbounded); a -inf logit
/// counts as masked. A sink adds exp(sinks[n, h]) to every row's softmax denominator (no value).
/// Masked entries are skipped, never multiplied by 0, so NaN/Inf in masked-out keys/values
/// cannot leak; a query with no key left to attend to gets output 0 and gradient 0.
struct AttentionArgs {
  Tensor q, k, v, mask;
  Tensor alibi, sinks;
  double scale = 1.0;
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  /// Dropout on the probabilities: keep with keep_prob, scale kept ones by 1/keep_prob. The keep
  /// decision for (n*H + h, t, s) comes from Philox (seed, offset + attention_dropout_counters
  /// position), so backward and attention_dropout_mask regenerate it without storing it.
  double keep_prob = 1.0;
  std::uint64_t seed = 0, offset = 0;
};

/// Philox counters one attention call with dropout consumes (reserve them from a Generator).
inline std::uint64_t attention_dropout_counters(std::int64_t N, std::int64_t H, std::int64_t T, std::int64_t S) {
  // 16 counters (64 words) per started block of 64 keys, per (n, h, t) row.
  return static_cast<std::uint64_t>(N * H * T) * static_cast<std::uint64_t>((S + 63) / 64 * 16);
}

/// Gradient outputs of Backend::attention_backward; gmask, galibi and gsinks may be undefined.
struct AttentionGrads {
  Tensor gq, gk, gv;  // shapes of q, k, v; any strides (no overlap)
  Tensor gmask;       // undefined or contiguous (N, H, T, S): d loss / d logits
  Tensor galibi;      // undefined or contiguous (N, H): d loss / d alibi
  Tensor gsinks;      // undefined or contiguous (N, H): d loss / d sinks
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Allocator& allocator() = 0;

  /// dst (any strides) <- src (same shape, any strides, any dtype), on this device.
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  /// Copies between this device and the host (contiguous, same dtype and byte count).
  virtual void copy_to_host(void* dst, const Tensor& src) = 0;
  virtual void copy_from_host(const Tensor& dst, const void* src) = 0;
  /// dst <- src, a contiguous pinned host tensor of the same dtype and shape. The copy may still
  /// run when the call returns; the backend keeps src's block from being handed out again
  /// until it has (Tensor::to with non_blocking).
  virtual void copy_from_pinned(const Tensor& dst, const Tensor& src) { copy_from_host(dst, src.raw_data()); }
  /// Fills a (possibly strided) tensor.
  virtual void fill(const Tensor& dst, const Scalar& v) = 0;

  /// out = op(x [, a, b]); x has out's dtype except LogicalNot (-> bool) and Step.
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a = 0, double b = 0) = 0;
  virtual void binary(BinaryOp op, const Tensor& x, const Tensor& y, const Tensor& out) = 0;
  /// out (bool) = x op y; x and y share a dtype.
  virtual void compare(CompareOp op, const Tensor& x, const Tensor& y, const Tensor& out) = 0;
  /// out = cond ? x : y.
  virtual void where(const Tensor& cond, const Tensor& x, const Tensor& y, const Tensor& out) = 0;
  /// gx = g * op'(v) (math::UnaryGrad, core/math/unary_grad.hpp) for an op with
  /// math::has_unary_grad: v is the op's input x, or its output y where
  /// math::unary_grad_uses_output (Tanh, Sigmoid). g, v, gx: one shape and float dtype, any strides.
  virtual void unary_backward(UnaryOp op, const Tensor& g, const Tensor& v, const Tensor& gx) = 0;

  /// out has x's shape with `dims` (sorted) set to 1 (keepdim layout).
  virtual void reduce(ReduceOp op, const Tensor& x, const std::vector<std::int64_t>& dims, const Tensor& out) = 0;
  /// Max/Min along one dim: values and int64 indices, keepdim layout (first index on ties).
  virtual void arg_reduce(ReduceOp op, const Tensor& x, std::int64_t dim, const Tensor& values,
                          const Tensor& indices) = 0;

  /// out[b] = a[b] @ c[b]; a (B, M, K), c (B, K, N), out (B, M, N) contiguous. Batch strides may be 0.
  virtual void matmul(const Tensor& a, const Tensor& c, const Tensor& out) = 0;
  /// out[b] = a[b] @ c[b] + bias (linear): bias (N,) is added to every row of out. The default
  /// adds it after matmul; a backend may fold it into the GEMM (CPU float32/float64 start the
  /// GEMM from the bias rows, so the result may differ from matmul-then-add in the last bit).
  virtual void matmul_bias(const Tensor& a, const Tensor& c, const Tensor& bias, const Tensor& out) {
    matmul(a, c, out);
    binary(BinaryOp::Add, out, Tensor::make_view(bias, out.shape(), {0, 0, bias.stride(0)}, bias.offset()), out);
  }
  /// Gradients of linear's out = x @ w^T from g = dL/d out: gx = g @ w and gw = g^T @ x, each
  /// written where defined. g (R, N), x (R, K), w (N, K): one dtype, any strides; gx (R, K) and
  /// gw (N, K) contiguous. The default runs the two matmuls; a backend may share work between
  /// them (CPU 16-bit: g is converted to float32 once for both GEMMs).
  virtual void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& gx, const Tensor& gw) {
    // (1, rows, cols) views as matmul takes them; t transposed when trans.
    auto m3 = [](const Tensor& t, bool trans, std::int64_t batch_stride) {
      const int r = trans ? 1 : 0, c = 1 - r;
      return Tensor::make_view(t, {1, t.size(r), t.size(c)}, {batch_stride, t.stride(r), t.stride(c)}, t.offset());
    };
    if (gx.defined()) matmul(m3(g, false, 0), m3(w, false, 0), m3(gx, false, gx.numel()));
    if (gw.defined()) matmul(m3(g, true, 0), m3(x, false, 0), m3(gw, false, gw.numel()));
  }

  /// out = x.index_select(dim, index); index int64 1-D, already range-checked.
  virtual void index_select(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) = 0;
  /// out.index_select(dim, index) += src (in place on out, which is contiguous).
  virtual void index_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) = 0;
  virtual void gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) = 0;
  /// out[... index[i] ...] += src[i] along dim (in place on out, contiguous).
  virtual void scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) = 0;

  /// Softmax (or log-softmax) along the last dim of a contiguous x.
  virtual void softmax(const Tensor& x, const Tensor& out, bool log) = 0;
  /// gx from y = softmax(x) (or log-softmax) and gy, along the last dim; all contiguous.
  virtual void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) = 0;
  /// Normalizes rows of length N of contiguous x (R, N); weight/bias (N) may be undefined.
  /// mean/rstd (R) are written for backward: x's dtype, float32 for a bfloat16/float16 x.
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& out,
                          const Tensor& mean, const Tensor& rstd) = 0;
  /// Backward of layer_norm in one pass over the rows: x, gy (R, N) contiguous of x's dtype; mean,
  /// rstd as layer_norm wrote them; weight (N) or undefined. Writes whichever of gx (R, N), gweight
  /// and gbias (N) are defined (contiguous, x's dtype): gx = rstd (gxhat - mean(gxhat) - xhat
  /// mean(gxhat xhat)) with gxhat = gy weight, gweight = sum over rows of gy xhat, gbias = sum of gy.
  /// Computes in float32 for bfloat16/float16 x; the row sums' order must not depend on threads.
  virtual void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) = 0;
  /// RMS-normalizes rows of length N of contiguous x (R, N): out = x rstd weight, rstd = 1 /
  /// sqrt(mean(x^2) + eps) per row; weight (N, x's dtype) or undefined. rstd (R) is written for
  /// backward: x's dtype, float32 for a bfloat16/float16 x (computed in float32, rounded once).
  virtual void rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out, const Tensor& rstd) = 0;
  /// Backward of rms_norm in one pass over the rows (layer_norm_backward without centering): x, gy
  /// (R, N) contiguous of x's dtype; rstd as rms_norm wrote it; weight (N) or undefined. Writes
  /// whichever of gx (R, N) and gweight (N) are defined: gx = rstd (gxhat - xhat mean(gxhat xhat))
  /// with xhat = x rstd, gxhat = gy weight; gweight = sum over rows of gy xhat (order independent
  /// of the thread count).
  virtual void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy,
                                 const Tensor& gx, const Tensor& gweight) = 0;

  /// Fills a contiguous tensor with random values (see RandomSpec).
  virtual void random(const Tensor& out, const RandomSpec& spec) = 0;
  /// Dropout in one pass: mask = random(mask, spec)'s values (a Bernoulli spec) and out = x * mask
  /// rounded as binary Mul rounds; x, mask, out contiguous, of one floating dtype and shape.
  virtual void dropout(const Tensor& x, const Tensor& mask, const Tensor& out, const RandomSpec& spec) = 0;

  /// Fused attention forward (see AttentionArgs). out (N, H, T, Dv) any strides (no overlap);
  /// lse (N, H, T) contiguous, q's dtype (float32 for bfloat16/float16 q): per-row logsumexp of
  /// the logits, -inf for rows with nothing to
  /// attend to; weights undefined or contiguous (N, H, T, S): pre-dropout probabilities.
  /// Memory beyond the outputs is O((T + S) * D), never O(T * S).
  virtual void attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                 const Tensor& weights) = 0;
  /// Gradients of attention_forward from gout (N, H, T, Dv, any strides), recomputing the
  /// probabilities from lse. With weights requested in forward, pass them and their gradient
  /// gweights (both contiguous (N, H, T, S)); otherwise leave both undefined.
  virtual void attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                                  const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) = 0;
  /// The dropout multipliers the fused kernels use: contiguous (N, H, T, S) out of q's dtype
  /// gets 1/keep_prob where kept, 0 where dropped.
  virtual void attention_dropout_mask(const AttentionArgs& a, const Tensor& out) = 0;
  /// Whether the attention kernels implement AttentionArgs' window, alibi and sinks (and the
  /// matching AttentionGrads); when not, the op runs its composite formulation for such calls.
  virtual bool attention_has_extensions() const { return false; }
};

/// The backend for a device; throws kiln::Error when kiln was built without it.
Backend& backend_for(Device device, const char* op = "backend");
/// Registers the backend for a device type (the CUDA backend does this at load time).
void register_backend(DeviceType type, Backend* backend);
/// True when a backend for CUDA is compiled in and a GPU is visible.
bool cuda_is_available();
/// The page-locked host allocator (Tensor::pin_memory); kiln::Error "[op] ..." saying why when
/// kiln was built without CUDA or no GPU is usable.
Allocator& pinned_allocator(const char* op);

}  // namespace kiln
