#pragma once
// The launchers of the CUDA kernels (core/cuda/*.cu) as the host code of the backend sees
// them. Light on purpose: .cu files include this and nothing that pulls in fmt (fmt 9 does
// not compile under nvcc in C++20 mode). Launchers only enqueue work on `stream`; argument
// checks and error messages live in the .cpp files. Launch errors come back through
// cudaGetLastError, which the caller checks.
#include <cuda_runtime_api.h>

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

// ---- elementwise.cu ----
void launch_copy(const Iter<2>& it, DType dst, DType src, cudaStream_t s);
/// `bits` holds the value already converted to `dt` (memcpy'd into the low bytes).
void launch_fill(const Iter<1>& it, DType dt, std::uint64_t bits, cudaStream_t s);
/// Operands: out, x. For LogicalNot `xdt` may differ from `dt` (out is bool).
void launch_unary(UnaryOp op, const Iter<2>& it, DType dt, DType xdt, double a, double b, cudaStream_t s);
/// Operands: out, x, y (all of dtype dt).
void launch_binary(BinaryOp op, const Iter<3>& it, DType dt, cudaStream_t s);
/// Operands: out (bool), x, y (dtype dt).
void launch_compare(CompareOp op, const Iter<3>& it, DType dt, cudaStream_t s);
/// Operands: out, cond (bool), x, y.
void launch_where(const Iter<4>& it, DType dt, cudaStream_t s);

// ---- reduce.cu ----
/// Geometry of a reduction: `kept` and `red` dims (innermost first, element strides) of x.
struct ReduceGeom {
  int nk = 0, nr = 0;
  std::int64_t M = 1, R = 1;  // outputs, elements per output
  std::int64_t ksize[kMaxDims] = {}, kstride[kMaxDims] = {};
  std::int64_t rsize[kMaxDims] = {}, rstride[kMaxDims] = {};
};
/// Chunks each output's elements are split into (1: no split); when > 1, launch_reduce needs
/// `scratch` of M * chunks elements of x's dtype.
std::int64_t reduce_partials(const ReduceGeom& g);
/// out (contiguous, M values) = op over the R elements of each output; mean divides by R.
void launch_reduce(ReduceOp op, const ReduceGeom& g, const void* x, void* out, void* scratch, DType dt,
                   cudaStream_t s);
/// Max/Min along one dim (R elements, stride rstride) with first-index ties and NaN winning.
void launch_arg_reduce(bool is_max, const ReduceGeom& g, const void* x, void* values, std::int64_t* indices, DType dt,
                       cudaStream_t s);
/// Rows of length n of contiguous x: softmax or log-softmax.
void launch_softmax(const void* x, void* out, std::int64_t rows, std::int64_t n, bool log, DType dt, cudaStream_t s);
void launch_softmax_backward(const void* y, const void* gy, void* gx, std::int64_t rows, std::int64_t n, bool log,
                             DType dt, cudaStream_t s);
/// weight/bias may be null; mean/rstd get one value per row (dtype dt).
void launch_layer_norm(const void* x, const void* w, const void* b, double eps, void* out, void* mean, void* rstd,
                       std::int64_t rows, std::int64_t n, DType dt, cudaStream_t s);

// ---- index.cu ----
/// out (outer, L, inner) = x (outer, D, inner)[:, index, :]; x and out contiguous.
void launch_index_select(const void* x, const std::int64_t* index, void* out, std::int64_t outer, std::int64_t D,
                         std::int64_t L, std::int64_t inner, DType dt, cudaStream_t s);
/// out (outer, D, inner)[:, index, :] += src (outer, L, inner); both contiguous; atomic.
void launch_index_add(void* out, const std::int64_t* index, const void* src, std::int64_t outer, std::int64_t D,
                      std::int64_t L, std::int64_t inner, DType dt, cudaStream_t s);
/// Operands over index's shape: out, index, x-with-0-stride-on-dim; xs = x's stride on dim.
void launch_gather(const Iter<3>& it, std::int64_t xs, DType dt, cudaStream_t s);
/// Operands over index's shape: out-with-0-stride-on-dim, index, src; os = out's stride on dim.
void launch_scatter_add(const Iter<3>& it, std::int64_t os, DType dt, cudaStream_t s);
/// Contiguous out of n values from Philox (same numbers as the CPU backend).
void launch_random(void* out, std::int64_t n, DType dt, const RandomSpec& spec, cudaStream_t s);
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
/// Contiguous (N, H, T, S) multipliers: 1/keep where kept, 0 where dropped (1 without dropout).
void launch_attention_dropout_mask(const AttnGeom& g, void* out, DType dt, cudaStream_t s);

}  // namespace kiln::cuda
