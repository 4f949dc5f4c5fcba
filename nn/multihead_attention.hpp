#pragma once
/// nn::MultiHeadAttention — projections around the fused attention core
/// (kiln::scaled_dot_product_attention), with the semantics decided in DESIGN.md:
/// batch first `[batch..., T, E]` (any number of leading dims, none included), boolean masks
/// keep where true, float masks are added to the logits, padding as valid lengths or a
/// `[batch..., S]` keep-mask, causal aligned bottom-right and ANDed with every mask.
///
///   nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(512, 8).num_kv_heads(2).dropout(0.1));
///   Tensor y = mha(x);                                            // self-attention, x (B, T, 512)
///   Tensor z = mha(q, memory, nn::MhaForward().key_padding(lengths));   // cross-attention
///   auto r = mha->forward_with_weights(q, k, v, nn::MhaForward().is_causal(true).need_weights(true));
///   r.output;   // (B, T, out_dim)
///   r.weights;  // (B, H, T, S) pre-dropout probabilities; (B, T, S) with average_attn_weights
///
/// Parameters (PyTorch's (out, in) layout): q_proj.weight (H*Dk, E), k_proj.weight (Hkv*Dk, kdim),
/// v_proj.weight (Hkv*Dv, vdim), out_proj.weight (out_dim, H*Dv), each with a `.bias` unless
/// disabled; q_norm.weight / k_norm.weight (+ .bias for layer_norm) of shape (Dk,) with qk_norm.
///
/// Rows with nothing to attend to (every key masked for that query): the attention core gives
/// exactly 0 for such a row, so the module returns out_proj(0) = out_proj.bias (a zero vector
/// without that bias), then out_dropout (in training mode the bias is dropped/scaled like any
/// output). The row's query input gets exactly 0 gradient; its weights row (need_weights) is 0.
/// Keys that no query may attend to (padding, or a mask that is false for every query and head)
/// are replaced by zeros *before* the key/value projections, so NaN/Inf stored there never
/// reaches outputs or any gradient (parameters included). In self-attention the padded positions
/// are still queries: their own output rows are computed as usual (as PyTorch) — leave them out
/// of the loss, and keep NaN out of them.
#include <cstdint>
#include <functional>
#include <optional>

#include "../core/generator.hpp"
#include "linear.hpp"
#include "module.hpp"
#include "normalization.hpp"

namespace kiln::nn {

/// An initializer for the attention projections: fills `t` in place, drawing from `gen`
/// (null = the default generator). `[](Tensor& w, Generator* g) { init::normal_(w, 0, 0.02, g); }`
using MhaInitFn = std::function<void(Tensor&, Generator*)>;

/// Normalization of q and k per head (over head_dim) before the dot products.
enum class QKNorm { None, LayerNorm, RMSNorm };

struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(std::int64_t embed_dim, std::int64_t num_heads)
      : embed_dim_(embed_dim), num_heads_(num_heads) {}
  /// Width of the query input.
  KILN_ARG(std::int64_t, embed_dim);
  KILN_ARG(std::int64_t, num_heads);
  /// Key/value heads (default num_heads); num_heads must be a multiple: grouped-query (GQA),
  /// or multi-query with 1.
  KILN_ARG(std::optional<std::int64_t>, num_kv_heads);
  /// Per-head width of q and k (default embed_dim / num_heads, which must then divide).
  KILN_ARG(std::optional<std::int64_t>, head_dim);
  /// Per-head width of v (default head_dim; Keras value_dim, Flux v_dim).
  KILN_ARG(std::optional<std::int64_t>, v_head_dim);
  /// Widths of the key and value inputs (default embed_dim).
  KILN_ARG(std::optional<std::int64_t>, kdim);
  KILN_ARG(std::optional<std::int64_t>, vdim);
  /// Width of the output (default embed_dim).
  KILN_ARG(std::optional<std::int64_t>, out_dim);
  /// Biases of all four projections; q_bias .. out_bias override it per projection.
  KILN_ARG(bool, bias) = true;
  KILN_ARG(std::optional<bool>, q_bias);
  KILN_ARG(std::optional<bool>, k_bias);
  KILN_ARG(std::optional<bool>, v_bias);
  KILN_ARG(std::optional<bool>, out_bias);
  /// Dropout on the attention probabilities (training mode only).
  KILN_ARG(double, dropout) = 0.0;
  /// Dropout on the module's output (training mode only).
  KILN_ARG(double, out_dropout) = 0.0;
  /// One (T, S) dropout mask shared by every batch element and head (as Flax's
  /// broadcast_dropout). Built on the probabilities the core returns, so when training with
  /// dropout > 0 it materializes (batch..., H, T, S) weights: O(T * S) memory per head, like
  /// need_weights (the fused core's per-(batch, head) dropout stays O((T + S) * D)).
  KILN_ARG(bool, broadcast_dropout) = false;
  /// Initializer of q/k/v_proj.weight (default: Xavier-uniform per matrix).
  KILN_ARG(MhaInitFn, kernel_init);
  /// Initializer of out_proj.weight (default: Xavier-uniform).
  KILN_ARG(MhaInitFn, out_kernel_init);
  /// Initializer of every projection bias (default: zeros).
  KILN_ARG(MhaInitFn, bias_init);
  /// Multiplies q k^T (default 1 / sqrt(head_dim)).
  KILN_ARG(std::optional<double>, scale);
  KILN_ARG(QKNorm, qk_norm) = QKNorm::None;
  /// eps of the q/k norms (default: LayerNorm's 1e-5, RMSNorm's machine epsilon of the dtype).
  KILN_ARG(std::optional<double>, qk_norm_eps);
  /// Random numbers for initialization and both dropouts (null = the default generator); it
  /// must outlive the module.
  KILN_ARG(Generator*, generator) = nullptr;
};

