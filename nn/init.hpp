#pragma once
/// kiln::nn::init — in-place initializers (run under NoGradGuard, so parameters can be passed
/// directly). Random ones draw from `gen`, or the default generator when it is null, and return
/// the tensor they filled:
///   nn::init::xavier_uniform_(lin->weight);
///   nn::init::kaiming_normal_(w, 0, "fan_out", "relu", &gen);
///   nn::init::truncated_normal_(emb->weight, 0.0, 0.02, -0.04, 0.04);
///   nn::init::variance_scaling_(w, 2.0, "fan_avg", "uniform");
///
/// Fans follow PyTorch for kiln's weight layout (out_features, in_features, *receptive_field):
/// receptive = product of dims 2.., fan_in = size(1) * receptive, fan_out = size(0) * receptive.
/// A Linear weight (out, in) has fan_in = in, fan_out = out; a conv weight (out_c, in_c, kh, kw)
/// has fan_in = in_c*kh*kw. Tensors with fewer than 2 dims have no fans (kiln::Error).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln::nn {
/// The one initializer signature every layer option uses (Linear, Embedding, MultiHeadAttention,
/// ...): fill `t` in place, drawing from `gen`, which is the layer's `generator` option (null =
/// the default generator), so a seeded generator reproduces the layer's weights:
///   [](Tensor w, Generator* g) { nn::init::normal_(w, 0.0, 0.02, g); }
using InitFn = std::function<void(Tensor t, Generator* gen)>;
}  // namespace kiln::nn

namespace kiln::nn::init {

/// {fan_in, fan_out} of a weight laid out as (out, in, *receptive); needs >= 2 dims.
std::pair<std::int64_t, std::int64_t> calculate_fan_in_and_fan_out(const Tensor& t);

/// The recommended gain for a nonlinearity, as torch.nn.init.calculate_gain: 1 for "linear",
/// "identity", "conv1d/2d/3d", "conv_transpose1d/2d/3d" and "sigmoid"; 5/3 for "tanh";
/// sqrt(2) for "relu"; sqrt(2 / (1 + slope^2)) for "leaky_relu" (slope = param, default 0.01);
/// 3/4 for "selu".
double calculate_gain(const std::string& nonlinearity, std::optional<double> param = std::nullopt);

/// Fill with a constant (any dtype).
Tensor zeros_(Tensor t);
Tensor ones_(Tensor t);
Tensor constant_(Tensor t, double value);
/// Identity matrix for a 2-D tensor (ones on the diagonal of a non-square one).
Tensor eye_(Tensor t);

/// U(a, b).
Tensor uniform_(Tensor t, double a = 0.0, double b = 1.0, Generator* gen = nullptr);
/// N(mean, std^2).
Tensor normal_(Tensor t, double mean = 0.0, double std = 1.0, Generator* gen = nullptr);
/// N(mean, std^2) conditioned on [a, b] (absolute bounds, as torch's trunc_normal_), sampled by
/// the inverse CDF in float64; every value lies in [a, b]. Note `std` is that of the parent
/// normal, not of the truncated result.
Tensor truncated_normal_(Tensor t, double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0,
                         Generator* gen = nullptr);
inline Tensor trunc_normal_(Tensor t, double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0,
                            Generator* gen = nullptr) {
  return truncated_normal_(std::move(t), mean, std, a, b, gen);
}

/// Glorot: U(-r, r) with r = gain * sqrt(6 / (fan_in + fan_out)).
Tensor xavier_uniform_(Tensor t, double gain = 1.0, Generator* gen = nullptr);
/// Glorot: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)).
Tensor xavier_normal_(Tensor t, double gain = 1.0, Generator* gen = nullptr);
inline Tensor glorot_uniform_(Tensor t, double gain = 1.0, Generator* gen = nullptr) {
  return xavier_uniform_(std::move(t), gain, gen);
}
inline Tensor glorot_normal_(Tensor t, double gain = 1.0, Generator* gen = nullptr) {
  return xavier_normal_(std::move(t), gain, gen);
}

/// He: std = calculate_gain(nonlinearity, a) / sqrt(fan), fan from mode "fan_in" | "fan_out";
/// uniform draws U(-sqrt(3)*std, sqrt(3)*std).
Tensor kaiming_uniform_(Tensor t, double a = 0.0, const std::string& mode = "fan_in",
                        const std::string& nonlinearity = "leaky_relu", Generator* gen = nullptr);
Tensor kaiming_normal_(Tensor t, double a = 0.0, const std::string& mode = "fan_in",
                       const std::string& nonlinearity = "leaky_relu", Generator* gen = nullptr);

/// LeCun (as Flax/Keras): variance_scaling_(1, "fan_in", "uniform" / "truncated_normal").
Tensor lecun_uniform_(Tensor t, Generator* gen = nullptr);
Tensor lecun_normal_(Tensor t, Generator* gen = nullptr);

/// A (semi-)orthogonal matrix times gain: rows (or columns, whichever are fewer) orthonormal.
/// N-D tensors are viewed as (size(0), numel / size(0)). QR of a Gaussian matrix on the host,
/// sign-corrected so the result is uniformly (Haar) distributed.
Tensor orthogonal_(Tensor t, double gain = 1.0, Generator* gen = nullptr);

/// Flax/Keras variance scaling: variance = scale / n with n = fan_in, fan_out or their mean
/// (mode "fan_in" | "fan_out" | "fan_avg"); distribution "truncated_normal" (within 2 std,
/// std corrected by 0.87962566103423978 so the variance is exact), "untruncated_normal"
/// (or "normal") or "uniform" (U(-sqrt(3 var), sqrt(3 var))).
Tensor variance_scaling_(Tensor t, double scale = 1.0, const std::string& mode = "fan_in",
                         const std::string& distribution = "truncated_normal", Generator* gen = nullptr);

}  // namespace kiln::nn::init
