#pragma once
/// nn::MultiHeadAttention — projections around the fused attention core
/// (kiln::scaled_dot_product_attention), with the semantics of ARCHITECTURE.md "Attention semantics":
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
/// disabled; q_norm.weight / k_norm.weight (+ .bias for Norm::LayerNorm) of shape (Dk,) with qk_norm.
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
///
/// Beyond the default path (each costs nothing unless used):
///   // autoregressive decoding with a KV cache (see kv_cache.hpp) and rotary positions
///   nn::MultiHeadAttention dec(nn::MultiHeadAttentionOptions(256, 8).num_kv_heads(2)
///                                  .rotary(nn::RotaryEmbeddingOptions(32)));
///   nn::KVCache cache = dec->make_kv_cache(B, 1024);
///   Tensor h = dec(tokens, nn::MhaForward().is_causal(true).cache(&cache));
///   // attention over several axes (Keras attention_axes): x (B, H, W, E) over all H*W positions
///   nn::MultiHeadAttention img(nn::MultiHeadAttentionOptions(64, 4).attention_axes({1, 2}));
///   // an additive bias broadcastable to (batch..., H, T, S) (Flux's bias), differentiable
///   Tensor y = mha(x, nn::MhaForward().attn_bias(rel_pos_bias));
///   // local attention with ALiBi and learned sinks (Mistral / BLOOM / gpt-oss style)
///   nn::MultiHeadAttention loc(nn::MultiHeadAttentionOptions(256, 8).window_left(4095).alibi(true)
///                                  .attention_sinks(true));
///   // PyTorch's add_bias_kv / add_zero_attn, MegEngine's reslink, PyTorch/MegEngine weights
///   nn::MultiHeadAttention t(nn::MultiHeadAttentionOptions(512, 8).add_bias_kv(true).add_zero_attn(true));
///   t->load_torch_state(torch_state);   // keys exactly torch.nn.MultiheadAttention's state_dict()
///   Tensor io = t->to_megengine_io_weight_bias();   // (1, N), MegEngine's packed order
///   // replaceable pieces (Ivy's to_q_fn / to_kv_fn / to_out_fn, Flax's attention_fn)
///   auto o = nn::MultiHeadAttentionOptions(512, 8)
///                .to_q_fn([&](const Tensor& x, nn::Linear& q) { return q(x) + lora(x); })
///                .attention_fn(kiln::scaled_dot_product_attention_reference);
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "../autograd/ops_attention.hpp"
#include "../core/generator.hpp"
#include "kv_cache.hpp"
#include "linear.hpp"
#include "module.hpp"
#include "normalization.hpp"
#include "rotary.hpp"

