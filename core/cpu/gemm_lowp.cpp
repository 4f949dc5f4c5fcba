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
#include <unordered_map>
#include <vector>

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
  dnnl::memory::desc src, wei, dst, bias;
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
  // The bias (one float32 row, broadcast over batch and rows) is added before the rounding.
  const auto bias = d.bias ? dnnl::memory::desc({1, 1, d.N}, dt::f32, {d.N, d.N, 1}) : dnnl::memory::desc();
  dnnl::primitive_attr attr;
  if (d.alpha != 1.0f) attr.set_output_scales(0, {d.alpha});
  if (d.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(d.beta);
    attr.set_post_ops(po);
  }
  Entry e;
  try {
    dnnl::matmul::primitive_desc pd(d.bias ? dnnl::matmul::desc(src, wei, bias, dst)
                                           : dnnl::matmul::desc(src, wei, dst),
                                    attr, o.eng);
    if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return e;
    e.prim = dnnl::matmul(pd);
    e.src = src;
    e.wei = wei;
    e.dst = dst;
    e.bias = bias;
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
  const Key key{d.batch,
                d.M,
                d.N,
                d.K,
                d.ta,
                d.tb,
                d.lda,
                d.sa,
                d.ldb,
                d.sb,
                d.ldc,
                d.sc,
                ab,
                bb,
                out_f32,
                omp_get_max_threads(),
                d.bias != nullptr};
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
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
  if (d.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(e.bias, o.eng, const_cast<float*>(d.bias)));
  e.prim.execute(s, args);
  s.wait();
  return true;
}
#endif

// Float buffers from the caching allocator: a training step reuses them without OS allocations.
Tensor float_buffer(std::int64_t n) { return Tensor::empty({n}, kFloat32, Device::cpu()); }

#if KILN_WITH_ONEDNN
// oneDNN 2.6.3's AMX kernels sum wrongly for some shapes when B is stored transposed ((N, K) row
// major, as a linear layer's weight): found on a Sapphire Rapids CPU for N in (48, 64), unbatched,
// at every M and K tried (errors of 10-100 on sums of size ~1; tests/autograd/test_linalg.cpp),
// while its AVX512-BF16 kernels and B stored (K, N) were right on the same grid. On AMX, B goes
// to oneDNN as a dense (K, N) copy: K * N elements beside the GEMM's M * K * N products.
bool onednn_transposed_b_ok() { return dnnl::get_effective_cpu_isa() != dnnl::cpu_isa::avx512_core_amx; }

// B (transposed in d) as dense (K, N) matrices, one per batch item (one when B is broadcast);
// e becomes d with that layout.
Tensor dense_b(const GemmDims& d, const BFloat16* b, GemmDims& e) {
  const std::int64_t copies = d.batch <= 1 || d.sb == 0 ? 1 : d.batch;
  Tensor out = Tensor::empty({copies * d.K * d.N}, kBFloat16, Device::cpu());
  BFloat16* dst = out.data_ptr<BFloat16>();
  constexpr std::int64_t blk = 32;  // tiles keep both the reads and the writes in cache
  parallel_range(copies * ((d.N + blk - 1) / blk), 1, [&](std::int64_t t0, std::int64_t t1) {
    const std::int64_t nblocks = (d.N + blk - 1) / blk;
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t i = t / nblocks, n0 = (t % nblocks) * blk, n1 = std::min(n0 + blk, d.N);
      const BFloat16* src = b + i * d.sb;
      BFloat16* to = dst + i * d.K * d.N;
      for (std::int64_t k0 = 0; k0 < d.K; k0 += blk)
        for (std::int64_t n = n0; n < n1; ++n)
          for (std::int64_t k = k0; k < std::min(k0 + blk, d.K); ++k) to[k * d.N + n] = src[n * d.ldb + k];
    }
  });
  e.tb = false;
  e.ldb = d.N;
  e.sb = copies == 1 ? 0 : d.K * d.N;
  return out;
}
#endif

}  // namespace

