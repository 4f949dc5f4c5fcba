// GCC 12 reports false -Wmaybe-uninitialized inside Eigen's AVX-512 kernels (HouseholderQR).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "init.hpp"

#include <fmt/format.h>

#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "../autograd/grad_mode.hpp"
#include "../autograd/ops.hpp"

namespace kiln::nn::init {

namespace {

void check_tensor(const Tensor& t, const char* op, bool floating = true) {
  KILN_CHECK(t.defined(), op, "tensor is undefined");
  KILN_CHECK(!floating || t.is_floating_point(), op, "expected a floating point tensor, got {} of shape {}",
             dtype_name(t.dtype()), shape_str(t.shape()));
}

TensorOptions like(const Tensor& t) { return TensorOptions(t.dtype()).device(t.device()); }

// Writes host float64 values (row-major, t's shape) into t, converting dtype and device.
void write_host(Tensor& t, const std::vector<double>& v) {
  NoGradGuard ng;
  t.copy_(tensor(v, t.shape(), kFloat64));
}

// Standard normal quantile: Acklam's rational approximation (rel. error 1.2e-9) refined with
// one Halley step against erfc, good to about double precision over (0, 1).
double normal_ppf(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  if (p <= 0) return -std::numeric_limits<double>::infinity();
  if (p >= 1) return std::numeric_limits<double>::infinity();
  constexpr double plow = 0.02425;
  double x;
  if (p < plow || p > 1 - plow) {
    double q = std::sqrt(-2 * std::log(p < plow ? p : 1 - p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    if (p > plow) x = -x;
  } else {
    double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  double e = 0.5 * std::erfc(-x / std::numbers::sqrt2) - p;
  double u = e * std::sqrt(2 * std::numbers::pi) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::numbers::sqrt2); }

void check_mode(const std::string& mode, const char* op, bool allow_avg) {
  KILN_CHECK(mode == "fan_in" || mode == "fan_out" || (allow_avg && mode == "fan_avg"), op, "mode must be {}, got '{}'",
             allow_avg ? "'fan_in', 'fan_out' or 'fan_avg'" : "'fan_in' or 'fan_out'", mode);
}

// fan_in, fan_out or their mean.
double fan_for_mode(const Tensor& t, const std::string& mode, const char* op, bool allow_avg) {
  check_mode(mode, op, allow_avg);
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  if (mode == "fan_in") return static_cast<double>(fan_in);
  if (mode == "fan_out") return static_cast<double>(fan_out);
  return static_cast<double>(fan_in + fan_out) / 2.0;
}

}  // namespace

std::pair<std::int64_t, std::int64_t> calculate_fan_in_and_fan_out(const Tensor& t) {
  KILN_CHECK(t.defined(), "calculate_fan_in_and_fan_out", "tensor is undefined");
  KILN_CHECK(t.dim() >= 2, "calculate_fan_in_and_fan_out",
             "fan in and fan out need a tensor with at least 2 dims (out, in, *receptive), got shape {}",
             shape_str(t.shape()));
  std::int64_t receptive = 1;
  for (std::int64_t d = 2; d < t.dim(); ++d) receptive *= t.size(d);
  return {t.size(1) * receptive, t.size(0) * receptive};
}

double calculate_gain(const std::string& nl, std::optional<double> param) {
  static const char* linear_fns[] = {"linear",           "identity",         "conv1d",           "conv2d", "conv3d",
                                     "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid"};
  for (const char* f : linear_fns)
    if (nl == f) return 1.0;
  if (nl == "tanh") return 5.0 / 3.0;
  if (nl == "relu") return std::numbers::sqrt2;
  if (nl == "leaky_relu") {
    double slope = param.value_or(0.01);
    KILN_CHECK(std::isfinite(slope), "calculate_gain", "negative slope must be finite, got {}", slope);
    return std::sqrt(2.0 / (1.0 + slope * slope));
  }
  if (nl == "selu") return 3.0 / 4.0;
  KILN_CHECK(false, "calculate_gain",
             "unsupported nonlinearity '{}'; expected one of linear, identity, conv1d, conv2d, conv3d, "
             "conv_transpose1d, conv_transpose2d, conv_transpose3d, sigmoid, tanh, relu, leaky_relu, selu",
             nl);
  return 0;
}

Tensor constant_(Tensor t, double value) {
  check_tensor(t, "constant_", false);
  NoGradGuard ng;
  t.fill_(t.is_floating_point() ? Scalar(value) : Scalar(static_cast<std::int64_t>(value)));
  return t;
}

Tensor zeros_(Tensor t) {
  check_tensor(t, "zeros_", false);
  NoGradGuard ng;
  t.zero_();
  return t;
}

Tensor ones_(Tensor t) {
  check_tensor(t, "ones_", false);
  NoGradGuard ng;
  t.fill_(1);
  return t;
}

Tensor eye_(Tensor t) {
  check_tensor(t, "eye_", false);
  KILN_CHECK(t.dim() == 2, "eye_", "expected a 2-D tensor, got shape {}", shape_str(t.shape()));
  NoGradGuard ng;
  t.copy_(eye(t.size(0), t.size(1), like(t)));
  return t;
}

Tensor uniform_(Tensor t, double a, double b, Generator* gen) {
  check_tensor(t, "uniform_");
  KILN_CHECK(std::isfinite(a) && std::isfinite(b) && a <= b, "uniform_",
             "bounds must be finite with a <= b, got a={} b={}", a, b);
  if (t.numel() == 0) return t;
  NoGradGuard ng;
  t.copy_(rand(t.shape(), like(t), gen) * (b - a) + a);
  return t;
}

Tensor normal_(Tensor t, double mean, double std, Generator* gen) {
  check_tensor(t, "normal_");
  KILN_CHECK(std::isfinite(mean) && std::isfinite(std) && std >= 0, "normal_",
             "mean must be finite and std finite and >= 0, got mean={} std={}", mean, std);
  if (t.numel() == 0) return t;
  NoGradGuard ng;
  t.copy_(randn(t.shape(), like(t), gen) * std + mean);
  return t;
}

Tensor truncated_normal_(Tensor t, double mean, double std, double a, double b, Generator* gen) {
  check_tensor(t, "truncated_normal_");
  KILN_CHECK(std::isfinite(mean) && std::isfinite(std) && std >= 0, "truncated_normal_",
             "mean must be finite and std finite and >= 0, got mean={} std={}", mean, std);
  KILN_CHECK(a < b, "truncated_normal_", "bounds must satisfy a < b, got a={} b={}", a, b);
  if (t.numel() == 0) return t;
  if (std == 0) return constant_(t, std::clamp(mean, a, b));
  double alpha = (a - mean) / std, beta = (b - mean) / std;
  // Sample the side nearer the left tail, where the CDF keeps its precision, and mirror back.
  bool flip = alpha > 0;
  if (flip) std::tie(alpha, beta) = std::pair{-beta, -alpha};
  double lo = normal_cdf(alpha), hi = normal_cdf(beta);
  std::vector<double> v = rand(t.shape(), kFloat64, gen).to_vector<double>();
  for (double& x : v) {
    double z = std::clamp(normal_ppf(lo + x * (hi - lo)), alpha, beta);
    x = std::clamp(mean + std * (flip ? -z : z), a, b);
  }
  write_host(t, v);
  return t;
}

Tensor xavier_uniform_(Tensor t, double gain, Generator* gen) {
  check_tensor(t, "xavier_uniform_");
  if (t.numel() == 0) return t;
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  double r = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  return uniform_(t, -r, r, gen);
}

Tensor xavier_normal_(Tensor t, double gain, Generator* gen) {
  check_tensor(t, "xavier_normal_");
  if (t.numel() == 0) return t;
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  return normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), gen);
}

Tensor kaiming_uniform_(Tensor t, double a, const std::string& mode, const std::string& nonlinearity, Generator* gen) {
  check_tensor(t, "kaiming_uniform_");
  check_mode(mode, "kaiming_uniform_", false);
  double gain = calculate_gain(nonlinearity, a);
  if (t.numel() == 0) return t;
  double fan = fan_for_mode(t, mode, "kaiming_uniform_", false);
  double bound = std::sqrt(3.0) * gain / std::sqrt(fan);
  return uniform_(t, -bound, bound, gen);
}

Tensor kaiming_normal_(Tensor t, double a, const std::string& mode, const std::string& nonlinearity, Generator* gen) {
  check_tensor(t, "kaiming_normal_");
  check_mode(mode, "kaiming_normal_", false);
  double gain = calculate_gain(nonlinearity, a);
  if (t.numel() == 0) return t;
  double fan = fan_for_mode(t, mode, "kaiming_normal_", false);
  return normal_(t, 0.0, gain / std::sqrt(fan), gen);
}

Tensor lecun_uniform_(Tensor t, Generator* gen) {
  return variance_scaling_(std::move(t), 1.0, "fan_in", "uniform", gen);
}

Tensor lecun_normal_(Tensor t, Generator* gen) {
  return variance_scaling_(std::move(t), 1.0, "fan_in", "truncated_normal", gen);
}

Tensor variance_scaling_(Tensor t, double scale, const std::string& mode, const std::string& distribution,
                         Generator* gen) {
  check_tensor(t, "variance_scaling_");
  KILN_CHECK(scale > 0 && std::isfinite(scale), "variance_scaling_", "scale must be positive, got {}", scale);
  KILN_CHECK(distribution == "truncated_normal" || distribution == "untruncated_normal" || distribution == "normal" ||
                 distribution == "uniform",
             "variance_scaling_",
             "distribution must be 'truncated_normal', 'untruncated_normal' (or 'normal') or 'uniform', got '{}'",
             distribution);
  check_mode(mode, "variance_scaling_", true);
  if (t.numel() == 0) return t;
  double variance = scale / fan_for_mode(t, mode, "variance_scaling_", true);
  if (distribution == "truncated_normal") {
    // std of N(0, 1) truncated to [-2, 2] is 0.8796...; dividing by it restores the variance.
    double std = std::sqrt(variance) / 0.87962566103423978;
    return truncated_normal_(t, 0.0, std, -2.0 * std, 2.0 * std, gen);
  }
  if (distribution == "uniform") {
    double limit = std::sqrt(3.0 * variance);
    return uniform_(t, -limit, limit, gen);
  }
  return normal_(t, 0.0, std::sqrt(variance), gen);
}

Tensor orthogonal_(Tensor t, double gain, Generator* gen) {
  check_tensor(t, "orthogonal_");
  KILN_CHECK(t.dim() >= 2, "orthogonal_", "only tensors with 2 or more dims are supported, got shape {}",
             shape_str(t.shape()));
  if (t.numel() == 0) return t;
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t rows = t.size(0), cols = t.numel() / rows;
  std::vector<double> g = randn({rows, cols}, kFloat64, gen).to_vector<double>();
  Eigen::MatrixXd a = Eigen::Map<RowMat>(g.data(), rows, cols);
  if (rows < cols) a.transposeInPlace();  // tall: m >= n
  const Eigen::Index m = a.rows(), n = a.cols();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, n);
  // Q * sign(diag(R)) makes the factorization unique, hence Q Haar-distributed.
  for (Eigen::Index j = 0; j < n; ++j)
    if (qr.matrixQR()(j, j) < 0) q.col(j) *= -1.0;
  if (rows < cols) q.transposeInPlace();
  RowMat out = q * gain;
  write_host(t, std::vector<double>(out.data(), out.data() + out.size()));
  return t;
}

}  // namespace kiln::nn::init
