#pragma once
/// Scaled dot-product attention as one differentiable op on fused backend kernels, and its
/// composite reference. Layers call it through kiln::nn::functional (nn/attention.hpp):
///   // q (B, H, T, Dk), k (B, Hkv, S, Dk), v (B, Hkv, S, Dv); H a multiple of Hkv
///   auto r = kiln::scaled_dot_product_attention(q, k, v, kiln::SdpaOptions().is_causal(true));
///   r.output;  // (B, H, T, Dv)
/// Semantics (DESIGN.md "Attention semantics"): logits = scale * q k^T (+ float mask);
/// a bool mask keeps entries where true; causal is aligned bottom-right (query t sits at key
/// position S - T + t); a -inf logit counts as masked; a query with nothing to attend to
/// outputs 0 and gets 0 gradient; NaN/Inf in masked-out keys/values never reaches outputs or
/// gradients; dropout acts on the probabilities; returned weights are pre-dropout.
#include <optional>

#include "../core/generator.hpp"
#include "../core/tensor.hpp"

namespace kiln {

/// Options of scaled_dot_product_attention, set with chained setters:
///   SdpaOptions().attn_mask(keep).is_causal(true).dropout_p(0.1).training(is_training())
class SdpaOptions {
 public:
  /// bool (true = may attend) or floating point (added to the logits; -inf masks), broadcastable
  /// to (batch..., H, T, S): e.g. (T, S), a key-padding mask (B, 1, 1, S), or per head.
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

  const Tensor& attn_mask() const { return attn_mask_; }
  bool is_causal() const { return is_causal_; }
  std::optional<double> scale() const { return scale_; }
  double dropout_p() const { return dropout_p_; }
  bool training() const { return training_; }
  Generator* generator() const { return generator_; }
  bool need_weights() const { return need_weights_; }
  bool use_reference() const { return use_reference_; }

 private:
  Tensor attn_mask_;
  bool is_causal_ = false;
  std::optional<double> scale_;
  double dropout_p_ = 0.0;
  bool training_ = true;
  Generator* generator_ = nullptr;
  bool need_weights_ = false;
  bool use_reference_ = false;
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

}  // namespace kiln
