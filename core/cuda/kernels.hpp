#pragma once
// What the CUDA backend's .cu files and host .cpp files share: the strided iteration the
// elementwise kernels walk, and the launchers that host .cpp code still calls. A backend method
// whose work is one kernel family is defined in the .cu file beside its kernels (checks, geometry,
// launch): adding a fused op costs its kernel and method there plus one declaration in
// cuda_backend.hpp. Light on purpose: nothing here pulls in fmt (fmt 9 does not compile under
// nvcc in C++20 mode); error messages that need formatting go through the out-of-line helpers
// below. Launch errors come back through cudaGetLastError, which check_launch reads.
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>

#include "../backend.hpp"

namespace kiln::cuda {

/// Most dims an operand may have after merging contiguous dims (the host code checks).
inline constexpr int kMaxDims = 10;

/// N operands walked in lockstep over one shape (row-major, dims merged where every operand
/// is contiguous across them). Dims are stored innermost first; strides are in elements.
template <int N>
struct Iter {
  int ndim = 0;
  bool contiguous = false;  // every operand is dense row-major: offsets equal the index
  bool use32 = false;       // every index and offset fits in 32 bits
  std::int64_t numel = 0;
  std::int64_t sizes[kMaxDims] = {};
  std::int64_t strides[N][kMaxDims] = {};
  void* data[N] = {};
};

/// t's data as T* (no dtype check: the caller dispatched on the dtype).
template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

/// Throws "[op] operands of shape S have n dims that cannot be merged; ..." (out of line: fmt).
[[noreturn]] void throw_too_many_dims(const char* op, const Shape& shape, std::size_t ndim);
/// Throws unless t is floating point (float32, float64, bfloat16, float16).
void check_float(const Tensor& t, const char* op);

/// Iteration over `shape` for N operands (each a view with `shape`'s geometry).
template <int N>
Iter<N> make_iter(const Shape& shape, const std::array<const Tensor*, N>& ts, const char* op) {
  std::array<const std::int64_t*, N> strides;
  for (int k = 0; k < N; ++k) strides[k] = ts[k]->strides().data();
  const auto c = coalesce_dims<N>(shape, strides);
  if (c.shape.size() > static_cast<std::size_t>(kMaxDims)) throw_too_many_dims(op, shape, c.shape.size());
  Iter<N> it;
  it.ndim = static_cast<int>(c.shape.size());
  it.numel = numel_of(shape);
  bool contiguous = true, fits32 = it.numel < (std::int64_t{1} << 31);
  for (int k = 0; k < N; ++k) {
    it.data[k] = ts[k]->raw_data();
    std::int64_t span = 0;
    for (int d = 0; d < it.ndim; ++d) {  // innermost first
      const std::int64_t s = c.strides[k][static_cast<std::size_t>(it.ndim - 1 - d)];
      it.sizes[d] = c.shape[static_cast<std::size_t>(it.ndim - 1 - d)];
      it.strides[k][d] = s;
      if (s < 0) fits32 = false;
      span += (it.sizes[d] - 1) * (s < 0 ? -s : s);
    }
    if (span >= (std::int64_t{1} << 31)) fits32 = false;
    if (it.ndim > 1 || (it.ndim == 1 && it.strides[k][0] != 1)) contiguous = false;
  }
  it.contiguous = contiguous;
  it.use32 = fits32;
  return it;
}

// ---- index.cu ----
/// out[b] = a[b] @ c[b] for int64 (cuBLAS has no integer GEMM); element strides.
void launch_matmul_int64(const std::int64_t* a, const std::int64_t* c, std::int64_t* out, std::int64_t B,
                         std::int64_t M, std::int64_t N, std::int64_t K, const std::int64_t* sa, const std::int64_t* sc,
                         cudaStream_t s);

// ---- attention.cu ----
/// An (N, H, T, D) operand: base pointer and element strides.
struct Attn4 {
  void* p = nullptr;
  std::int64_t s[4] = {};
};
struct AttnGeom {
  std::int64_t N = 0, H = 0, Hkv = 0, G = 1, T = 0, S = 0, Dk = 0, Dv = 0;
  double scale = 1.0;
  bool causal = false;
  // mask (N, H, T, S) strides; kind 0 none, 1 bool, 2 float of the attention dtype
  int mask_kind = 0;
  Attn4 mask;
  // dropout
  bool dropout = false;
  std::uint64_t seed = 0, offset = 0, per_row = 0;
  std::uint32_t thresh = 0;
  double inv_keep = 0;
};
/// Dynamic shared memory the kernels need for these head dims (bytes).
std::size_t attention_forward_smem(const AttnGeom& g, DType dt);
std::size_t attention_backward_smem(const AttnGeom& g, DType dt);
/// q k v out: (N, H|Hkv, T|S, D) strided; lse (N*H*T) contiguous; weights null or (N, H, T, S) contiguous.
void launch_attention_forward(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                              void* lse, void* weights, DType dt, cudaStream_t s);
/// Scratch: delta (N*H*T) and dq_acc (N*H*T*Dk), both of dtype dt, from the caller.
void launch_attention_backward(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                               const void* lse, const Attn4& gout, const void* weights, const void* gweights,
                               const Attn4& gq, const Attn4& gk, const Attn4& gv, void* gmask, void* delta,
                               void* dq_acc, DType dt, cudaStream_t s);
/// bfloat16/float16 on tensor cores (attention_tc.cu): whether the kernels built into this
/// binary can run them on `device` (sm_80 or later code), and their shared memory (bytes).
bool attention_tc_usable(int device);
std::size_t attention_forward_tc_smem(const AttnGeom& g);
std::size_t attention_backward_tc_smem(const AttnGeom& g);
/// As launch_attention_forward / backward for dt bfloat16 or float16; lse, delta and dq_acc
/// are float32.
void launch_attention_forward_tc(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                                 float* lse, void* weights, DType dt, cudaStream_t s);
void launch_attention_backward_tc(const AttnGeom& g, const Attn4& q, const Attn4& k, const Attn4& v, const Attn4& out,
                                  const float* lse, const Attn4& gout, const void* weights, const void* gweights,
                                  const Attn4& gq, const Attn4& gk, const Attn4& gv, void* gmask, float* delta,
                                  float* dq_acc, DType dt, cudaStream_t s);
/// Contiguous (N, H, T, S) multipliers: 1/keep where kept, 0 where dropped (1 without dropout).
void launch_attention_dropout_mask(const AttnGeom& g, void* out, DType dt, cudaStream_t s);

}  // namespace kiln::cuda
