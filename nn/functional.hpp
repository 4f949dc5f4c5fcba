#pragma once
/// kiln::nn::functional — the stateless forms of the nn layers. Ops that already exist in
/// kiln (linear, layer_norm, rms_norm, dropout, activations, losses) are re-exported here so a program
/// can use one namespace:
///   namespace F = kiln::nn::functional;
///   auto h = F::rms_norm(x, {x.size(-1)}, weight);
///   auto e = F::embedding(ids, table, /*padding_idx=*/0);   // (input, weight), as kiln::embedding
///   auto a = F::activation(h, nn::Activation::SiLU);
///   auto pe = F::sinusoidal_positions(/*length=*/16, /*dim=*/64);
#include <cstdint>
#include <optional>
#include <string>

#include "../autograd/ops.hpp"

namespace kiln::nn {

/// The activations FeedForward and the transformer layers choose from (F::activation applies
/// one): `.activation(nn::Activation::SiLU)`. GELUTanh is GELU's tanh approximation; SiLU is
/// also known as swish.
enum class Activation { ReLU, GELU, GELUTanh, SiLU, Tanh, Sigmoid, Identity };
/// "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid" or "identity" (what modules print).
const char* to_string(Activation a);

}  // namespace kiln::nn

namespace kiln::nn::functional {

using kiln::cross_entropy;
using kiln::dropout;
using kiln::gelu;
using kiln::layer_norm;
using kiln::linear;
using kiln::log_softmax;
using kiln::mse_loss;
using kiln::relu;
/// Root-mean-square norm (autograd/ops.hpp); eps defaults to the machine epsilon of the compute
/// type (float64's for float64 input, float32's otherwise).
using kiln::rms_norm;
using kiln::sigmoid;
using kiln::silu;
using kiln::softmax;
using kiln::tanh;

/// Rows of `weight` (num, dim) picked by int64 `input` of any shape -> input.shape + (dim,),
/// as torch's F.embedding(input, weight, padding_idx). Positions holding `padding_idx` send no
/// gradient to the weight (the row's value is still returned). Negative padding_idx counts from
/// the end.
Tensor embedding(const Tensor& input, const Tensor& weight, std::optional<std::int64_t> padding_idx = std::nullopt);

/// Applies the activation `a` to x.
Tensor activation(const Tensor& x, Activation a);

/// The Vaswani et al. table for positions offset .. offset+length-1, shape (length, dim):
/// pe[p, 2i] = sin(p / base^(2i/dim)), pe[p, 2i+1] = cos(p / base^(2i/dim)). Computed in
/// float64, returned in opts' dtype (float32 by default).
Tensor sinusoidal_positions(std::int64_t length, std::int64_t dim, std::int64_t offset = 0, double base = 10000.0,
                            TensorOptions opts = {});

}  // namespace kiln::nn::functional
