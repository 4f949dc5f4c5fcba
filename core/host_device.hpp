#pragma once
/// KILN_HD marks a function that both backends compile: a host function for the CPU backend
/// and, under nvcc, also a device function for the CUDA kernels. The shared scalar math
/// (elementwise ops, optimizer update rules) is written once with it.
#if defined(__CUDACC__)
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif
