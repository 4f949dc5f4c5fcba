#pragma once
// One score row of an attention backward tile, shared by the float32/float64 backward
// (attention.cpp) and the bf16 one (attention_bf16_backward.cpp). Internal to core/cpu.
#include "attention_kernels.hpp"

namespace kiln::cpu::attention_kernels {

// Where one backward row's keys [j0, j0 + cp) stand: the tile's valid columns, whether every key
// of it is seen unmasked (whole), the row's limits (first, valid: window/causal, relative to j0),
// its user mask and ALiBi (rm), logsumexp (log2 units) and delta = rowsum(dO * O).
template <typename F>
struct GradRow {
  std::int64_t j0, cols, cp;
  bool whole;
  std::int64_t first, valid;
  RowMask<F> rm;
  F lse2, delta;
};

// s: the row's scores (log2 units); dp: its dO V^T. Masks s, writes P = 2^(s - lse2) into p (and
// P times the dropout multipliers into pd, multiplying dp by them too), adds gw (the returned
// weights' gradient, when given) to dp, then overwrites dp with dS = P * (dp - delta), exactly 0
// where masked (dp may be NaN there: NaN in a masked-out value never leaks). With slope_grad,
// adds the row's ALiBi slope gradient -sum dS * |pos - key| to it.
template <typename F>
__attribute__((always_inline)) inline void grad_row(const GradRow<F>& r, F* s, F* p, F* pd, F* dp, F* mult,
                                                    const Dropout& drop, std::int64_t drow, const F* gw,
                                                    F* slope_grad) {
  if (r.whole) std::fill(s + r.cols, s + r.cp, kNegInf<F>);
  else mask_row(s, r.j0, r.first, r.valid, r.cp, r.rm);
  const Vec<F> l2 = vsplat(r.lse2), dlt = vsplat(r.delta);
  if (drop.on) dropout_mult(drop, drow, r.j0, r.cp, mult);
  for (std::int64_t j = 0; j < r.cp; j += kW<F>) {
    Vec<F> pv = exp2v(vload(s + j) - l2);
    vstore(p + j, pv);
    if (drop.on) {
      Vec<F> m = vload(mult + j);
      vstore(pd + j, pv * m);
      vstore(dp + j, vload(dp + j) * m);
    }
  }
  if (gw)
    for (std::int64_t j = 0; j < r.cols; ++j) dp[j] += gw[j];
  for (std::int64_t j = 0; j < r.cp; j += kW<F>) {
    Vec<F> sv = vload(s + j);
    Vec<F> ds = vload(p + j) * (vload(dp + j) - dlt);
    vstore(dp + j, sv == kNegInf<F> ? Vec<F>{} : ds);
  }
  if (slope_grad) {
    const std::int64_t d0 = r.rm.pos - r.j0;
    F acc = 0;
    for (std::int64_t j = 0; j < r.cols; ++j) acc += dp[j] * static_cast<F>(std::abs(d0 - j));
    *slope_grad -= acc;
  }
}

}  // namespace kiln::cpu::attention_kernels
