#pragma once
/// KILN_HD marks a function that both backends compile: a host function for the CPU backend
/// and, under nvcc, also a device function for the CUDA kernels. The shared scalar math
/// (elementwise ops, optimizer update rules) is written once with it. Always inlined on both
/// sides, as nvcc's __forceinline__ does: a loop that passes a constant op folds its switch.
#if defined(__CUDACC__)
#define KILN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define KILN_HD inline __attribute__((always_inline))
#else
#define KILN_HD inline
#endif
