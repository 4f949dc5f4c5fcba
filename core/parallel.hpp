#pragma once
/// One thread pool (OpenMP) for every CPU kernel, BLAS included.
///   kiln::set_num_threads(2);   // or KILN_NUM_THREADS=2 in the environment
#include <cstdint>

namespace kiln {

void set_num_threads(int n);
int get_num_threads();

/// Minimum elements per thread before a loop is split; below it kernels run serially.
inline constexpr std::int64_t kParallelGrain = 32768;

}  // namespace kiln
