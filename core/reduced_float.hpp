#pragma once
// bfloat16/float16 through a backend's float32 kernels (internal to kiln, both backends): the
// inputs converted to float32, the float32 kernel run, each output rounded once. This is how
// attention runs in 16-bit floats where no native 16-bit kernel applies, and the reference the
// native kernels are tested against.
#include "backend.hpp"

namespace kiln {

/// A float32 copy of a bfloat16/float16 tensor on its device; any other tensor (or an undefined
/// one) as it is. With convert = false the float32 tensor is only allocated.
Tensor float32_copy(Backend& be, const Tensor& t, bool convert = true);

/// Backend::attention_forward / attention_backward / attention_dropout_mask for bfloat16/float16
/// q, k, v (lse is float32 already).
void attention_forward_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                   const Tensor& weights);
void attention_backward_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                    const Tensor& gout, const Tensor& weights, const Tensor& gweights,
                                    const AttentionGrads& grads);
void attention_dropout_mask_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out);

}  // namespace kiln
