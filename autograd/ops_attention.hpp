#pragma once
/// Scaled dot-product attention as one differentiable op on fused backend kernels, and its
/// composite reference. Layers call it through kiln::nn::functional (nn/attention.hpp):
///   // q (B, H, T, Dk), k (B, Hkv, S, Dk), v (B, Hkv, S, Dv); H a multiple of Hkv
///   auto r = kiln::scaled_dot_product_attention(q, k, v, kiln::SdpaOptions().is_causal(true));
///   r.output;  // (B, H, T, Dv)
/// Semantics (ARCHITECTURE.md "Attention semantics"): query t sits at absolute position
/// p = S - T + t (bottom-right aligned); logits = scale * q k^T (+ float mask) (- ALiBi
/// slope * |p - s|); a bool mask keeps entries where true, causal keeps s <= p, a window keeps
/// p - left <= s <= p + right, all ANDed; a -inf logit counts as masked; sinks join each
/// row's softmax denominator; a query with no key to attend to outputs 0 and gets 0 gradient;
/// NaN/Inf in masked-out keys/values never reaches outputs or gradients; dropout acts on the
/// probabilities; returned weights are pre-dropout.
///   // Mistral-style local causal attention with ALiBi and learned sinks (gpt-oss):
///   auto o = kiln::SdpaOptions().is_causal(true).window(4096, 0)
///                .alibi_slopes(kiln::alibi_slopes(H)).sinks(sink_logits);  // sinks (H,)
#include <cstdint>
#include <optional>

#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln {

/// Options of scaled_dot_product_attention, set with chained setters:
///   SdpaOptions().attn_mask(keep).is_causal(true).dropout_p(0.1).training(is_training())
class SdpaOptions {
 public:
  /// bool (true = may attend) or floating point (added to the logits; -inf masks), broadcastable
  /// to (batch..., H, T, S): e.g. (T, S), a key-padding mask (B, 1, 1, S), or per head. A float
  /// mask that requires grad is a learned bias (e.g. (H, T, S) relative positions): its gradient
  /// comes back in its own shape (backward then holds one (batch..., H, T, S) buffer).
  SdpaOptions& attn_mask(Tensor m) { attn_mask_ = std::move(m); return *this; }
  /// Causal masking (ANDed with attn_mask), aligned bottom-right: query t may attend key s <= S - T + t.
  SdpaOptions& is_causal(bool c) { is_causal_ = c; return *this; }
  /// Multiplies q k^T; default 1 / sqrt(Dk).
  SdpaOptions& scale(std::optional<double> s) { scale_ = s; return *this; }
  /// Dropout probability on the attention probabilities (inverted scaling), used when training.
  SdpaOptions& dropout_p(double p) { dropout_p_ = p; return *this; }
  /// Dropout applies only when true (default true, as kiln::dropout).
  SdpaOptions& training(bool t) { training_ = t; return *this; }
  /// Dropout's random numbers (default: kiln::default_generator()).
  SdpaOptions& generator(Generator* g) { generator_ = g; return *this; }
  /// Also return the (batch..., H, T, S) pre-dropout probabilities (costs O(T * S) memory).
  SdpaOptions& need_weights(bool w) { need_weights_ = w; return *this; }
  /// Use the composite reference (matmul / where / softmax) instead of the fused kernels.
  SdpaOptions& use_reference(bool r) { use_reference_ = r; return *this; }
  /// Sliding-window (local) attention: the query at position p attends key s only when
  /// p - left <= s <= p + right; a negative width is unbounded on that side. ANDed with causal
  /// and the mask; e.g. window(W - 1, 0) with is_causal(true) sees the last W keys. The fused
  /// kernels skip key tiles outside the window: cost O(T * window).
  SdpaOptions& window(std::int64_t left, std::int64_t right) {
    window_left_ = left;
    window_right_ = right;
    return *this;
  }
  /// ALiBi: adds -m_h * |p - s| to the logits of query head h, with slopes m of shape (H,) or
  /// broadcastable to (batch..., H) (e.g. kiln::alibi_slopes(H)). Differentiable: a slopes
  /// tensor that requires grad gets its gradient.
  SdpaOptions& alibi_slopes(Tensor slopes) { alibi_slopes_ = std::move(slopes); return *this; }
  /// Attention sinks (learned per head, as in gpt-oss): logit s_h of shape (H,) or
  /// broadcastable to (batch..., H) joins every softmax denominator of head h without a value:
  /// out = sum_j e^{l_j} v_j / (e^{s_h} + sum_j e^{l_j}), so the weights sum to 1 - P(sink).
  /// Differentiable. A row with no key to attend to still outputs 0 (and gets 0 gradient).
  SdpaOptions& sinks(Tensor s) { sinks_ = std::move(s); return *this; }

  const Tensor& attn_mask() const { return attn_mask_; }
  bool is_causal() const { return is_causal_; }
  std::optional<double> scale() const { return scale_; }
  double dropout_p() const { return dropout_p_; }
  bool training() const { return training_; }
  Generator* generator() const { return generator_; }
  bool need_weights() const { return need_weights_; }
  bool use_reference() const { return use_reference_; }
  std::int64_t window_left() const { return window_left_; }
  std::int64_t window_right() const { return window_right_; }
  const Tensor& alibi_slopes() const { return alibi_slopes_; }
  const Tensor& sinks() const { return sinks_; }

 private:
  Tensor attn_mask_;
  bool is_causal_ = false;
  std::optional<double> scale_;
  double dropout_p_ = 0.0;
  bool training_ = true;
  Generator* generator_ = nullptr;
  bool need_weights_ = false;
  bool use_reference_ = false;
  std::int64_t window_left_ = -1, window_right_ = -1;
  Tensor alibi_slopes_;
  Tensor sinks_;
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
