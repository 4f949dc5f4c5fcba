#pragma once
// The CUDA kernel of an update rule (optim/fused.hpp), for .cu files: include this and the
// rule's header, then instantiate it once per step type:
//   template void kiln::optim::cuda_update<SignStep>(const SignStep&, const UpdateTensors&);
#include "../core/cuda/foreach.cuh"
#include "fused.hpp"

namespace kiln::optim {

template <typename S>
void cuda_update(const S& s, const UpdateTensors& t) {
  // Parameters are float32 or float64 (Optimizer checks when they join).
  if (t[0].dtype() == kFloat32)
    s.template with_rule<float>([&](const auto& rule) { cuda::foreach_cuda<float>(rule, t, "optim_update"); });
  else s.template with_rule<double>([&](const auto& rule) { cuda::foreach_cuda<double>(rule, t, "optim_update"); });
}

}  // namespace kiln::optim
