// copy (with dtype conversion), host transfers and fill.
#include <fmt/format.h>
#include <cstring>

#include "convert.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

namespace {
template <typename D, typename S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) return v != S(0);
  else return static_cast<D>(v);
}
}  // namespace

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.raw_data() != src.raw_data() && dst.nbytes()) std::memcpy(dst.raw_data(), src.raw_data(), dst.nbytes());
    return;
  }
  visit_dtype(dst.dtype(), [&](auto d) {
    using D = decltype(d);
    visit_dtype(src.dtype(), [&](auto s) {
      using S = decltype(s);
      strided_loop<2>(dst.shape(), make_operands<2>({&dst, &src}), [](auto p, std::int64_t n, auto st) {
        D* o = reinterpret_cast<D*>(p[0]);
        const S* i = reinterpret_cast<const S*>(p[1]);
        std::int64_t so = st[0] / std::int64_t(sizeof(D)), si = st[1] / std::int64_t(sizeof(S));
        if (so == 1 && si == 1) {
          if constexpr (std::is_same_v<D, float> && is_reduced_float_v<S>) load_float(i, o, n);
          else if constexpr (is_reduced_float_v<D> && std::is_same_v<S, float>) store_float(i, o, n);
          else
            for (std::int64_t k = 0; k < n; ++k) o[k] = convert<D>(i[k]);
        } else {
          for (std::int64_t k = 0; k < n; ++k) o[k * so] = convert<D>(i[k * si]);
        }
      });
    });
  });
}

void CpuBackend::copy_to_host(void* dst, const Tensor& src) {
  if (src.nbytes()) std::memcpy(dst, src.raw_data(), src.nbytes());
}
void CpuBackend::copy_from_host(const Tensor& dst, const void* src) {
  if (dst.nbytes()) std::memcpy(dst.raw_data(), src, dst.nbytes());
}

void CpuBackend::fill(const Tensor& dst, const Scalar& v) {
  visit_dtype(dst.dtype(), [&](auto z) {
    using T = decltype(z);
    T val = v.to<T>();
    strided_loop<1>(dst.shape(), make_operands<1>({&dst}), [val](auto p, std::int64_t n, auto st) {
      T* o = reinterpret_cast<T*>(p[0]);
      std::int64_t so = st[0] / std::int64_t(sizeof(T));
      if (so == 1) {
        for (std::int64_t k = 0; k < n; ++k) o[k] = val;
      } else {
        for (std::int64_t k = 0; k < n; ++k) o[k * so] = val;
      }
    });
  });
}

}  // namespace kiln::cpu