template <typename T>
Tensor widen_matrices(const T* src, std::int64_t items, std::int64_t rows, std::int64_t cols, std::int64_t ld,
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

template Tensor widen_matrices<BFloat16>(const BFloat16*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                         std::int64_t);
template Tensor widen_matrices<Half>(const Half*, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t);

namespace {

// The calling thread's panel buffer, kept for the thread's life: panels come and go with every
// GEMM, and allocator blocks of their changing sizes would be returned to the OS and faulted in
// again. Up to kScratchMax floats; a larger panel (K or N in the tens of thousands) takes an
// allocator block instead, so that no thread keeps a large buffer.
constexpr std::int64_t kScratchMax = std::int64_t{1} << 20;
float* panel_scratch(std::int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<std::int64_t>(buf.size()) < n) buf.resize(static_cast<std::size_t>(n));
  return buf.data();
}

// Rows of op(A) per panel: the panel's float32 copy of A and its float32 output rows stay in
// the L2 cache (about 1 MiB together) between conversion, GEMM and rounding, instead of
// whole-matrix float32 buffers going through memory. At least 16 rows, and at most M / threads
// so that every thread gets a panel. Each panel's GEMM packs op(B) again: worth it only where
// op(B) is small beside op(A) and C (M >= 4 N, e.g. activations times a weight); otherwise one
// panel, threaded inside the GEMM.
std::int64_t panel_rows(const GemmDims& d, int threads) {
  if (d.M < 4 * d.N) return d.M;
  const std::int64_t fit = (std::int64_t{1} << 18) / std::max<std::int64_t>(d.K + d.N, 1);
  const std::int64_t share = (d.M + threads - 1) / threads;
  const std::int64_t rows = std::min(std::max<std::int64_t>(fit, 16), share);
  return std::max<std::int64_t>((rows + 15) / 16 * 16, 1);
}

// The float32 path: op(B) is converted whole (every panel uses it); op(A) and C go panel by
// panel (batch item i, rows [m0, m1)), each panel a float32 GEMM. Threads take whole panels and
// run a single-threaded GEMM each (OpenBLAS inside a parallel region): the same kernels and
// summation order per output as one threaded call. An operand with a float32 copy (`wide`) is
// read from it: the panels point into it instead of being converted.
template <typename T, typename O>
void float_gemm(const GemmDims& d, const LowpOperand<T>& a, const LowpOperand<T>& b, O* c) {
  constexpr bool out_f32 = std::is_same_v<O, float>;
  const std::int64_t nb = d.sb == 0 ? 1 : d.batch;
  const std::int64_t br = d.tb ? d.N : d.K, bc = d.tb ? d.K : d.N;
  const Tensor fb = b.wide ? Tensor() : widen_matrices(b.data, nb, br, bc, d.ldb, d.sb);
  const float* wb = b.wide ? b.wide : fb.data_ptr<float>();
  const std::int64_t ldb = b.wide ? b.wide_ld : bc, sb = b.wide ? b.wide_s : br * bc;
  const std::int64_t mb = panel_rows(d, threads_for(d.M * d.N * d.K, std::int64_t{1} << 18));
  const std::int64_t panels = (d.M + mb - 1) / mb, items = d.batch * panels;
  const std::int64_t a_size = a.wide ? 0 : mb * d.K, panel_size = a_size + (out_f32 ? 0 : mb * d.N);
  auto item = [&](std::int64_t it) {
    Tensor big = float_buffer(panel_size > kScratchMax ? panel_size : 0);
    float* fa = panel_size > kScratchMax ? big.data_ptr<float>() : panel_scratch(panel_size);
    const std::int64_t i = it / panels, m0 = (it % panels) * mb, rows = std::min(mb, d.M - m0);
    // op(A)'s rows [m0, m1): stored rows when !ta, stored columns (K rows of `rows`) when ta.
    const float* pa = fa;
    std::int64_t lda = d.ta ? rows : d.K;
    if (a.wide) {
      pa = a.wide + i * a.wide_s + (d.ta ? m0 : m0 * a.wide_ld);
      lda = a.wide_ld;
    } else if (d.ta) {
      for (std::int64_t k = 0; k < d.K; ++k) load_float(a.data + i * d.sa + k * d.lda + m0, fa + k * rows, rows);
    } else {
      for (std::int64_t m = 0; m < rows; ++m) load_float(a.data + i * d.sa + (m0 + m) * d.lda, fa + m * d.K, d.K);
    }
    const float* pb = wb + (nb == 1 ? 0 : i) * sb;
    O* ci = c + i * d.sc + m0 * d.ldc;
    // With a bias the float32 rows start as the bias and the GEMM adds the product (beta = 1).
    auto bias_rows = [&](float* dst, std::int64_t ld) {
      for (std::int64_t m = 0; m < rows; ++m) std::copy(d.bias, d.bias + d.N, dst + m * ld);
    };
    if constexpr (out_f32) {
      if (d.bias) bias_rows(ci, d.ldc);
      sgemm_rowmajor(d.ta, d.tb, rows, d.N, d.K, d.alpha, pa, lda, pb, ldb, d.bias ? 1.0f : d.beta, ci, d.ldc);
    } else {
      float* t = fa + a_size;
      if (d.bias) bias_rows(t, d.N);
      sgemm_rowmajor(d.ta, d.tb, rows, d.N, d.K, d.alpha, pa, lda, pb, ldb, d.bias ? 1.0f : 0.0f, t, d.N);
      for (std::int64_t m = 0; m < rows; ++m) {
        float* tr = t + m * d.N;
        O* cr = ci + m * d.ldc;
        if (d.beta != 0.0f)
          for (std::int64_t n = 0; n < d.N; ++n) tr[n] += d.beta * static_cast<float>(cr[n]);
        store_float(tr, cr, d.N);
      }
    }
  };
  parallel_range(items, 1, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t it = i0; it < i1; ++it) item(it);
  });
}