/// Per-call options of MultiHeadAttention::forward.
struct MhaForward {
  /// bool (true = may attend) or floating point (added to the logits; -inf masks), broadcastable
  /// to (batch..., H, T, S), e.g. (T, S) or (B, 1, T, S).
  KILN_ARG(Tensor, attn_mask);
  /// Padding of the keys: int64 valid lengths of shape (batch...) (keys s < length are kept;
  /// values are not range-checked: <= 0 keeps none, >= S keeps all), or a bool keep-mask of
  /// shape (batch..., S). ANDed with attn_mask and is_causal.
  KILN_ARG(Tensor, key_padding);
  /// Causal masking, bottom-right aligned: query t may attend key s <= S - T + t.
  KILN_ARG(bool, is_causal) = false;
  /// Also return the attention probabilities (pre-dropout), (batch..., H, T, S). O(T * S).
  KILN_ARG(bool, need_weights) = false;
  /// With need_weights: their mean over heads instead, (batch..., T, S).
  KILN_ARG(bool, average_attn_weights) = false;
};

struct MhaResult {
  Tensor output;   // (batch..., T, out_dim)
  Tensor weights;  // with need_weights: (batch..., H, T, S), or (batch..., T, S) averaged
};

class MultiHeadAttentionImpl : public Module {
 public:
  MultiHeadAttentionImpl(std::int64_t embed_dim, std::int64_t num_heads)
      : MultiHeadAttentionImpl(MultiHeadAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options);

  void reset() override;
  /// Re-draws the projections with the options' initializers (norm weights back to 1/0).
  void reset_parameters() override;
  std::string extra_repr() const override;

  /// Self-attention: x (batch..., T, E) -> (batch..., T, out_dim).
  Tensor forward(const Tensor& x, const MhaForward& f = {});
  /// Keys and values from one tensor: q (batch..., T, E), kv (batch..., S, kdim == vdim).
  Tensor forward(const Tensor& q, const Tensor& kv, const MhaForward& f = {});
  /// q (batch..., T, E), k (batch..., S, kdim), v (batch..., S, vdim).
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f = {});
  /// The same, returning the weights too when f.need_weights().
  MhaResult forward_with_weights(const Tensor& x, const MhaForward& f = {});
  MhaResult forward_with_weights(const Tensor& q, const Tensor& kv, const MhaForward& f = {});
  MhaResult forward_with_weights(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f = {});

  // Resolved sizes.
  std::int64_t num_heads() const { return options.num_heads(); }
  std::int64_t num_kv_heads() const { return options.num_kv_heads().value_or(options.num_heads()); }
  std::int64_t head_dim() const;
  std::int64_t v_head_dim() const { return options.v_head_dim().value_or(head_dim()); }
  std::int64_t kdim() const { return options.kdim().value_or(options.embed_dim()); }
  std::int64_t vdim() const { return options.vdim().value_or(options.embed_dim()); }
  std::int64_t out_dim() const { return options.out_dim().value_or(options.embed_dim()); }

  MultiHeadAttentionOptions options;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  /// Only with qk_norm (LayerNorm or RMSNorm over head_dim, shared by the heads).
  std::shared_ptr<Module> q_norm, k_norm;

 private:
  MhaResult attend(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f);
  Tensor norm_heads(const std::shared_ptr<Module>& norm, const Tensor& x) const;
  Tensor broadcast_dropout_attention(const Tensor& P, const Tensor& v) const;
};
KILN_MODULE(MultiHeadAttention);

}  // namespace kiln::nn
