// 16-bit float GEMM (see gemm_lowp.hpp). oneDNN primitives are created once per shape and kept:
// creating a matmul primitive costs far more than running a small one.
#include "gemm_lowp.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "../error.hpp"
#include "bf16_dot.hpp"
#include "convert.hpp"
#include "loops.hpp"

#if KILN_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace kiln::cpu {
namespace {

#if KILN_WITH_ONEDNN
// oneDNN's own ISA detection (which also honours ONEDNN_MAX_CPU_ISA) must agree: without native
// bf16 it would emulate it, slower than the float32 path.
bool onednn_isa_bf16() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

// AMX tiles are always faster than float32; AVX512-BF16 only where bf16_dot.hpp measured it so.
bool onednn_bf16_on() {
  if (!onednn_isa_bf16()) return false;
  if (dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx512_core_amx && cpu_has_amx_bf16()) return true;
  return use_bf16_dot();
}

const char* isa_name(dnnl::cpu_isa isa) {
  return isa == dnnl::cpu_isa::avx512_core_amx ? "avx512_core_amx" : "avx512_core_bf16";
}

using Key = std::array<std::int64_t, 17>;
struct Entry {
  bool usable = false;  // false: oneDNN offers only its reference kernel for this case
  dnnl::matmul prim;
  dnnl::memory::desc src, wei, dst;
};

struct OneDnn {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  std::map<Key, Entry> cache;
};
OneDnn& onednn() {
  static OneDnn o;
  return o;
}

// Row/column strides of a (rows, cols) operand stored row-major, or transposed when trans.
dnnl::memory::desc operand_desc(std::int64_t batch, std::int64_t rows, std::int64_t cols, bool trans, std::int64_t ld,
                                std::int64_t bs, dnnl::memory::data_type dt) {
  const std::int64_t item = std::max<std::int64_t>(ld * (trans ? cols : rows), 1);
  return dnnl::memory::desc({bs == 0 ? 1 : batch, rows, cols}, dt,
                            {bs == 0 ? item : bs, trans ? 1 : ld, trans ? ld : 1});
}

Entry make_entry(const GemmDims& d, bool out_f32) {
  using dt = dnnl::memory::data_type;
  auto& o = onednn();
  const auto src = operand_desc(d.batch, d.M, d.K, d.ta, d.lda, d.sa, dt::bf16);
  const auto wei = operand_desc(d.batch, d.K, d.N, d.tb, d.ldb, d.sb, dt::bf16);
  const auto dst = dnnl::memory::desc({d.batch, d.M, d.N}, out_f32 ? dt::f32 : dt::bf16,
                                      {d.batch == 1 ? d.M * d.ldc : d.sc, d.ldc, 1});
  dnnl::primitive_attr attr;
  if (d.alpha != 1.0f) attr.set_output_scales(0, {d.alpha});
  if (d.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(d.beta);
    attr.set_post_ops(po);
  }
  Entry e;
  try {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, o.eng);
    if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return e;
    e.prim = dnnl::matmul(pd);
    e.src = src;
    e.wei = wei;
    e.dst = dst;
    e.usable = true;
  } catch (const dnnl::error&) {
    // unsupported layout or attribute: the float32 path handles it
  }
  return e;
}