namespace kiln::nn {

/// Position hook on the projected heads before the attention core (after qk_norm):
/// x is q (batch..., H, T, Dk) or k (batch..., Hkv, S, Dk) (is_key), positions int64 (L,) or
/// (batch..., 1, L); returns the transformed x (same shape). Keys are transformed before they are
/// stored in a KV cache. nn::RotaryEmbedding is one (MultiHeadAttentionOptions::rotary).
using MhaPositionFn = std::function<Tensor(const Tensor& x, const Tensor& positions, bool is_key)>;
/// Replaces `q_proj(query)`; gets the module's q_proj (use it, wrap it, or ignore it) and returns
/// (batch..., T, H * head_dim).
using MhaToQFn = std::function<Tensor(const Tensor& query, Linear& q_proj)>;
/// Replaces `{k_proj(key), v_proj(value)}`; returns (batch..., S, Hkv * head_dim) and
/// (batch..., S, Hkv * v_head_dim).
using MhaToKVFn =
    std::function<std::pair<Tensor, Tensor>(const Tensor& key, const Tensor& value, Linear& k_proj, Linear& v_proj)>;
/// Replaces `out_proj(heads)`: (batch..., T, H * v_head_dim) -> (batch..., T, out_dim).
using MhaToOutFn = std::function<Tensor(const Tensor& heads, Linear& out_proj)>;
/// Replaces the attention core (Flax's attention_fn): gets q (batch..., H, T, Dk), k and v
/// (batch..., Hkv, S, D) and the options the module built (mask, causal, scale, dropout, ...);
/// must return output (batch..., H, T, Dv) and, when opts.need_weights(), the weights.
/// kiln::scaled_dot_product_attention_reference is a drop-in.
using MhaAttentionFn =
    std::function<SdpaResult(const Tensor& q, const Tensor& k, const Tensor& v, const SdpaOptions& opts)>;

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
  /// Initializer of q/k/v_proj.weight (default: Xavier-uniform per matrix), called with
  /// `generator`: `.kernel_init([](Tensor w, Generator* g) { nn::init::normal_(w, 0, 0.02, g); })`.
  KILN_ARG(InitFn, kernel_init);
  /// Initializer of out_proj.weight (default: Xavier-uniform).
  KILN_ARG(InitFn, out_kernel_init);
  /// Initializer of every projection bias (default: zeros).
  KILN_ARG(InitFn, bias_init);
  /// Multiplies q k^T (default 1 / sqrt(head_dim)).
  KILN_ARG(std::optional<double>, scale);
  /// Normalization of q and k per head (over head_dim) before the dot products:
  /// Norm::LayerNorm or Norm::RMSNorm (registered as q_norm / k_norm).
  KILN_ARG(Norm, qk_norm) = Norm::None;
  /// eps of the q/k norms (default: LayerNorm's 1e-5, RMSNorm's machine epsilon of its compute type).
  KILN_ARG(std::optional<double>, qk_norm_eps);
  /// Random numbers for initialization and both dropouts (null = the default generator); it
  /// must outlive the module.
  KILN_ARG(Generator*, generator) = nullptr;

  /// Keras attention_axes: the input dims attention runs over (negative counts from the end; not
  /// the feature dim). Empty (default) = the second-to-last dim. Every other dim except the last
  /// is a batch dim: q (B, A1, A2, E) with {1, 2} attends over all A1 * A2 positions, with {2}
  /// along A2 separately for each (B, A1). Keys/values share the query's batch dims; their
  /// attended dims may differ in size. Masks, key_padding, causal, bias and weights then refer to
  /// the flattened positions (row-major over the axes in increasing order): attn_mask broadcastable
  /// to (batch'..., H, T, S) with batch' the non-attended dims in order, T = A1 * A2, and weights
  /// are returned as (batch'..., H, T, S); window and ALiBi distances are over the flattened index
  /// too. Not combinable with a KV cache.
  KILN_ARG(std::vector<std::int64_t>, attention_axes);
  /// PyTorch/MegEngine add_bias_kv: learned bias_k (1, 1, Hkv * head_dim) and bias_v
  /// (1, 1, Hkv * v_head_dim) appended as one more key/value position after the projections.
  /// Init: Xavier-normal (as PyTorch).
  KILN_ARG(bool, add_bias_kv) = false;
  /// PyTorch/MegEngine add_zero_attn: a zero key/value position appended last (after bias_kv).
  /// The appended positions are always attendable: masks and padding get a true (0.0) column for
  /// each, as PyTorch pads them; causal (and a KV cache) concern the S real keys only, and the
  /// extra columns follow them (weights (..., T, S + n)). Not combinable with window or ALiBi.
  KILN_ARG(bool, add_zero_attn) = false;
  /// MegEngine reslink: returns output + query (needs out_dim == embed_dim).
  KILN_ARG(bool, reslink) = false;
  /// RoPE on q and k per head (registered as child "rotary", no parameters); positions come
  /// from the KV cache length or MhaForward::positions. Excludes position_fn.
  KILN_ARG(std::optional<RotaryEmbeddingOptions>, rotary);
  /// A custom position hook (see MhaPositionFn).
  KILN_ARG(MhaPositionFn, position_fn);
  /// Ivy's to_q_fn / to_kv_fn / to_out_fn and Flax's attention_fn (see the aliases above).
  KILN_ARG(MhaToQFn, to_q_fn);
  KILN_ARG(MhaToKVFn, to_kv_fn);
  KILN_ARG(MhaToOutFn, to_out_fn);
  KILN_ARG(MhaAttentionFn, attention_fn);

