// copy (with dtype conversion), host transfers and fill.
#include <fmt/format.h>
#include <cstdint>
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
  if constexpr (std::is_same_v<D, bool>) {
    return v != S(0);
  } else if constexpr (std::is_same_v<D, std::int64_t> && !std::is_same_v<S, std::int64_t> &&
                       !std::is_same_v<S, bool>) {
    // Floating to int64 saturates and takes NaN to 0 (as CUDA's conversion does): a plain cast
    // of NaN, an infinity or a value past int64 is undefined behaviour.
    const double x = static_cast<double>(static_cast<std::conditional_t<is_reduced_float_v<S>, float, S>>(v));
    if (!(x == x)) return 0;
    if (x >= 9223372036854775808.0) return INT64_MAX;
    if (x < -9223372036854775808.0) return INT64_MIN;
    return static_cast<std::int64_t>(x);
  } else {
    return static_cast<D>(v);
  }
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
        if constexpr ((std::is_same_v<D, float> && is_reduced_float_v<S>) ||
                      (is_reduced_float_v<D> && std::is_same_v<S, float>)) {
          convert_run(o, so, i, si, n);
        } else if (so == 1 && si == 1) {
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

namespace {
// 16-bit floats fill as their bit pattern: a plain integer store loop, no float conversion.
template <typename T>
using FillAs = std::conditional_t<is_reduced_float_v<T>, std::uint16_t, T>;
template <typename T>
FillAs<T> fill_value(const Scalar& v) {
  if constexpr (is_reduced_float_v<T>) return v.to<T>().bits();
  else return v.to<T>();
}
}  // namespace

void CpuBackend::fill(const Tensor& dst, const Scalar& v) {
  visit_dtype(dst.dtype(), [&](auto z) {
    using T = FillAs<decltype(z)>;
    const T val = fill_value<decltype(z)>(v);
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
