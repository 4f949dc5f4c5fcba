#pragma once
/// Scaled dot-product attention, the core every attention layer calls:
///   namespace F = kiln::nn::functional;
///   // q (B, H, T, Dk), k (B, Hkv, S, Dk), v (B, Hkv, S, Dv); H a multiple of Hkv (grouped-query)
///   auto r = F::scaled_dot_product_attention(q, k, v,
///       F::SdpaOptions().attn_mask(key_padding)   // bool, true = may attend; or float, added
///                       .is_causal(true)          // bottom-right aligned, ANDed with the mask
///                       .dropout_p(0.1).training(is_training()));
///   r.output;   // (B, H, T, Dv); r.weights only with .need_weights(true) (pre-dropout)
///   // Local attention over the last 256 keys, ALiBi, learned per-head sinks (all combinable):
///   F::SdpaOptions().is_causal(true).window_left(255).alibi_slopes(F::alibi_slopes(H)).sinks(s);
/// Any number of leading batch dims. Fused, flash-style kernels: memory O((T + S) * D) per head
/// unless the weights are requested. A query row with nothing to attend to outputs exactly 0 and
/// gets 0 gradient; NaN/Inf in masked-out keys or values never reaches outputs or gradients.
/// `.use_reference(true)` (or scaled_dot_product_attention_reference) runs the composite
/// matmul / where / softmax formulation with the same semantics and dropout draws.
/// The op itself lives in autograd/ops_attention.hpp; these are the same functions.
#include "../autograd/ops_attention.hpp"

namespace kiln::nn::functional {

using kiln::alibi_slopes;
using kiln::scaled_dot_product_attention;
using kiln::scaled_dot_product_attention_reference;
using kiln::SdpaOptions;
using kiln::SdpaResult;

}  // namespace kiln::nn::functional
