// Index kernels (index_select / index_add on rows of a dim, gather / scatter_add elementwise),
// random fills from Philox (the CPU backend's numbers, bit for bit where the math allows) and
// the int64 matmul that cuBLAS does not provide.
#include <cmath>

#include "device_util.cuh"

namespace kiln::cuda {
namespace {

// Accumulation into memory other threads may also target. bool "adds" are logical or.
template <typename T>
__device__ __forceinline__ void atomic_accumulate(T* p, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v) return;
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    auto* word = reinterpret_cast<unsigned int*>(addr & ~std::uintptr_t{3});
    atomicOr(word, 1u << (8 * (addr & 3)));
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));  // two's complement
  } else {
    atomicAdd(p, v);
  }
}

// out (outer, L, inner) from x (outer, D, inner).
template <typename T>
__global__ void index_select_kernel(const T* x, const std::int64_t* index, T* out, std::int64_t outer, std::int64_t D,
                                    std::int64_t L, std::int64_t inner) {
  const std::int64_t n = outer * L * inner;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < n;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = w % inner, ol = w / inner, l = ol % L, o = ol / L;
    out[w] = x[(o * D + index[l]) * inner + i];
  }
}

template <typename T>
__global__ void index_add_kernel(T* out, const std::int64_t* index, const T* src, std::int64_t outer, std::int64_t D,
                                 std::int64_t L, std::int64_t inner) {
  const std::int64_t n = outer * L * inner;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < n;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = w % inner, ol = w / inner, l = ol % L, o = ol / L;
    atomic_accumulate(out + (o * D + index[l]) * inner + i, src[w]);
  }
}

template <typename T>
__global__ void gather_kernel(Iter<3> it, std::int64_t xs) {
  T* o = static_cast<T*>(it.data[0]);
  const std::int64_t* idx = static_cast<const std::int64_t*>(it.data[1]);
  const T* x = static_cast<const T*>(it.data[2]);
  auto f = [&](const std::int64_t (&off)[3]) { o[off[0]] = x[off[2] + idx[off[1]] * xs]; };
  iter_loop<3, std::int64_t>(it, f);
}

template <typename T>
__global__ void scatter_add_kernel(Iter<3> it, std::int64_t os) {
  T* o = static_cast<T*>(it.data[0]);
  const std::int64_t* idx = static_cast<const std::int64_t*>(it.data[1]);
  const T* src = static_cast<const T*>(it.data[2]);
  auto f = [&](const std::int64_t (&off)[3]) { atomic_accumulate(o + off[0] + idx[off[1]] * os, src[off[2]]); };
  iter_loop<3, std::int64_t>(it, f);
}

// One Philox block (4 words) per thread: 4 values of 32-bit draws, 2 of 64-bit ones, exactly
// as CpuBackend::random lays them out.
template <typename T>
__global__ void random_kernel(T* out, std::int64_t n, RandomSpec spec) {
  constexpr int per = std::is_same_v<T, double> || std::is_same_v<T, std::int64_t> ? 2 : 4;
  const std::int64_t blocks = (n + per - 1) / per;
  for (std::int64_t blk = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; blk < blocks;
       blk += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Words4 w = philox(spec.seed, spec.offset + static_cast<std::uint64_t>(blk));
    double u[4];
    if constexpr (per == 4) {
      for (int j = 0; j < 4; ++j) u[j] = unit_float(w.w[j]);
    } else {
      u[0] = unit_double(w.w[0], w.w[1]);
      u[1] = unit_double(w.w[2], w.w[3]);
    }
    double v[4] = {0, 0, 0, 0};
    switch (spec.kind) {
      case RandomSpec::Uniform:
        for (int j = 0; j < per; ++j) v[j] = spec.a + (spec.b - spec.a) * u[j];
        break;
      case RandomSpec::Normal:
        for (int j = 0; j < per; j += 2) {
          const double r = sqrt(-2.0 * log(1.0 - u[j])), th = 6.283185307179586 * u[j + 1];
          v[j] = spec.a + spec.b * r * cos(th);
          v[j + 1] = spec.a + spec.b * r * sin(th);
        }
        break;
      case RandomSpec::Int: {
        const double range = spec.b - spec.a;
        for (int j = 0; j < per; ++j) v[j] = spec.a + floor(u[j] * range);
        break;
      }
      case RandomSpec::Bernoulli:
        for (int j = 0; j < per; ++j) v[j] = u[j] < spec.a ? spec.b : 0.0;
        break;
    }
    const std::int64_t base = blk * per;
    for (int j = 0; j < per && base + j < n; ++j) {
      if constexpr (std::is_same_v<T, float>) {
        float f = static_cast<float>(v[j]);
        // Rounding must not push a uniform draw onto its open upper bound.
        if (spec.kind == RandomSpec::Uniform && f >= static_cast<float>(spec.b))
          f = nextafterf(static_cast<float>(spec.b), -INFINITY);
        out[base + j] = f;
      } else if constexpr (std::is_same_v<T, bool>) {
        out[base + j] = v[j] != 0.0;
      } else {
        out[base + j] = static_cast<T>(v[j]);
      }
    }
  }
}

