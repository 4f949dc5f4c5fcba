#pragma once
/// Transformer layers built on nn::MultiHeadAttention and nn::FeedForward, batch first
/// `[batch..., T, d_model]`, with PyTorch's structure (torch.nn.TransformerEncoderLayer etc.):
///   post-norm (default):  x = norm1(x + drop1(self_attn(x)));  x = norm2(x + drop2(ff(x)))
///   pre-norm (norm_first): x = x + drop1(self_attn(norm1(x))); x = x + drop2(ff(norm2(x)))
/// The decoder inserts cross-attention over `memory` (norm2/drop2) before the feed-forward
/// (norm3/drop3); its self-attention is causal unless DecoderForward().tgt_is_causal(false).
///
///   auto layer = nn::TransformerLayerOptions(512, 8).dim_feedforward(2048).dropout(0.1).norm_first(true);
///   nn::TransformerEncoder enc(nn::TransformerEncoderOptions(layer, 6));      // final norm: pre-norm default
///   Tensor h = enc(src, nn::EncoderForward().key_padding(src_lengths));       // (B, S, 512)
///   nn::TransformerDecoder dec(nn::TransformerDecoderOptions(layer, 6));
///   Tensor y = dec(tgt, h, nn::DecoderForward().memory_key_padding(src_lengths));  // causal self-attention
///
/// Parameter names: "layers.0.self_attn.q_proj.weight", "layers.0.ff.fc1.weight", "layers.0.norm1.weight",
/// decoder "layers.0.cross_attn.k_proj.weight", final "norm.weight".
///
/// Incremental decoding (greedy, beam or sampled generation) with a TransformerCache: each call
/// passes only the new target positions; the self-attentions append their keys/values to the
/// cache and attend over every position stored, the cross-attentions project `memory` once (on
/// the first call) and reuse those keys/values. Causal outputs equal the full forward's:
///   NoGradGuard no_grad;
///   nn::TransformerCache cache = dec->make_cache(/*batch=*/{B}, /*max_length=*/T, /*memory_length=*/S);
///   auto f = nn::DecoderForward().memory_key_padding(src_lengths).cache(&cache);
///   Tensor y0 = dec(bos, h, f);    // (B, 1, 512): position 0
///   Tensor y1 = dec(tok1, h, f);   // position 1, attending to positions 0..1 and all of h
///   cache.reset();                 // a new sequence (and new memory); the buffers are kept
///
/// Your own blocks: the feed-forward, the attentions and the norms are built by the options'
/// `make_*` builders when given (each call makes one fresh block, sized from the layer options),
/// and registered under the same names ("ff", "self_attn", "norm1", ...):
///   auto layer = nn::TransformerLayerOptions(512, 8).make_feedforward(
///       [](const nn::TransformerLayerOptions& o) { return MySwiGLU(o.d_model(), 1376); });
/// A feed-forward or norm is any module with `Tensor forward(const Tensor&)`; a self-attention
/// takes `(const Tensor& x, const MhaForward& masks)`, a cross-attention `(x, memory, masks)`.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "any_module.hpp"
#include "container.hpp"
#include "dropout.hpp"
#include "feedforward.hpp"
#include "module.hpp"
#include "multihead_attention.hpp"
#include "normalization.hpp"

