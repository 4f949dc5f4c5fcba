#pragma once
/// Differentiable ops. Each validates its arguments (kiln::Error naming the op
/// and the offending values), runs on the tensors' backend and, when an input
/// requires grad, records its backward.
///   auto x = kiln::randn({4, 3}).requires_grad_();
///   auto y = kiln::softmax(kiln::matmul(x, w) + b, -1);
///   y.sum().backward();
/// Broadcasting follows NumPy; type promotion uses bool < int64 < float32 < float64,
/// and a C++ number never widens a tensor's type (x * 2.0 keeps float32).
#include <cstdint>
#include <optional>
#include <vector>

#include "../core/arg.hpp"
#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln {

using Dims = std::vector<std::int64_t>;

// ---------- elementwise (broadcasting) ----------
Tensor add(const Tensor& a, const Tensor& b, const Scalar& alpha = 1);
Tensor sub(const Tensor& a, const Tensor& b, const Scalar& alpha = 1);
Tensor mul(const Tensor& a, const Tensor& b);
/// True division: integer inputs give float32.
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Scalar& exponent);
Tensor pow(const Scalar& base, const Tensor& exponent);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
/// approximate = "none" (erf form) or "tanh".
Tensor gelu(const Tensor& x, const std::string& approximate = "none");
Tensor silu(const Tensor& x);
/// x * relu6(x + 3) / 6 (MobileNetV3); gradient 0 below -3, 1 above 3, (2x + 3) / 6 between.
Tensor hardswish(const Tensor& x);
/// Bounds may be omitted (std::nullopt); gradient passes where min <= x <= max.
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max);
Tensor clamp_min(const Tensor& x, double min);
Tensor clamp_max(const Tensor& x, double max);
/// cond ? a : b, broadcast together; cond must be bool.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Scalar& b);
Tensor where(const Tensor& cond, const Scalar& a, const Tensor& b);
/// x with `value` wherever mask (bool, broadcastable to x) is true.
Tensor masked_fill(const Tensor& x, const Tensor& mask, const Scalar& value);

// comparisons and logic: bool results, never differentiable
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);
Tensor isnan(const Tensor& x);
Tensor isfinite(const Tensor& x);
/// True when every element is close: |a - b| <= atol + rtol * |b| (NaNs equal if equal_nan).
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8, bool equal_nan = false);
bool equal(const Tensor& a, const Tensor& b);

