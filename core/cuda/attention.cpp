// Host side of the fused attention kernels (attention.cu): geometry, dropout constants,
// shared-memory limits, scratch buffers.
#include <fmt/format.h>

#include <algorithm>

#include "../reduced_float.hpp"
#include "cuda_backend.hpp"
#include "kernels.hpp"

namespace kiln::cuda {
namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

Attn4 view4(const Tensor& t) {
  Attn4 a;
  if (!t.defined()) return a;
  a.p = t.raw_data();
  for (int d = 0; d < 4; ++d) a.s[d] = t.stride(d);
  return a;
}

AttnGeom geometry(const AttentionArgs& a) {
  KILN_CHECK(is_floating(a.q.dtype()), kOp, "expected floating-point tensors, got {}", dtype_name(a.q.dtype()));
  AttnGeom g;
  g.N = a.q.size(0);
  g.H = a.q.size(1);
  g.T = a.q.size(2);
  g.Dk = a.q.size(3);
  g.Hkv = a.k.size(1);
  g.S = a.k.size(2);
  g.Dv = a.v.size(3);
  g.G = g.Hkv ? g.H / g.Hkv : 1;
  g.scale = a.scale;
  g.causal = a.causal;
  if (a.mask.defined()) {
    KILN_CHECK(a.mask.dtype() == kBool || a.mask.dtype() == a.q.dtype(), kOp,
               "a float mask must have q's dtype {}, got {}", dtype_name(a.q.dtype()), dtype_name(a.mask.dtype()));
    g.mask_kind = a.mask.dtype() == kBool ? 1 : 2;
    g.mask = view4(a.mask);
  }
  if (a.keep_prob < 1.0) {
    // The CPU kernels' constants (core/cpu/attention_kernels.hpp): same keep decisions.
    g.dropout = true;
    g.seed = a.seed;
    g.offset = a.offset;
    g.per_row = static_cast<std::uint64_t>((g.S + 63) / 64 * 16);
    g.thresh = static_cast<std::uint32_t>(std::min(a.keep_prob * 4294967296.0, 4294967295.0));
    g.inv_keep = a.keep_prob > 0 ? 1.0 / a.keep_prob : 0.0;
  }
  return g;
}

void check_smem(const DeviceContext& ctx, std::size_t need, const AttnGeom& g, DType dt, const char* pass) {
  KILN_CHECK(need <= ctx.smem_optin, kOp,
             "the {} kernel for head dims (Dk={}, Dv={}) in {} needs {} bytes of shared memory per block; cuda:{} "
             "allows {} (use float32 or smaller heads)",
             pass, g.Dk, g.Dv, dtype_name(dt), need, ctx.index, ctx.smem_optin);
}

// bfloat16/float16 run on tensor cores (attention_tc.cu) when this binary has sm_80+ code for the
// device and the head dims fit its shared memory; otherwise the float32 kernels run on
// converted inputs, each output rounded once (core/reduced_float.hpp).
bool on_tensor_cores(const DeviceContext& ctx, const AttnGeom& g, DType dt, bool backward) {
  if (!is_reduced_float(dt) || !attention_tc_usable(ctx.index)) return false;
  return (backward ? attention_backward_tc_smem(g) : attention_forward_tc_smem(g)) <= ctx.smem_optin;
}

}  // namespace

void CudaBackend::attention_forward(const AttentionArgs& a, const Tensor& out, const Tensor& lse,
                                    const Tensor& weights) {
  const DType dt = a.q.dtype();
  const AttnGeom g = geometry(a);
  DeviceGuard dg(ctx_.index);
  void* w = weights.defined() ? weights.raw_data() : nullptr;
  if (on_tensor_cores(ctx_, g, dt, false)) {
    launch_attention_forward_tc(g, view4(a.q), view4(a.k), view4(a.v), view4(out), static_cast<float*>(lse.raw_data()),
                                w, dt, ctx_.stream);
    return check_launch(kOp);
  }
  if (is_reduced_float(dt)) return attention_forward_via_float32(*this, a, out, lse, weights);
  check_smem(ctx_, attention_forward_smem(g, dt), g, dt, "forward");
  launch_attention_forward(g, view4(a.q), view4(a.k), view4(a.v), view4(out), lse.raw_data(), w, dt, ctx_.stream);
  check_launch(kOp);
}

void CudaBackend::attention_backward(const AttentionArgs& a, const Tensor& out, const Tensor& lse, const Tensor& gout,
                                     const Tensor& weights, const Tensor& gweights, const AttentionGrads& grads) {
  const DType dt = a.q.dtype();
  const AttnGeom g = geometry(a);
  const bool tc = on_tensor_cores(ctx_, g, dt, true);
  if (!tc && is_reduced_float(dt))
    return attention_backward_via_float32(*this, a, out, lse, gout, weights, gweights, grads);
  DeviceGuard dg(ctx_.index);
  if (!tc) check_smem(ctx_, attention_backward_smem(g, dt), g, dt, "backward");
  // Scratch: per-row delta and the dQ accumulator the key blocks add into (float32 for 16-bit).
  const DType acc = tc ? kFloat32 : dt;
  Tensor delta = Tensor::empty({std::max<std::int64_t>(g.N * g.H * g.T, 1)}, acc, a.q.device());
  Tensor dq = Tensor::empty({std::max<std::int64_t>(g.N * g.H * g.T * g.Dk, 1)}, acc, a.q.device());
  const void* w = weights.defined() ? weights.raw_data() : nullptr;
  const void* gw = gweights.defined() ? gweights.raw_data() : nullptr;
  void* gm = grads.gmask.defined() ? grads.gmask.raw_data() : nullptr;
  if (tc)
    launch_attention_backward_tc(g, view4(a.q), view4(a.k), view4(a.v), view4(out),
                                 static_cast<const float*>(lse.raw_data()), view4(gout), w, gw, view4(grads.gq),
                                 view4(grads.gk), view4(grads.gv), gm, static_cast<float*>(delta.raw_data()),
                                 static_cast<float*>(dq.raw_data()), dt, ctx_.stream);
  else
    launch_attention_backward(g, view4(a.q), view4(a.k), view4(a.v), view4(out), lse.raw_data(), view4(gout), w, gw,
                              view4(grads.gq), view4(grads.gk), view4(grads.gv), gm, delta.raw_data(), dq.raw_data(),
                              dt, ctx_.stream);
  check_launch("scaled_dot_product_attention_backward");
}

void CudaBackend::attention_dropout_mask(const AttentionArgs& a, const Tensor& out) {
  if (is_reduced_float(a.q.dtype())) return attention_dropout_mask_via_float32(*this, a, out);
  const AttnGeom g = geometry(a);
  DeviceGuard dg(ctx_.index);
  launch_attention_dropout_mask(g, out.raw_data(), a.q.dtype(), ctx_.stream);
  check_launch(kOp);
}

}  // namespace kiln::cuda
