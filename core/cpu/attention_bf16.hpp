#pragma once
// The bfloat16 attention forward on AVX512-BF16 dot products (attention_bf16.cpp; internal).
#include "../backend.hpp"

namespace kiln::cpu {

/// The forward of Backend::attention_forward for bfloat16 q, k, v (out bfloat16, lse float32).
/// Returns false, having done nothing, where it does not apply (bf16 dot products off, see
/// bf16_dot.hpp; another dtype; returned weights; few-query calls): the caller then runs the
/// float32 kernels.
bool bf16_attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& weights);

}  // namespace kiln::cpu