  /// ALiBi (Press et al.): adds -m_h * |p - s| to head h's logits, with the paper's slopes
  /// m = kiln::alibi_slopes(num_heads); positions p of the queries are bottom-right aligned
  /// (KV cache aware) as for causal.
  KILN_ARG(bool, alibi) = false;
  /// ALiBi with custom fixed slopes (num_heads,) instead (implies alibi). Held as buffer
  /// `alibi_slopes` (moves with to(), not in state_dict()).
  KILN_ARG(Tensor, alibi_slopes);
  /// Learned per-head attention sinks (gpt-oss): parameter `sinks` (num_heads,), initialized to
  /// zeros, a logit per head that joins every softmax denominator without a value, so a query may
  /// attend to "nothing" (returned weights then sum to less than 1).
  KILN_ARG(bool, attention_sinks) = false;
  /// Sliding-window (local) attention: the query at position p attends keys s with
  /// p - window_left <= s <= p + window_right; a negative width leaves that side unbounded (the
  /// default, no window). Positions are bottom-right aligned as for causal, so it holds with a
  /// KV cache. `.window_left(4095)` with is_causal: each query sees the last 4096 keys (Mistral).
  KILN_ARG(std::int64_t, window_left) = -1;
  KILN_ARG(std::int64_t, window_right) = -1;
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
  /// Additive bias on the logits (Flux's bias, relative-position biases), floating point,
  /// broadcastable to (batch..., H, T, S); differentiable. Combined with attn_mask (added to a
  /// float mask; kept where a bool mask is true, -inf elsewhere) and with every other mask.
  KILN_ARG(Tensor, attn_bias);
  /// A KV cache to append this call's keys/values to and attend over (see kv_cache.hpp). S then
  /// counts every cached position (masks, key_padding and bias are over cache.length() after
  /// the append).
  KILN_ARG(KVCache*, cache) = nullptr;
  /// Positions for the position hook / rotary: int64 (T,) or (batch..., T) for the queries
  /// (default: cache length before this call + 0 .. T-1, i.e. 0 .. T-1 without a cache).
  KILN_ARG(Tensor, positions);
  /// Positions of the new keys (default: `positions` when there are as many keys as queries,
  /// else cache length + 0 .. S-1).
  KILN_ARG(Tensor, key_positions);
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

  /// An empty cache for this module's kv heads, head dims, dtype and device (under autocast, the
  /// autocast dtype, which the projections then produce).
  KVCache make_kv_cache(const Shape& batch, std::int64_t max_length) const;
  KVCache make_kv_cache(std::int64_t batch, std::int64_t max_length) const {
    return make_kv_cache(Shape{batch}, max_length);
  }