// Runs the case on oneDNN; false when oneDNN has no fast kernel for it.
template <typename O>
bool onednn_gemm(const GemmDims& d, const BFloat16* a, const BFloat16* b, O* c) {
  constexpr bool out_f32 = std::is_same_v<O, float>;
  std::int32_t ab = 0, bb = 0;
  std::memcpy(&ab, &d.alpha, 4);
  std::memcpy(&bb, &d.beta, 4);
  // Primitives are tuned to the thread count at creation: it is part of the key.
  const Key key{d.batch, d.M,  d.N,   d.K,  d.ta, d.tb, d.lda,   d.sa,
                d.ldb,   d.sb, d.ldc, d.sc, ab,   bb,   out_f32, omp_get_max_threads(),
                0};
  auto& o = onednn();
  Entry e;
  {
    std::lock_guard<std::mutex> lock(o.mu);
    auto it = o.cache.find(key);
    if (it == o.cache.end()) {
      if (o.cache.size() >= 1024) o.cache.clear();  // many distinct shapes: start over
      it = o.cache.emplace(key, make_entry(d, out_f32)).first;
    }
    if (!it->second.usable) return false;
    e = it->second;
  }
  dnnl::memory ma(e.src, o.eng, const_cast<BFloat16*>(a));
  dnnl::memory mb(e.wei, o.eng, const_cast<BFloat16*>(b));
  dnnl::memory mc(e.dst, o.eng, c);
  dnnl::stream s(o.eng);
  e.prim.execute(s, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
  s.wait();
  return true;
}
#endif

// Float buffers from the caching allocator: a training step reuses them without OS allocations.
Tensor float_buffer(std::int64_t n) { return Tensor::empty({n}, kFloat32, Device::cpu()); }

// Converts the `items` (rows, cols) matrices at src (row stride ld, item stride s) to dense floats.
template <typename T>
Tensor to_float(const T* src, std::int64_t items, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                std::int64_t s) {
  Tensor out = float_buffer(items * rows * cols);
  float* o = out.data_ptr<float>();
  parallel_range(items * rows, std::max<std::int64_t>(1, kParallelGrain / std::max<std::int64_t>(cols, 1)),
                 [&](std::int64_t r0, std::int64_t r1) {
                   for (std::int64_t r = r0; r < r1; ++r)
                     load_float(src + (r / rows) * s + (r % rows) * ld, o + r * cols, cols);
                 });
  return out;
}

template <typename T, typename O>
void float_gemm(const GemmDims& d, const T* a, const T* b, O* c) {
  const std::int64_t na = d.sa == 0 ? 1 : d.batch, nb = d.sb == 0 ? 1 : d.batch;
  const std::int64_t ar = d.ta ? d.K : d.M, ac = d.ta ? d.M : d.K, br = d.tb ? d.N : d.K, bc = d.tb ? d.K : d.N;
  const Tensor fa = to_float(a, na, ar, ac, d.lda, d.sa);
  const Tensor fb = to_float(b, nb, br, bc, d.ldb, d.sb);
  constexpr bool out_f32 = std::is_same_v<O, float>;
  const Tensor tmp = float_buffer(out_f32 ? 0 : d.batch * d.M * d.N);
  auto one = [&](std::int64_t i) {
    const float* pa = fa.data_ptr<float>() + (na == 1 ? 0 : i) * ar * ac;
    const float* pb = fb.data_ptr<float>() + (nb == 1 ? 0 : i) * br * bc;
    if constexpr (out_f32) {
      sgemm_rowmajor(d.ta, d.tb, d.M, d.N, d.K, d.alpha, pa, ac, pb, bc, d.beta, c + i * d.sc, d.ldc);
    } else {
      float* t = tmp.data_ptr<float>() + i * d.M * d.N;
      sgemm_rowmajor(d.ta, d.tb, d.M, d.N, d.K, d.alpha, pa, ac, pb, bc, 0.0f, t, d.N);
      O* ci = c + i * d.sc;
      for (std::int64_t m = 0; m < d.M; ++m) {
        float* tr = t + m * d.N;
        O* cr = ci + m * d.ldc;
        if (d.beta != 0.0f)
          for (std::int64_t n = 0; n < d.N; ++n) tr[n] += d.beta * static_cast<float>(cr[n]);
        store_float(tr, cr, d.N);
      }
    }
  };
  // As blas.cpp: small products one per thread over the batch, large ones threaded each.
  const std::int64_t flops = d.M * d.N * d.K;
  if (d.batch > 1 && flops < (std::int64_t{1} << 21)) {
    parallel_range(d.batch, std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(flops, 1)),
                   [&](std::int64_t i0, std::int64_t i1) {
                     for (std::int64_t i = i0; i < i1; ++i) one(i);
                   });
  } else {
    for (std::int64_t i = 0; i < d.batch; ++i) one(i);
  }
}

void check_dims(const GemmDims& d) {
  KILN_CHECK(d.batch >= 0 && d.M >= 0 && d.N >= 0 && d.K >= 0, "gemm_lowp", "negative size: batch {} M {} N {} K {}",
             d.batch, d.M, d.N, d.K);
  KILN_CHECK(d.ldc >= d.N && (d.batch <= 1 || d.sc != 0), "gemm_lowp", "bad output layout: ldc {} N {} sc {}", d.ldc,
             d.N, d.sc);
}

}  // namespace

std::string gemm_lowp_path(bool bf16) {
  if (!bf16) return "float32 conversion";
#if KILN_WITH_ONEDNN
  if (onednn_bf16_on()) {
    const dnnl_version_t* v = dnnl_version();
    return fmt::format("onednn {}.{}.{} ({}); bf16 dot products {}", v->major, v->minor, v->patch,
                       isa_name(dnnl::get_effective_cpu_isa()), bf16_dot_reason());
  }
  return fmt::format("float32 conversion; bf16 dot products {}", bf16_dot_reason());
#else
  return "float32 conversion (built without oneDNN)";
#endif
}

template <typename T, typename O>
void gemm_lowp(const GemmDims& d, const T* a, const T* b, O* c) {
  static_assert(is_reduced_float_v<T> && (std::is_same_v<O, T> || std::is_same_v<O, float>));
  check_dims(d);
  if (d.batch == 0 || d.M == 0 || d.N == 0) return;
  if (d.K == 0) {  // an empty sum: C = beta * C
    for (std::int64_t i = 0; i < d.batch; ++i)
      for (std::int64_t m = 0; m < d.M; ++m) {
        O* cr = c + i * d.sc + m * d.ldc;
        for (std::int64_t n = 0; n < d.N; ++n) cr[n] = d.beta == 0.0f ? O(0.0f) : O(d.beta * static_cast<float>(cr[n]));
      }
    return;
  }
#if KILN_WITH_ONEDNN
  if constexpr (std::is_same_v<T, BFloat16>) {
    if (onednn_bf16_on() && onednn_gemm(d, a, b, c)) return;
  }
#endif
  float_gemm(d, a, b, c);
}

template void gemm_lowp<BFloat16, BFloat16>(const GemmDims&, const BFloat16*, const BFloat16*, BFloat16*);
template void gemm_lowp<BFloat16, float>(const GemmDims&, const BFloat16*, const BFloat16*, float*);
template void gemm_lowp<Half, Half>(const GemmDims&, const Half*, const Half*, Half*);
template void gemm_lowp<Half, float>(const GemmDims&, const Half*, const Half*, float*);

}  // namespace kiln::cpu