// ---------- reductions (empty dims = all dims) ----------
/// bool/int64 inputs are summed as int64.
Tensor sum(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
/// Variance with `correction` (1 = unbiased, as torch.var's default).
Tensor var(const Tensor& x, const Dims& dims = {}, double correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, const Dims& dims = {}, double correction = 1, bool keepdim = false);
/// Max/min over dims (values only; gradient shared evenly among ties).
Tensor amax(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
/// Max/min of all elements.
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);
struct ValuesIndices {
  Tensor values, indices;
};
/// Max/min along one dim with int64 indices (first on ties); gradient flows to that index.
ValuesIndices max(const Tensor& x, std::int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, std::int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, std::optional<std::int64_t> dim = std::nullopt, bool keepdim = false);
Tensor argmin(const Tensor& x, std::optional<std::int64_t> dim = std::nullopt, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Dims& dims, bool keepdim = false);
/// True when any/all elements are nonzero (bool tensor over dims).
Tensor any(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor all(const Tensor& x, const Dims& dims = {}, bool keepdim = false);

// ---------- linear algebra ----------
/// NumPy matmul: 1-D x 1-D dot, 2-D products, N-D batched with broadcast batch dims.
Tensor matmul(const Tensor& a, const Tensor& b);
/// x @ w^T + b with w (out, in), as nn.Linear.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---------- shape ----------
Tensor view(const Tensor& x, const Shape& shape);
/// A view when the strides allow, else a copy. One dim may be -1.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x, std::int64_t start_dim = 0, std::int64_t end_dim = -1);
Tensor permute(const Tensor& x, const Dims& dims);
Tensor transpose(const Tensor& x, std::int64_t d0, std::int64_t d1);
Tensor narrow(const Tensor& x, std::int64_t dim, std::int64_t start, std::int64_t length);
Tensor slice(const Tensor& x, std::int64_t dim, std::int64_t start, std::int64_t end, std::int64_t step = 1);
Tensor select(const Tensor& x, std::int64_t dim, std::int64_t index);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor squeeze(const Tensor& x, std::optional<std::int64_t> dim = std::nullopt);
Tensor unsqueeze(const Tensor& x, std::int64_t dim);
Tensor contiguous(const Tensor& x);
Tensor clone(const Tensor& x);
/// dtype conversion (differentiable between float types).
Tensor to(const Tensor& x, DType dtype);
Tensor to(const Tensor& x, Device device, bool non_blocking = false);
/// Tensor::pin_memory.
Tensor pin_memory(const Tensor& x);
Tensor cat(const std::vector<Tensor>& xs, std::int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& xs, std::int64_t dim = 0);
/// Pieces of `split_size` along dim (the last may be smaller).
std::vector<Tensor> split(const Tensor& x, std::int64_t split_size, std::int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, std::int64_t chunks, std::int64_t dim = 0);
/// The gradient `g` summed down to `shape` (undoes broadcasting).
Tensor sum_to_shape(const Tensor& g, const Shape& shape);

// ---------- indexing ----------
Tensor index_select(const Tensor& x, std::int64_t dim, const Tensor& index);
/// x with src added at `index` along dim (out of place).
Tensor index_add(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& src);
Tensor gather(const Tensor& x, std::int64_t dim, const Tensor& index);
/// x with src[i] added at x[..index[i]..] along dim (out of place); index and src share a shape.
Tensor scatter_add(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& src);
/// Rows of weight (num, dim) picked by int64 indices of any shape -> indices.shape + (dim,);
/// indices first, as torch's F.embedding(input, weight).
Tensor embedding(const Tensor& indices, const Tensor& weight);

// ---------- fused nn ops ----------
Tensor softmax(const Tensor& x, std::int64_t dim);
Tensor log_softmax(const Tensor& x, std::int64_t dim);
/// Normalizes over the trailing dims `normalized_shape`; weight/bias optional. The result has x's
/// dtype; parameters of another floating dtype make it compute in the wider type (float32 for a
/// bfloat16 x with float32 parameters) and round once, as PyTorch.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
/// Root-mean-square norm over the trailing dims `normalized_shape` (torch's F.rms_norm):
/// x * rsqrt(mean(x^2) + eps) * weight, one fused pass (rstd kept for the fused backward).
/// eps defaults to the machine epsilon of the compute type (float64's for float64, float32's
/// otherwise: 16-bit inputs compute in float32), as PyTorch; weight is optional, of shape
/// normalized_shape. bfloat16/float16 compute in float32 and round once. The result has x's dtype
/// (a weight of another dtype: computed in the wider type, rounded once, as layer_norm).
///   Tensor h = kiln::rms_norm(x, {x.size(-1)}, weight);
Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                std::optional<double> eps = std::nullopt);
/// Inverted dropout: zeros with probability p, scales kept values by 1/(1-p). Identity when !training.
Tensor dropout(const Tensor& x, double p, bool training = true, Generator* gen = nullptr);
enum class Reduction { None, Mean, Sum };
/// cross_entropy's options: `CrossEntropyOptions().ignore_index(0).label_smoothing(0.1)`.
struct CrossEntropyOptions {
  /// Targets equal to it add no loss and no gradient (and are left out of the mean).
  KILN_ARG(std::int64_t, ignore_index) = -100;
  /// In [0, 1]: the target distribution is (1 - ls) one-hot + ls / C uniform.
  KILN_ARG(double, label_smoothing) = 0.0;
  KILN_ARG(Reduction, reduction) = Reduction::Mean;
};
/// logits (C), (N, C) or (N, C, d1, ...) with int64 class targets (), (N) or (N, d1, ...).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts = {});
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean);

// ---------- operators ----------
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, const Scalar& b);
Tensor operator-(const Tensor& a, const Scalar& b);
Tensor operator*(const Tensor& a, const Scalar& b);
Tensor operator/(const Tensor& a, const Scalar& b);
Tensor operator+(const Scalar& a, const Tensor& b);
Tensor operator-(const Scalar& a, const Tensor& b);
Tensor operator*(const Scalar& a, const Tensor& b);
Tensor operator/(const Scalar& a, const Tensor& b);
Tensor operator==(const Tensor& a, const Tensor& b);
Tensor operator!=(const Tensor& a, const Tensor& b);
Tensor operator<(const Tensor& a, const Tensor& b);
Tensor operator<=(const Tensor& a, const Tensor& b);
Tensor operator>(const Tensor& a, const Tensor& b);
Tensor operator>=(const Tensor& a, const Tensor& b);
Tensor operator==(const Tensor& a, const Scalar& b);
Tensor operator!=(const Tensor& a, const Scalar& b);
Tensor operator<(const Tensor& a, const Scalar& b);
Tensor operator<=(const Tensor& a, const Scalar& b);
Tensor operator>(const Tensor& a, const Scalar& b);
Tensor operator>=(const Tensor& a, const Scalar& b);
/// Logical and / or / not of bool (or nonzero) tensors, as in PyTorch.
Tensor operator&(const Tensor& a, const Tensor& b);
Tensor operator|(const Tensor& a, const Tensor& b);
Tensor operator~(const Tensor& a);

}  // namespace kiln