  // ---- weight layouts of other frameworks (mha_layouts.cpp) ----
  /// torch.nn.MultiheadAttention's state_dict() for these weights, keys exactly PyTorch's:
  /// in_proj_weight (3E, E) when kdim == vdim == embed_dim, else q_proj_weight / k_proj_weight /
  /// v_proj_weight; in_proj_bias (3E) and out_proj.bias when bias; bias_k / bias_v (1, 1, E)
  /// with add_bias_kv; out_proj.weight. Copies (detached). Throws kiln::Error for modules PyTorch
  /// cannot express (grouped kv heads, head_dim * num_heads != embed_dim, v_head_dim != head_dim,
  /// out_dim != embed_dim, mixed bias flags, qk_norm).
  OrderedDict<Tensor> to_torch_state() const;
  /// Loads such a state (strict: missing, unexpected or mis-shaped keys throw before anything
  /// is copied); values are converted to the module's dtype and device.
  void load_torch_state(const OrderedDict<Tensor>& state);
  /// MegEngine's packed io_weight_bias (1, N), Y = X W order: the weights W_q (embed_dim,
  /// qproj_size), W_k (kdim, kproj_size), W_v (vdim, vproj_size), W_o (vproj_size, oproj_size),
  /// row-major, then the biases q, k, v, o that exist. Sizes: qproj = H * head_dim, kproj =
  /// H * head_dim, vproj = H * v_head_dim, oproj = out_dim; biases per q_bias .. out_bias.
  /// Needs num_kv_heads == num_heads and no qk_norm. bias_k / bias_v are separate parameters in
  /// MegEngine too (as here).
  Tensor to_megengine_io_weight_bias() const;
  void load_megengine_io_weight_bias(const Tensor& io_weight_bias);

  MultiHeadAttentionOptions options;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  /// Only with qk_norm (LayerNorm or RMSNorm over head_dim, shared by the heads).
  std::shared_ptr<Module> q_norm, k_norm;
  /// Only with add_bias_kv: (1, 1, Hkv * head_dim) and (1, 1, Hkv * v_head_dim).
  Tensor bias_k, bias_v;
  /// Only with the rotary option.
  RotaryEmbedding rotary{nullptr};
  /// Only with alibi: the slopes (num_heads,) (a non-persistent buffer).
  Tensor alibi_slopes;
  /// Only with attention_sinks: the sink logits (num_heads,).
  Tensor sinks;

 private:
  void init_extra_parameters();
  MhaResult run(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f);
  MhaResult attend(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f);
  MhaResult attend_axes(const Tensor& q, const Tensor& k, const Tensor& v, const MhaForward& f);
  Tensor norm_heads(const std::shared_ptr<Module>& norm, const Tensor& x) const;
  Tensor broadcast_dropout_attention(const Tensor& P, const Tensor& v) const;
  // attend()'s stages, in order, on the per-call state (multihead_attention.cpp).
  struct Call;
  Shape check_inputs(const Tensor& q, const Tensor& k, const Tensor& v) const;
  void open_cache(Call& c) const;
  void build_mask(Call& c) const;
  void add_key_padding(Call& c) const;
  void project_heads(Call& c);
  void apply_positions(Call& c);
  void append_extra_keys(Call& c) const;
  MhaResult attend_core(Call& c);
};
KILN_MODULE(MultiHeadAttention);

namespace functional {

/// Ivy's functional multi-head attention (ivy.multi_head_attention), projections optional:
///   q = to_q_fn ? to_q_fn(x) : x                                    (batch..., T, H * Dk)
///   k, v = to_kv_fn ? to_kv_fn(context) : the two halves of context's features
///   out = to_out_fn ? to_out_fn(heads) : heads                      heads (batch..., T, H * Dv)
/// context defaults to x (self-attention). mask is bool (true = may attend) or floating point
/// (added), broadcastable to (batch..., T, S) and shared by the heads; scale multiplies q k^T.
/// Without to_q_fn, q's width (x's) must equal k's (half of context's): pass a context twice as
/// wide as x, or a to_q_fn / to_kv_fn.
///   Tensor y = nn::functional::multi_head_attention(x, 0.125, 4, ctx);   // x (B, T, 32), ctx (B, S, 64)
Tensor multi_head_attention(const Tensor& x, double scale, std::int64_t num_heads, const Tensor& context = {},
                            const Tensor& mask = {}, const std::function<Tensor(const Tensor&)>& to_q_fn = {},
                            const std::function<std::pair<Tensor, Tensor>(const Tensor&)>& to_kv_fn = {},
                            const std::function<Tensor(const Tensor&)>& to_out_fn = {});

}  // namespace functional

}  // namespace kiln::nn
