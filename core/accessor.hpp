#pragma once
/// Element access to a CPU tensor in loops, with the dtype and dim count checked once:
///   auto a = x.accessor<float, 2>();  // kiln::Error unless x is a 2-D float32 CPU tensor
///   for (std::int64_t i = 0; i < a.size(0); ++i)
///     for (std::int64_t j = 0; j < a.size(1); ++j) a[i][j] *= 2;
/// a[i][j] is a pointer computation through x's strides (views work): release builds check no
/// bounds; builds without NDEBUG throw kiln::Error for an index outside [0, size). Writes are
/// not seen by autograd, but making a writable accessor (T not const) bumps x's version counter,
/// so a tensor saved for backward that is then edited through it fails backward with the usual
/// "modified by an in-place operation" error (and autocast drops its cached cast); ask for
/// `const T` to only read. The accessor keeps x's storage alive.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "tensor.hpp"

namespace kiln {
namespace detail {

/// Throws unless t is a CPU tensor of dtype `want` with `dims` dims.
void check_accessor(const Tensor& t, DType want, std::size_t dims);
[[noreturn]] void accessor_out_of_range(std::int64_t index, std::int64_t size);

/// What a[i] returns with N dims left to index: a view into the accessor's sizes and strides.
template <typename T, std::size_t N>
class AccessorRef {
 public:
  AccessorRef(T* data, const std::int64_t* sizes, const std::int64_t* strides)
      : data_(data), sizes_(sizes), strides_(strides) {}
  decltype(auto) operator[](std::int64_t i) const {
#ifndef NDEBUG
    if (i < 0 || i >= sizes_[0]) accessor_out_of_range(i, sizes_[0]);
#endif
    if constexpr (N == 1) return data_[i * strides_[0]];
    else return AccessorRef<T, N - 1>(data_ + i * strides_[0], sizes_ + 1, strides_ + 1);
  }
  std::int64_t size(std::size_t d) const { return sizes_[d]; }
  std::int64_t stride(std::size_t d) const { return strides_[d]; }
  T* data() const { return data_; }

 private:
  T* data_;
  const std::int64_t* sizes_;
  const std::int64_t* strides_;
};

}  // namespace detail

/// `x.accessor<T, N>()`: T is the element type (const T for read-only), N the dim count.
template <typename T, std::size_t N>
class TensorAccessor {
  static_assert(N > 0, "an accessor needs at least one dim; use item<T>() for a 0-D tensor");

 public:
  explicit TensorAccessor(const Tensor& t) {
    detail::check_accessor(t, dtype_of<std::remove_const_t<T>>::value, N);
    if constexpr (!std::is_const_v<T>) t.bump_version();  // writes may follow: saved copies must notice
    storage_ = t.storage();
    data_ = static_cast<T*>(t.raw_data());
    for (std::size_t d = 0; d < N; ++d) {
      sizes_[d] = t.shape()[d];
      strides_[d] = t.strides()[d];
    }
  }
  decltype(auto) operator[](std::int64_t i) const {
    return detail::AccessorRef<T, N>(data_, sizes_.data(), strides_.data())[i];
  }
  std::int64_t size(std::size_t d) const { return sizes_[d]; }
  std::int64_t stride(std::size_t d) const { return strides_[d]; }
  T* data() const { return data_; }

 private:
  std::shared_ptr<Storage> storage_;
  T* data_ = nullptr;
  std::array<std::int64_t, N> sizes_{};
  std::array<std::int64_t, N> strides_{};
};

template <typename T, std::size_t N>
TensorAccessor<T, N> Tensor::accessor() const {
  return TensorAccessor<T, N>(*this);
}

}  // namespace kiln
