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

Tensor TransformerEncoderLayerImpl::forward(const Tensor& src, const EncoderForward& f) {
  const MhaForward mf = MhaForward().attn_mask(f.attn_mask()).key_padding(f.key_padding()).is_causal(f.is_causal());
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

Tensor TransformerDecoderLayerImpl::forward(const Tensor& tgt, const Tensor& memory, const DecoderForward& f) {
  const MhaForward sf =
      MhaForward().attn_mask(f.tgt_mask()).key_padding(f.tgt_key_padding()).is_causal(f.tgt_is_causal());
  const MhaForward cf =
      MhaForward().attn_mask(f.memory_mask()).key_padding(f.memory_key_padding()).is_causal(f.memory_is_causal());
  const bool pre = options.norm_first();
  Tensor x = residual(tgt, pre, norm1, dropout1, [&](const Tensor& h) { return self_attn(h, sf); });
  x = residual(x, pre, norm2, dropout2, [&](const Tensor& h) { return cross_attn(h, memory, cf); });
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
  Tensor x = src;
  for (auto& l : layer_list) x = l(x, f);
  return norm ? norm(x) : x;
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
  Tensor x = tgt;
  for (auto& l : layer_list) x = l(x, memory, f);
  return norm ? norm(x) : x;
}

}  // namespace kiln::nn