namespace kiln::nn {

struct TransformerLayerOptions;

/// The blocks of a transformer layer, held by the call the layer makes (nn/any_module.hpp).
using FeedForwardModule = AnyModule<Tensor(const Tensor&)>;  // (batch..., T, d_model) -> same
using NormModule = AnyModule<Tensor(const Tensor&)>;
using SelfAttentionModule = AnyModule<Tensor(const Tensor&, const MhaForward&)>;                  // x, masks
using CrossAttentionModule = AnyModule<Tensor(const Tensor&, const Tensor&, const MhaForward&)>;  // x, memory, masks
/// Builders of those blocks from a layer's options.
using FeedForwardBuilder = std::function<FeedForwardModule(const TransformerLayerOptions&)>;
using NormBuilder = std::function<NormModule(const TransformerLayerOptions&)>;
using SelfAttentionBuilder = std::function<SelfAttentionModule(const TransformerLayerOptions&)>;
using CrossAttentionBuilder = std::function<CrossAttentionModule(const TransformerLayerOptions&)>;

/// Options of one encoder or decoder layer.
struct TransformerLayerOptions {
  TransformerLayerOptions(std::int64_t d_model, std::int64_t nhead) : d_model_(d_model), nhead_(nhead) {}
  KILN_ARG(std::int64_t, d_model);
  KILN_ARG(std::int64_t, nhead);
  /// Key/value heads of the attentions (default nhead): grouped-query attention.
  KILN_ARG(std::optional<std::int64_t>, num_kv_heads);
  /// Hidden width of the feed-forward (0 = 4 * d_model).
  KILN_ARG(std::int64_t, dim_feedforward) = 0;
  /// Dropout after each sub-layer (before the residual add) and on the feed-forward's hidden
  /// activations, as PyTorch.
  KILN_ARG(double, dropout) = 0.1;
  /// Dropout on the attention probabilities (default: dropout, as PyTorch).
  KILN_ARG(std::optional<double>, attn_dropout);
  /// Feed-forward activation (ReLU is PyTorch's default).
  KILN_ARG(Activation, activation) = Activation::ReLU;
  /// Gated (GLU) feed-forward: SwiGLU with SiLU, GEGLU with GELU.
  KILN_ARG(bool, gated) = false;
  /// Pre-norm (true) or post-norm (false, PyTorch's default).
  KILN_ARG(bool, norm_first) = false;
  /// Norm::LayerNorm or Norm::RMSNorm.
  KILN_ARG(Norm, norm) = Norm::LayerNorm;
  KILN_ARG(double, norm_eps) = 1e-5;
  /// Biases of the attention projections, the feed-forward and the LayerNorms.
  KILN_ARG(bool, bias) = true;
  KILN_ARG(Norm, qk_norm) = Norm::None;
  /// Decoder only: width of `memory` (default d_model), the cross-attention's kdim and vdim.
  KILN_ARG(std::optional<std::int64_t>, memory_dim);
  /// Random numbers for every initializer and dropout of the layer (null = the default
  /// generator); it must outlive the layer.
  KILN_ARG(Generator*, generator) = nullptr;
  /// Your own blocks instead of the built-in ones (empty = FeedForward, MultiHeadAttention,
  /// LayerNorm/RMSNorm from the options above). Each builder is called once per block: a layer
  /// calls make_norm for each of its norms, a stack for each layer and its final norm. The
  /// options above that only configure a replaced block (activation, gated, nhead, norm, ...)
  /// are then the builder's to use or ignore.
  KILN_ARG(FeedForwardBuilder, make_feedforward);
  KILN_ARG(SelfAttentionBuilder, make_self_attention);
  /// Decoder only.
  KILN_ARG(CrossAttentionBuilder, make_cross_attention);
  KILN_ARG(NormBuilder, make_norm);
};
using TransformerEncoderLayerOptions = TransformerLayerOptions;
using TransformerDecoderLayerOptions = TransformerLayerOptions;

/// The decoding state of a stack (or of one layer): per layer, the self-attention's KV cache
/// (it grows by the new positions every call) and, for a decoder, the cross-attention's KV cache
/// (memory's keys/values: filled from `memory` by the first call after make_cache / reset, then
/// only read; later calls must pass memory of the same length). Stored positions are constants:
/// gradients reach only the new positions of a call (decoding runs under NoGradGuard anyway).
/// Layers with your own attention blocks take caches too when those blocks honour
/// MhaForward::cache; fill the vectors yourself then (make_cache needs MultiHeadAttention).
struct TransformerCache {
  std::vector<KVCache> self_attn;   // one per layer
  std::vector<KVCache> cross_attn;  // decoder: one per layer; encoder: empty
  /// Target positions stored so far (the first layer's self-attention cache).
  std::int64_t length() const { return self_attn.empty() ? 0 : self_attn.front().length(); }
  /// Forget the sequence and the memory (every length 0; the buffers are kept).
  void reset();
  /// Beam search: entry i of the first batch dim becomes old entry indices[i] in every cache.
  void reorder(const Tensor& indices);
};

/// Masks of an encoder's self-attention (see MhaForward for their forms).
struct EncoderForward {
  KILN_ARG(Tensor, attn_mask);
  /// int64 valid lengths (batch...) or a bool keep-mask (batch..., S).
  KILN_ARG(Tensor, key_padding);
  KILN_ARG(bool, is_causal) = false;
  /// Incremental decoding with causal self-attention: append the new positions to this cache
  /// (from make_cache) and attend over all of them; attn_mask and key_padding then span every
  /// stored position.
  KILN_ARG(TransformerCache*, cache) = nullptr;
};

/// Masks of a decoder: its (by default causal) self-attention over tgt and its
/// cross-attention over memory.
struct DecoderForward {
  KILN_ARG(Tensor, tgt_mask);
  KILN_ARG(Tensor, tgt_key_padding);
  KILN_ARG(bool, tgt_is_causal) = true;
  KILN_ARG(Tensor, memory_mask);
  KILN_ARG(Tensor, memory_key_padding);
  KILN_ARG(bool, memory_is_causal) = false;
  /// Incremental decoding (see TransformerCache): tgt holds only the new positions; tgt_mask and
  /// tgt_key_padding span every stored position. Not combinable with memory_is_causal.
  KILN_ARG(TransformerCache*, cache) = nullptr;
};

class TransformerEncoderLayerImpl : public Module {
 public:
  TransformerEncoderLayerImpl(std::int64_t d_model, std::int64_t nhead)
      : TransformerEncoderLayerImpl(TransformerLayerOptions(d_model, nhead)) {}
  explicit TransformerEncoderLayerImpl(const TransformerLayerOptions& options);

