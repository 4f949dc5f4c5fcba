#pragma once
/// Scaled dot-product attention as one differentiable op on fused backend kernels, and its
/// composite reference. Layers call it through kiln::nn::functional (nn/attention.hpp):
///   // q (B, H, T, Dk), k (B, Hkv, S, Dk), v (B, Hkv, S, Dv); H a multiple of Hkv
///   auto r = kiln::scaled_dot_product_attention(q, k, v, kiln::SdpaOptions().is_causal(true));
///   r.output;  // (B, H, T, Dv)
/// Semantics (ARCHITECTURE.md "Attention semantics"): query t sits at absolute position
/// p = S - T + t (bottom-right aligned); logits = scale * q k^T (+ float mask) (- ALiBi
/// slope * |p - s|); a bool mask keeps entries where true, causal keeps s <= p, a window keeps
/// p - window_left <= s <= p + window_right, all ANDed; a -inf logit counts as masked; sinks join each
/// row's softmax denominator; a query with no key to attend to outputs 0 and gets 0 gradient;
/// NaN/Inf in masked-out keys/values never reaches outputs or gradients; dropout acts on the
/// probabilities; returned weights are pre-dropout.
///   // Mistral-style local causal attention with ALiBi and learned sinks (gpt-oss):
///   auto o = kiln::SdpaOptions().is_causal(true).window_left(4095)
///                .alibi_slopes(kiln::alibi_slopes(H)).sinks(sink_logits);  // sinks (H,)
#include <cstdint>
#include <optional>

#include "../core/arg.hpp"
#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln {

/// Options of scaled_dot_product_attention (KILN_ARG: chained setters, same-named getters):
///   SdpaOptions().attn_mask(keep).is_causal(true).dropout_p(0.1).training(is_training())
struct SdpaOptions {
  /// bool (true = may attend) or floating point (added to the logits; -inf masks), broadcastable
  /// to (batch..., H, T, S): e.g. (T, S), a key-padding mask (B, 1, 1, S), or per head. A float
  /// mask that requires grad is a learned bias (e.g. (H, T, S) relative positions): its gradient
  /// comes back in its own shape (backward then holds one (batch..., H, T, S) buffer).
  KILN_ARG(Tensor, attn_mask);
  /// Causal masking (ANDed with attn_mask), aligned bottom-right: query t may attend key s <= S - T + t.
  KILN_ARG(bool, is_causal) = false;
  /// Multiplies q k^T; default 1 / sqrt(Dk).
  KILN_ARG(std::optional<double>, scale);
  /// Dropout probability on the attention probabilities (inverted scaling), used when training.
  KILN_ARG(double, dropout_p) = 0.0;
  /// Dropout applies only when true (default true, as kiln::dropout).
  KILN_ARG(bool, training) = true;
  /// Dropout's random numbers (default: kiln::default_generator()).
  KILN_ARG(Generator*, generator) = nullptr;
  /// Also return the (batch..., H, T, S) pre-dropout probabilities (costs O(T * S) memory).
  KILN_ARG(bool, need_weights) = false;
  /// Use the composite reference (matmul / where / softmax) instead of the fused kernels.
  KILN_ARG(bool, use_reference) = false;
  /// Sliding-window (local) attention: the query at position p attends key s only when
  /// p - window_left <= s <= p + window_right; a negative width (the default) is unbounded on
  /// that side. ANDed with causal and the mask; e.g. window_left(W - 1) with is_causal(true)
  /// sees the last W keys. The fused kernels skip key tiles outside the window: cost O(T * window).
  KILN_ARG(std::int64_t, window_left) = -1;
  KILN_ARG(std::int64_t, window_right) = -1;
  /// ALiBi: adds -m_h * |p - s| to the logits of query head h, with slopes m of shape (H,) or
  /// broadcastable to (batch..., H) (e.g. kiln::alibi_slopes(H)). Differentiable: a slopes
  /// tensor that requires grad gets its gradient.
  KILN_ARG(Tensor, alibi_slopes);
  /// Attention sinks (learned per head, as in gpt-oss): logit s_h of shape (H,) or
  /// broadcastable to (batch..., H) joins every softmax denominator of head h without a value:
  /// out = sum_j e^{l_j} v_j / (e^{s_h} + sum_j e^{l_j}), so the weights sum to 1 - P(sink).
  /// Differentiable. A row with no key to attend to still outputs 0 (and gets 0 gradient).
  KILN_ARG(Tensor, sinks);
};

struct SdpaResult {
  Tensor output;   // (batch..., H, T, Dv)
  Tensor weights;  // (batch..., H, T, S) when need_weights, else undefined
};

/// Attention of q (batch..., H, T, Dk) over k (batch..., Hkv, S, Dk) / v (batch..., Hkv, S, Dv);
/// query head h reads kv head h / (H / Hkv). The output is laid out as (batch..., T, H, Dv) in
/// memory, so `output.transpose(-3, -2).reshape({..., T, H * Dv})` (merging heads) is a view.
/// Memory is O((T + S) * D) per head unless need_weights.
SdpaResult scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const SdpaOptions& opts = {});

/// The same function built from differentiable ops (matmul, where, softmax; O(T * S) memory).
/// Same semantics and the same dropout draws as the fused op for the same generator state.
SdpaResult scaled_dot_product_attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const SdpaOptions& opts = {});

/// The ALiBi paper's head slopes as float32 (num_heads,): for a power of two n, 2^(-8 (i + 1) / n);
/// otherwise the slopes of the largest power of two below n, followed by every other slope of
/// twice that power until there are n.
///   kiln::alibi_slopes(8);  // 1/2, 1/4, ..., 1/256
Tensor alibi_slopes(std::int64_t num_heads);

}  // namespace kiln
