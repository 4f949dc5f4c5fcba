#include "reduced_float.hpp"

#include <initializer_list>
#include <utility>

namespace kiln {
namespace {

AttentionArgs float32_args(Backend& be, const AttentionArgs& a) {
  AttentionArgs f = a;
  for (Tensor* t : {&f.q, &f.k, &f.v, &f.mask, &f.alibi, &f.sinks}) *t = float32_copy(be, *t);
  return f;
}

// Rounds each float32 result into its 16-bit destination (a tensor that was not converted is
// its own result: nothing to do).
void store(Backend& be, std::initializer_list<std::pair<const Tensor*, const Tensor*>> pairs) {
  for (auto [dst, src] : pairs)
    if (dst->defined() && dst->raw_data() != src->raw_data()) be.copy(*dst, *src);
}

}  // namespace

Tensor float32_copy(Backend& be, const Tensor& t, bool convert) {
  if (!t.defined() || !is_reduced_float(t.dtype())) return t;
  Tensor f = Tensor::empty(t.shape(), kFloat32, t.device());
  if (convert) be.copy(f, t);
  return f;
}

void attention_forward_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                   const Tensor& weights) {
  const Tensor of = float32_copy(be, out, false), wf = float32_copy(be, weights, false);
  be.attention_forward(float32_args(be, a), of, lse, wf);
  store(be, {{&out, &of}, {&weights, &wf}});
}

void attention_backward_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                    const Tensor& gout, const Tensor& weights, const Tensor& gweights,
                                    const AttentionGrads& grads) {
  // gmask may arrive holding values to add to (zeros today): converted, not only allocated.
  const AttentionGrads gf{float32_copy(be, grads.gq, false),     float32_copy(be, grads.gk, false),
                          float32_copy(be, grads.gv, false),     float32_copy(be, grads.gmask),
                          float32_copy(be, grads.galibi, false), float32_copy(be, grads.gsinks, false)};
  be.attention_backward(float32_args(be, a), float32_copy(be, out), lse, float32_copy(be, gout),
                        float32_copy(be, weights), float32_copy(be, gweights), gf);
  store(be, {{&grads.gq, &gf.gq},
             {&grads.gk, &gf.gk},
             {&grads.gv, &gf.gv},
             {&grads.gmask, &gf.gmask},
             {&grads.galibi, &gf.galibi},
             {&grads.gsinks, &gf.gsinks}});
}

void attention_dropout_mask_via_float32(Backend& be, const AttentionArgs& a, const Tensor& out) {
  const Tensor of = float32_copy(be, out, false);
  be.attention_dropout_mask(float32_args(be, a), of);
  store(be, {{&out, &of}});
}

}  // namespace kiln
