// index_select / index_add (rows of a dim) and gather / scatter_add (elementwise).
// Indices arrive range-checked and int64.
#include <fmt/format.h>
#include <cstring>

#include "../math/elementwise.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {
namespace {

// (outer, dim, inner) sizes of a contiguous tensor around `dim`.
void split3(const Shape& s, std::int64_t dim, std::int64_t& outer, std::int64_t& inner) {
  outer = 1;
  inner = 1;
  for (std::int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (std::size_t d = dim + 1; d < s.size(); ++d) inner *= s[d];
}

Tensor contiguous_copy(CpuBackend& be, const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  be.copy(c, t);
  return c;
}

// A view of x with index's shape whose stride along `dim` is 0 (the index supplies it).
Tensor along_dim_view(const Tensor& x, const Tensor& index, std::int64_t dim) {
  Strides st = x.strides();
  st[dim] = 0;
  return Tensor::make_view(x, index.shape(), st, x.offset());
}

}  // namespace

void CpuBackend::index_select(const Tensor& x_in, std::int64_t dim, const Tensor& index_in, const Tensor& out) {
  // Nothing to copy (rows of 0 bytes would pass null pointers to memcpy: UBSan, found by the
  // API fuzzer on a (2, 3, 0) input).
  if (out.numel() == 0) return;
  Tensor x = contiguous_copy(*this, x_in), index = contiguous_copy(*this, index_in);
  std::int64_t outer, inner;
  split3(x.shape(), dim, outer, inner);
  const std::int64_t D = x.size(dim), L = index.numel();
  const std::size_t row = static_cast<std::size_t>(inner) * itemsize(x.dtype());
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const std::int64_t* idx = index.data_ptr<std::int64_t>();
  parallel_range(outer * L, std::max<std::int64_t>(1, kParallelGrain / std::max<std::int64_t>(inner, 1)),
                 [&](std::int64_t b, std::int64_t e) {
                   for (std::int64_t w = b; w < e; ++w) {
                     std::int64_t o = w / L, l = w % L;
                     std::memcpy(dst + w * row, src + (o * D + idx[l]) * row, row);
                   }
                 });
}

void CpuBackend::index_add(const Tensor& out, std::int64_t dim, const Tensor& index_in, const Tensor& src_in) {
  Tensor src = contiguous_copy(*this, src_in), index = contiguous_copy(*this, index_in);
  std::int64_t outer, inner;
  split3(out.shape(), dim, outer, inner);
  const std::int64_t D = out.size(dim), L = index.numel();
  const std::int64_t* idx = index.data_ptr<std::int64_t>();
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    T* o = out.data_ptr<T>();
    const T* s = src.data_ptr<T>();
    // Split over (outer, column chunks): rows that share an index never race.
    const std::int64_t chunk = 64;
    const std::int64_t nchunks = (inner + chunk - 1) / chunk;
    parallel_range(outer * nchunks, std::max<std::int64_t>(1, kParallelGrain / (chunk * std::max<std::int64_t>(L, 1))),
                   [&](std::int64_t b, std::int64_t e) {
                     for (std::int64_t w = b; w < e; ++w) {
                       std::int64_t oi = w / nchunks, c0 = (w % nchunks) * chunk;
                       std::int64_t len = std::min(chunk, inner - c0);
                       for (std::int64_t l = 0; l < L; ++l) {
                         T* dr = o + (oi * D + idx[l]) * inner + c0;
                         const T* sr = s + (oi * L + l) * inner + c0;
                         for (std::int64_t j = 0; j < len; ++j) {
                           if constexpr (std::is_same_v<T, bool>) dr[j] = dr[j] || sr[j];
                           else dr[j] = T(math::compute_t<T>(dr[j]) + math::compute_t<T>(sr[j]));
                         }
                       }
                     }
                   });
  });
}

void CpuBackend::gather(const Tensor& x, std::int64_t dim, const Tensor& index, const Tensor& out) {
  Tensor xv = along_dim_view(x, index, dim);
  const std::int64_t xs = x.stride(dim) * static_cast<std::int64_t>(itemsize(x.dtype()));
  visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    strided_loop<3>(out.shape(), make_operands<3>({&out, &index, &xv}), [xs](auto p, std::int64_t n, auto st) {
      for (std::int64_t k = 0; k < n; ++k) {
        std::int64_t i = *reinterpret_cast<const std::int64_t*>(p[1] + k * st[1]);
        *reinterpret_cast<T*>(p[0] + k * st[0]) = *reinterpret_cast<const T*>(p[2] + k * st[2] + i * xs);
      }
    });
  });
}

void CpuBackend::scatter_add(const Tensor& out, std::int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor ov = along_dim_view(out, index, dim);
  const std::int64_t os = out.stride(dim) * static_cast<std::int64_t>(itemsize(out.dtype()));
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    // Serial: two index positions may target the same element.
    strided_loop<3>(
        index.shape(), make_operands<3>({&ov, &index, &src}),
        [os](auto p, std::int64_t n, auto st) {
          for (std::int64_t k = 0; k < n; ++k) {
            std::int64_t i = *reinterpret_cast<const std::int64_t*>(p[1] + k * st[1]);
            T* d = reinterpret_cast<T*>(p[0] + k * st[0] + i * os);
            T v = *reinterpret_cast<const T*>(p[2] + k * st[2]);
            if constexpr (std::is_same_v<T, bool>) *d = *d || v;
            else *d = T(math::compute_t<T>(*d) + math::compute_t<T>(v));
          }
        },
        std::numeric_limits<std::int64_t>::max() / 4);
  });
}

}  // namespace kiln::cpu