void check_dims(const GemmDims& d) {
  KILN_CHECK(d.batch >= 0 && d.M >= 0 && d.N >= 0 && d.K >= 0, "gemm_lowp", "negative size: batch {} M {} N {} K {}",
             d.batch, d.M, d.N, d.K);
  KILN_CHECK(d.ldc >= d.N && (d.batch <= 1 || d.sc != 0), "gemm_lowp", "bad output layout: ldc {} N {} sc {}", d.ldc,
             d.N, d.sc);
  KILN_CHECK(!d.bias || (d.alpha == 1.0f && d.beta == 0.0f), "gemm_lowp",
             "a bias needs alpha 1 and beta 0, got {} and {}", d.alpha, d.beta);
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

bool gemm_lowp_widens(bool bf16) {
#if KILN_WITH_ONEDNN
  if (bf16) return !onednn_bf16_on();
#endif
  (void)bf16;
  return true;
}

template <typename T, typename O>
void gemm_lowp(const GemmDims& d, const LowpOperand<T>& a, const LowpOperand<T>& b, O* c) {
  static_assert(is_reduced_float_v<T> && (std::is_same_v<O, T> || std::is_same_v<O, float>));
  check_dims(d);
  if (d.batch == 0 || d.M == 0 || d.N == 0) return;
  if (d.K == 0) {  // an empty sum: C = beta * C (+ bias)
    for (std::int64_t i = 0; i < d.batch; ++i)
      for (std::int64_t m = 0; m < d.M; ++m) {
        O* cr = c + i * d.sc + m * d.ldc;
        for (std::int64_t n = 0; n < d.N; ++n)
          cr[n] = d.bias ? O(d.bias[n]) : (d.beta == 0.0f ? O(0.0f) : O(d.beta * static_cast<float>(cr[n])));
      }
    return;
  }
#if KILN_WITH_ONEDNN
  if constexpr (std::is_same_v<T, BFloat16>) {
    if (onednn_bf16_on()) {
      if (!d.tb || onednn_transposed_b_ok()) {
        if (onednn_gemm(d, a.data, b.data, c)) return;
      } else {
        GemmDims e = d;
        const Tensor dense = dense_b(d, b.data, e);
        if (onednn_gemm(e, a.data, dense.data_ptr<BFloat16>(), c)) return;
      }
    }
  }
#endif
  float_gemm(d, a, b, c);
}

template <typename T, typename O>
void gemm_lowp(const GemmDims& d, const T* a, const T* b, O* c) {
  gemm_lowp(d, LowpOperand<T>{a}, LowpOperand<T>{b}, c);
}

template void gemm_lowp<BFloat16, BFloat16>(const GemmDims&, const BFloat16*, const BFloat16*, BFloat16*);
template void gemm_lowp<BFloat16, float>(const GemmDims&, const BFloat16*, const BFloat16*, float*);
template void gemm_lowp<Half, Half>(const GemmDims&, const Half*, const Half*, Half*);
template void gemm_lowp<Half, float>(const GemmDims&, const Half*, const Half*, float*);
template void gemm_lowp<BFloat16, BFloat16>(const GemmDims&, const LowpOperand<BFloat16>&, const LowpOperand<BFloat16>&,
                                            BFloat16*);
template void gemm_lowp<BFloat16, float>(const GemmDims&, const LowpOperand<BFloat16>&, const LowpOperand<BFloat16>&,
                                         float*);
template void gemm_lowp<Half, Half>(const GemmDims&, const LowpOperand<Half>&, const LowpOperand<Half>&, Half*);
template void gemm_lowp<Half, float>(const GemmDims&, const LowpOperand<Half>&, const LowpOperand<Half>&, float*);

}  // namespace kiln::cpu