  void reset() override;
  std::string extra_repr() const override;
  /// src (batch..., S, d_model) -> same shape.
  Tensor forward(const Tensor& src, const EncoderForward& f = {});
  /// An empty one-layer cache for EncoderForward::cache (self-attention a MultiHeadAttention),
  /// in the self-attention's dtype (under autocast, the autocast dtype) and device.
  TransformerCache make_cache(const Shape& batch, std::int64_t max_length) const;

  TransformerLayerOptions options;
  /// The blocks (MultiHeadAttention, FeedForward, LayerNorm/RMSNorm unless the options build
  /// others): `layer->ff(x)`, `layer->ff->as<nn::FeedForward>()->fc1`.
  SelfAttentionModule self_attn;
  FeedForwardModule ff;
  NormModule norm1, norm2;
  Dropout dropout1{nullptr}, dropout2{nullptr};

 private:
  friend class TransformerEncoderImpl;
  Tensor step(const Tensor& src, const EncoderForward& f, KVCache* cache);
};
KILN_MODULE(TransformerEncoderLayer);

class TransformerDecoderLayerImpl : public Module {
 public:
  TransformerDecoderLayerImpl(std::int64_t d_model, std::int64_t nhead)
      : TransformerDecoderLayerImpl(TransformerLayerOptions(d_model, nhead)) {}
  explicit TransformerDecoderLayerImpl(const TransformerLayerOptions& options);

  void reset() override;
  std::string extra_repr() const override;
  /// tgt (batch..., T, d_model), memory (batch..., S, memory_dim) -> (batch..., T, d_model).
  Tensor forward(const Tensor& tgt, const Tensor& memory, const DecoderForward& f = {});
  /// An empty one-layer cache for DecoderForward::cache: up to max_length target positions and
  /// memory_length memory positions (both attentions MultiHeadAttentions).
  TransformerCache make_cache(const Shape& batch, std::int64_t max_length, std::int64_t memory_length) const;

  TransformerLayerOptions options;
  SelfAttentionModule self_attn;
  CrossAttentionModule cross_attn;
  FeedForwardModule ff;
  NormModule norm1, norm2, norm3;
  Dropout dropout1{nullptr}, dropout2{nullptr}, dropout3{nullptr};

 private:
  friend class TransformerDecoderImpl;
  Tensor step(const Tensor& tgt, const Tensor& memory, const DecoderForward& f, KVCache* self_cache,
              KVCache* cross_cache);
};
KILN_MODULE(TransformerDecoderLayer);

/// A stack of num_layers encoder layers, each freshly initialized from `layer`.
struct TransformerEncoderOptions {
  TransformerEncoderOptions(TransformerLayerOptions layer, std::int64_t num_layers)
      : layer_(std::move(layer)), num_layers_(num_layers) {}
  KILN_ARG(TransformerLayerOptions, layer);
  KILN_ARG(std::int64_t, num_layers);
  /// A norm after the last layer (default: only for pre-norm layers, whose output is otherwise
  /// unnormalized).
  KILN_ARG(std::optional<bool>, final_norm);
};
using TransformerDecoderOptions = TransformerEncoderOptions;

class TransformerEncoderImpl : public Module {
 public:
  explicit TransformerEncoderImpl(const TransformerEncoderOptions& options);
  void reset() override;
  std::string extra_repr() const override;
  /// The same masks for every layer.
  Tensor forward(const Tensor& src, const EncoderForward& f = {});
  /// An empty cache of every layer (see the layer's make_cache).
  TransformerCache make_cache(const Shape& batch, std::int64_t max_length) const;

  TransformerEncoderOptions options;
  ModuleList layers{nullptr};
  std::vector<TransformerEncoderLayer> layer_list;  // the layers, typed
  NormModule norm;                                  // final norm or empty
};
KILN_MODULE(TransformerEncoder);

class TransformerDecoderImpl : public Module {
 public:
  explicit TransformerDecoderImpl(const TransformerDecoderOptions& options);
  void reset() override;
  std::string extra_repr() const override;
  Tensor forward(const Tensor& tgt, const Tensor& memory, const DecoderForward& f = {});
  TransformerCache make_cache(const Shape& batch, std::int64_t max_length, std::int64_t memory_length) const;

  TransformerDecoderOptions options;
  ModuleList layers{nullptr};
  std::vector<TransformerDecoderLayer> layer_list;
  NormModule norm;
};
KILN_MODULE(TransformerDecoder);

}  // namespace kiln::nn
