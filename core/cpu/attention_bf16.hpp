#pragma once
// The bfloat16 attention forward and backward on AVX512-BF16 dot products (attention_bf16.cpp,
// attention_bf16_backward.cpp; internal).
#include "../backend.hpp"

namespace kiln::cpu {

/// The forward of Backend::attention_forward for bfloat16 q, k, v (out bfloat16, lse float32).
/// Returns false, having done nothing, where it does not apply (bf16 dot products off, see
/// bf16_dot.hpp; another dtype; returned weights; few-query calls): the caller then runs the
/// float32 kernels.
bool bf16_attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights);

/// The forward for bfloat16 q, k, v with at most kDecodeRows query rows per kv head (KV-cache
/// decoding; attention_decode.cpp): the float32 few-query kernel reading bf16 K and V in place,
/// tile by tile, instead of a float32 copy of the whole cache. Any CPU; returns false where it
/// does not apply (another dtype, more rows, returned weights).
bool bf16_attention_decode(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights);

/// The backward of Backend::attention_backward for bfloat16 q, k, v, out, gout and gradients (lse
/// float32). Returns false, having done nothing, where it does not apply (bf16 dot products off;
/// another dtype; returned weights): the caller then runs the float32 kernels.
bool bf16_attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                             const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads);

}  // namespace kiln::cpu
