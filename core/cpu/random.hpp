#pragma once
// The scalar reference of CpuBackend::random (internal to core/cpu, tests and bench/ops_bench).
#include "../backend.hpp"

namespace kiln::cpu {

/// Backend::random one Philox block at a time with core/math/random.hpp's scalar random_block
/// (the CUDA backend's code): what the vectorized fills are tested and benchmarked against.
void random_scalar(const Tensor& out, const RandomSpec& spec);

}  // namespace kiln::cpu
