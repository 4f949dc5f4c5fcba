#include "transformer.hpp"

#include "functional.hpp"

namespace kiln::nn {

namespace {

void check_layer_options(const TransformerLayerOptions& o, const char* op) {
  KILN_CHECK(o.d_model() > 0 && o.nhead() > 0, op, "need d_model > 0 and nhead > 0, got {} and {}", o.d_model(),
             o.nhead());
  KILN_CHECK(o.dim_feedforward() >= 0, op, "dim_feedforward must be >= 0 (0 = 4 * d_model), got {}",
             o.dim_feedforward());
  KILN_CHECK(o.dropout() >= 0.0 && o.dropout() <= 1.0, op, "dropout must be in [0, 1], got {}", o.dropout());
  if (!o.make_norm())
    KILN_CHECK(o.norm() != Norm::None, op, "norm must be Norm::LayerNorm or Norm::RMSNorm, got Norm::None");
}

// A block from the user's builder (which must not return an empty one) or the built-in default.
template <typename Block, typename Builder, typename Default>
Block build(const Builder& builder, const TransformerLayerOptions& o, const char* what, const char* op,
            Default&& make_default) {
  if (!builder) return Block(make_default());
  Block b = builder(o);
  KILN_CHECK(!b.is_empty(), op, "the {} builder returned an empty module", what);
  return b;
}

NormModule make_layer_norm(const TransformerLayerOptions& o, const char* op) {
  return build<NormModule>(o.make_norm(), o, "make_norm", op, [&]() -> NormModule {
    if (o.norm() == Norm::RMSNorm) return RMSNorm(RMSNormOptions({o.d_model()}).eps(o.norm_eps()));
    return LayerNorm(LayerNormOptions({o.d_model()}).eps(o.norm_eps()).bias(o.bias()));
  });
}

MultiHeadAttention make_attention(const TransformerLayerOptions& o, std::optional<std::int64_t> kv_dim) {
  auto a = MultiHeadAttentionOptions(o.d_model(), o.nhead())
               .num_kv_heads(o.num_kv_heads())
               .dropout(o.attn_dropout().value_or(o.dropout()))
               .bias(o.bias())
               .qk_norm(o.qk_norm())
               .generator(o.generator());
  if (kv_dim) a.kdim(*kv_dim).vdim(*kv_dim);
  return MultiHeadAttention(a);
}

// The feed-forward, with its initializers and hidden dropout drawing from the layer's generator.
FeedForward make_ff(const TransformerLayerOptions& o) {
  FeedForward ff(FeedForwardOptions(o.d_model(), o.dim_feedforward())
                     .activation(o.activation())
                     .gated(o.gated())
                     .dropout(o.dropout())
                     .bias(o.bias()));
  if (Generator* gen = o.generator()) {
    ff->dropout->options.generator(gen);
    for (Linear l : {ff->fc1, ff->gate, ff->fc2}) {
      if (l.is_empty()) continue;
      l->options.generator(gen);  // Linear's default distributions, from the generator
      l->reset_parameters();
    }
  }
  return ff;
}

Dropout make_dropout(const TransformerLayerOptions& o) {
  return Dropout(DropoutOptions(o.dropout()).generator(o.generator()));
}

std::string layer_repr(const TransformerLayerOptions& o) {
  return fmt::format("d_model={}, nhead={}, dim_feedforward={}, dropout={}, activation={}, norm_first={}, norm={}",
                     o.d_model(), o.nhead(), o.dim_feedforward() > 0 ? o.dim_feedforward() : 4 * o.d_model(),
                     o.dropout(), to_string(o.activation()), o.norm_first(), to_string(o.norm()));
}

// Registers a block under `name` and returns it (the slot keeps the typed call).
template <typename Block>
Block add(Module& m, const char* name, Block block) {
  m.register_module(name, block.ptr());
  return block;
}

// One residual sub-block around fn (self-attention, cross-attention or the feed-forward):
// x + dropout(fn(norm(x))) pre-norm, norm(x + dropout(fn(x))) post-norm.
template <typename Fn>
Tensor residual(const Tensor& x, bool norm_first, const NormModule& norm, Dropout& drop, Fn&& fn) {
  if (norm_first) return x + drop(fn(norm(x)));
  return norm(x + drop(fn(x)));
}

// A stack's layers (registered under "layers", kept typed in `list`) and its final norm.
template <typename Layer>
void build_stack(Module& stack, const TransformerEncoderOptions& o, ModuleList& layers, std::vector<Layer>& list,
                 NormModule& norm, const char* op) {
  layers = stack.register_module("layers", ModuleList());
  list.clear();
  for (std::int64_t i = 0; i < o.num_layers(); ++i) {
    list.emplace_back(o.layer());
    layers->push_back(list.back());
  }
  norm = nullptr;
  if (o.final_norm().value_or(o.layer().norm_first())) norm = add(stack, "norm", make_layer_norm(o.layer(), op));
}

std::string stack_repr(const TransformerEncoderOptions& o, const NormModule& norm) {
  return fmt::format("num_layers={}, final_norm={}", o.num_layers(), !norm.is_empty());
}

// The attention block a cache is made for (make_cache builds MultiHeadAttention caches only).
const MultiHeadAttentionImpl& cached_attention(const Module& block, const char* slot, const char* op) {
  const auto* m = dynamic_cast<const MultiHeadAttentionImpl*>(&block);
  KILN_CHECK(m, op, "make_cache needs a MultiHeadAttention as {}, got {}; fill the TransformerCache yourself", slot,
             block.name());
  return *m;
}

// A cache for `layers` layers (cross-attention caches only for a decoder), checked before any
// layer writes to it: a call that would overflow leaves every cache as it was.
void check_cache(const TransformerCache& c, std::size_t layers, bool decoder, bool causal, const Tensor& x,
                 const Tensor& memory, const char* op) {
  KILN_CHECK(c.self_attn.size() == layers && (!decoder || c.cross_attn.size() == layers), op,
             "the cache holds {} self-attention and {} cross-attention KV caches, but this call needs {} of each{}",
             c.self_attn.size(), c.cross_attn.size(), layers, decoder ? "" : " (self-attention only)");
  KILN_CHECK(causal, op,
             "a cache needs causal self-attention ({}): without it earlier positions would depend on later ones",
             decoder ? "DecoderForward::tgt_is_causal" : "EncoderForward::is_causal");
  KILN_CHECK(x.defined() && x.dim() >= 2, op, "the input must be (batch..., T, d_model), got {}",
             x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  for (const KVCache& k : c.self_attn) k.check_append(x.size(-2));
  if (!decoder) return;
  KILN_CHECK(memory.defined() && memory.dim() >= 2, op, "memory must be (batch..., S, memory_dim), got {}",
             memory.defined() ? shape_str(memory.shape()) : std::string("undefined"));
  for (const KVCache& k : c.cross_attn) {
    if (k.defined() && k.length() == 0) k.check_append(memory.size(-2));
    KILN_CHECK(k.length() == 0 || k.length() == memory.size(-2), op,
               "memory has {} positions but the cache holds keys/values of {} (reset() the cache for new memory)",
               memory.size(-2), k.length());
  }
}

}  // namespace

// ---------------------------------------------------------------- encoder layer
TransformerEncoderLayerImpl::TransformerEncoderLayerImpl(const TransformerLayerOptions& options_)
    : Module("TransformerEncoderLayer"), options(options_) {
  check_layer_options(options, "TransformerEncoderLayer");
  reset();
}

void TransformerEncoderLayerImpl::reset() {
  const char* op = "TransformerEncoderLayer";
  self_attn = add(*this, "self_attn",
                  build<SelfAttentionModule>(options.make_self_attention(), options, "make_self_attention", op,
                                             [&] { return make_attention(options, std::nullopt); }));
  ff = add(*this, "ff", build<FeedForwardModule>(options.make_feedforward(), options, "make_feedforward", op, [&] {
    return make_ff(options);
  }));
  norm1 = add(*this, "norm1", make_layer_norm(options, op));
  norm2 = add(*this, "norm2", make_layer_norm(options, op));
  dropout1 = register_module("dropout1", make_dropout(options));
  dropout2 = register_module("dropout2", make_dropout(options));
}

std::string TransformerEncoderLayerImpl::extra_repr() const { return layer_repr(options); }

TransformerCache TransformerEncoderLayerImpl::make_cache(const Shape& batch, std::int64_t max_length) const {
  TransformerCache c;
  c.self_attn.push_back(
      cached_attention(*self_attn, "self_attn", "TransformerEncoderLayer").make_kv_cache(batch, max_length));
  return c;
}

Tensor TransformerEncoderLayerImpl::forward(const Tensor& src, const EncoderForward& f) {
  TransformerCache* c = f.cache();
  if (c) check_cache(*c, 1, false, f.is_causal(), src, {}, "TransformerEncoderLayer");
  return step(src, f, c ? &c->self_attn[0] : nullptr);
}

Tensor TransformerEncoderLayerImpl::step(const Tensor& src, const EncoderForward& f, KVCache* cache) {
  const MhaForward mf =
      MhaForward().attn_mask(f.attn_mask()).key_padding(f.key_padding()).is_causal(f.is_causal()).cache(cache);
  const bool pre = options.norm_first();
  Tensor x = residual(src, pre, norm1, dropout1, [&](const Tensor& h) { return self_attn(h, mf); });
  return residual(x, pre, norm2, dropout2, [&](const Tensor& h) { return ff(h); });
}

// ---------------------------------------------------------------- decoder layer
TransformerDecoderLayerImpl::TransformerDecoderLayerImpl(const TransformerLayerOptions& options_)
    : Module("TransformerDecoderLayer"), options(options_) {
  check_layer_options(options, "TransformerDecoderLayer");
  if (auto m = options.memory_dim())
    KILN_CHECK(*m > 0, "TransformerDecoderLayer", "memory_dim must be > 0, got {}", *m);
  reset();
}

void TransformerDecoderLayerImpl::reset() {
  const char* op = "TransformerDecoderLayer";
  self_attn = add(*this, "self_attn",
                  build<SelfAttentionModule>(options.make_self_attention(), options, "make_self_attention", op,
                                             [&] { return make_attention(options, std::nullopt); }));
  cross_attn = add(*this, "cross_attn",
                   build<CrossAttentionModule>(options.make_cross_attention(), options, "make_cross_attention", op,
                                               [&] { return make_attention(options, options.memory_dim()); }));
  ff = add(*this, "ff", build<FeedForwardModule>(options.make_feedforward(), options, "make_feedforward", op, [&] {
    return make_ff(options);
  }));
  norm1 = add(*this, "norm1", make_layer_norm(options, op));
  norm2 = add(*this, "norm2", make_layer_norm(options, op));
  norm3 = add(*this, "norm3", make_layer_norm(options, op));
  dropout1 = register_module("dropout1", make_dropout(options));
  dropout2 = register_module("dropout2", make_dropout(options));
  dropout3 = register_module("dropout3", make_dropout(options));
}

std::string TransformerDecoderLayerImpl::extra_repr() const { return layer_repr(options); }

TransformerCache TransformerDecoderLayerImpl::make_cache(const Shape& batch, std::int64_t max_length,
                                                         std::int64_t memory_length) const {
  const char* op = "TransformerDecoderLayer";
  TransformerCache c;
  c.self_attn.push_back(cached_attention(*self_attn, "self_attn", op).make_kv_cache(batch, max_length));
  c.cross_attn.push_back(cached_attention(*cross_attn, "cross_attn", op).make_kv_cache(batch, memory_length));
  return c;
}

Tensor TransformerDecoderLayerImpl::forward(const Tensor& tgt, const Tensor& memory, const DecoderForward& f) {
  TransformerCache* c = f.cache();
  if (c) check_cache(*c, 1, true, f.tgt_is_causal(), tgt, memory, "TransformerDecoderLayer");
  return step(tgt, memory, f, c ? &c->self_attn[0] : nullptr, c ? &c->cross_attn[0] : nullptr);
}

Tensor TransformerDecoderLayerImpl::step(const Tensor& tgt, const Tensor& memory, const DecoderForward& f,
                                         KVCache* self_cache, KVCache* cross_cache) {
  const MhaForward sf = MhaForward()
                            .attn_mask(f.tgt_mask())
                            .key_padding(f.tgt_key_padding())
                            .is_causal(f.tgt_is_causal())
                            .cache(self_cache);
  const MhaForward cf = MhaForward()
                            .attn_mask(f.memory_mask())
                            .key_padding(f.memory_key_padding())
                            .is_causal(f.memory_is_causal())
                            .cache(cross_cache);
  // With a cache, memory's keys/values are projected by the first call only; later calls pass
  // no new keys and attend over the cached ones.
  Tensor kv = memory;
  if (cross_cache) {
    KILN_CHECK(!f.memory_is_causal(), "TransformerDecoderLayer",
               "memory_is_causal cannot be combined with a cache (the cached memory keys have no query alignment)");
    if (cross_cache->length() > 0) kv = memory.narrow(-2, 0, 0);
  }
  const bool pre = options.norm_first();
  Tensor x = residual(tgt, pre, norm1, dropout1, [&](const Tensor& h) { return self_attn(h, sf); });
  x = residual(x, pre, norm2, dropout2, [&](const Tensor& h) { return cross_attn(h, kv, cf); });
  return residual(x, pre, norm3, dropout3, [&](const Tensor& h) { return ff(h); });
}

// ---------------------------------------------------------------- stacks
namespace {
void check_stack(const TransformerEncoderOptions& o, const char* op) {
  KILN_CHECK(o.num_layers() >= 0, op, "num_layers must be >= 0, got {}", o.num_layers());
}
}  // namespace

TransformerEncoderImpl::TransformerEncoderImpl(const TransformerEncoderOptions& options_)
    : Module("TransformerEncoder"), options(options_) {
  check_stack(options, "TransformerEncoder");
  check_layer_options(options.layer(), "TransformerEncoder");
  reset();
}

void TransformerEncoderImpl::reset() { build_stack(*this, options, layers, layer_list, norm, "TransformerEncoder"); }

std::string TransformerEncoderImpl::extra_repr() const { return stack_repr(options, norm); }

Tensor TransformerEncoderImpl::forward(const Tensor& src, const EncoderForward& f) {
  TransformerCache* c = f.cache();
  if (c) check_cache(*c, layer_list.size(), false, f.is_causal(), src, {}, "TransformerEncoder");
  Tensor x = src;
  for (std::size_t i = 0; i < layer_list.size(); ++i) x = layer_list[i]->step(x, f, c ? &c->self_attn[i] : nullptr);
  return norm ? norm(x) : x;
}

TransformerCache TransformerEncoderImpl::make_cache(const Shape& batch, std::int64_t max_length) const {
  TransformerCache c;
  for (const auto& l : layer_list) c.self_attn.push_back(std::move(l->make_cache(batch, max_length).self_attn[0]));
  return c;
}

TransformerDecoderImpl::TransformerDecoderImpl(const TransformerDecoderOptions& options_)
    : Module("TransformerDecoder"), options(options_) {
  check_stack(options, "TransformerDecoder");
  check_layer_options(options.layer(), "TransformerDecoder");
  reset();
}

void TransformerDecoderImpl::reset() { build_stack(*this, options, layers, layer_list, norm, "TransformerDecoder"); }

std::string TransformerDecoderImpl::extra_repr() const { return stack_repr(options, norm); }

Tensor TransformerDecoderImpl::forward(const Tensor& tgt, const Tensor& memory, const DecoderForward& f) {
  TransformerCache* c = f.cache();
  if (c) check_cache(*c, layer_list.size(), true, f.tgt_is_causal(), tgt, memory, "TransformerDecoder");
  Tensor x = tgt;
  for (std::size_t i = 0; i < layer_list.size(); ++i)
    x = layer_list[i]->step(x, memory, f, c ? &c->self_attn[i] : nullptr, c ? &c->cross_attn[i] : nullptr);
  return norm ? norm(x) : x;
}

TransformerCache TransformerDecoderImpl::make_cache(const Shape& batch, std::int64_t max_length,
                                                    std::int64_t memory_length) const {
  TransformerCache c;
  for (const auto& l : layer_list) {
    TransformerCache one = l->make_cache(batch, max_length, memory_length);
    c.self_attn.push_back(std::move(one.self_attn[0]));
    c.cross_attn.push_back(std::move(one.cross_attn[0]));
  }
  return c;
}

// ---------------------------------------------------------------- cache
void TransformerCache::reset() {
  for (KVCache& c : self_attn) c.reset();
  for (KVCache& c : cross_attn) c.reset();
}

void TransformerCache::reorder(const Tensor& indices) {
  for (KVCache& c : self_attn) c.reorder(indices);
  for (KVCache& c : cross_attn) c.reorder(indices);
}

}  // namespace kiln::nn