// (B, M, N) = (B, M, K) @ (B, K, N), one output per thread; strides in elements.
__global__ void matmul_int64_kernel(const std::int64_t* a, const std::int64_t* c, std::int64_t* out, std::int64_t B,
                                    std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t sa0, std::int64_t sa1,
                                    std::int64_t sa2, std::int64_t sc0, std::int64_t sc1, std::int64_t sc2) {
  const std::int64_t total = B * M * N;
  for (std::int64_t w = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; w < total;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = w % N, i = (w / N) % M, b = w / (M * N);
    const std::int64_t* ar = a + b * sa0 + i * sa1;
    const std::int64_t* cc = c + b * sc0 + j * sc2;
    std::int64_t acc = 0;
    for (std::int64_t k = 0; k < K; ++k) acc += ar[k * sa2] * cc[k * sc1];
    out[w] = acc;
  }
}

}  // namespace

void launch_index_select(const void* x, const std::int64_t* index, void* out, std::int64_t outer, std::int64_t D,
                         std::int64_t L, std::int64_t inner, DType dt, cudaStream_t s) {
  const std::int64_t n = outer * L * inner;
  if (n == 0) return;
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    index_select_kernel<T><<<grid_for(n), kThreads, 0, s>>>(static_cast<const T*>(x), index, static_cast<T*>(out),
                                                            outer, D, L, inner);
  });
}

void launch_index_add(void* out, const std::int64_t* index, const void* src, std::int64_t outer, std::int64_t D,
                      std::int64_t L, std::int64_t inner, DType dt, cudaStream_t s) {
  const std::int64_t n = outer * L * inner;
  if (n == 0) return;
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    index_add_kernel<T><<<grid_for(n), kThreads, 0, s>>>(static_cast<T*>(out), index, static_cast<const T*>(src), outer,
                                                         D, L, inner);
  });
}

void launch_gather(const Iter<3>& it, std::int64_t xs, DType dt, cudaStream_t s) {
  if (it.numel == 0) return;
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    gather_kernel<T><<<grid_for(it.numel), kThreads, 0, s>>>(it, xs);
  });
}

void launch_scatter_add(const Iter<3>& it, std::int64_t os, DType dt, cudaStream_t s) {
  if (it.numel == 0) return;
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    scatter_add_kernel<T><<<grid_for(it.numel), kThreads, 0, s>>>(it, os);
  });
}

void launch_random(void* out, std::int64_t n, DType dt, const RandomSpec& spec, cudaStream_t s) {
  if (n == 0) return;
  dispatch(dt, [&](auto z) {
    using T = decltype(z);
    random_kernel<T><<<grid_for((n + 1) / 2), kThreads, 0, s>>>(static_cast<T*>(out), n, spec);
  });
}

void launch_matmul_int64(const std::int64_t* a, const std::int64_t* c, std::int64_t* out, std::int64_t B,
                         std::int64_t M, std::int64_t N, std::int64_t K, const std::int64_t* sa, const std::int64_t* sc,
                         cudaStream_t s) {
  const std::int64_t total = B * M * N;
  if (total == 0) return;
  matmul_int64_kernel<<<grid_for(total), kThreads, 0, s>>>(a, c, out, B, M, N, K, sa[0], sa[1], sa[2], sc[0], sc[1],
                                                           sc[2]);
}

}  // namespace kiln::cuda
