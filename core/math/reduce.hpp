#pragma once
/// The combine rules of the reductions (sum, prod, max, min), written once for both backends:
/// init() is the identity, apply(acc, v) folds one value in. Max and min propagate NaN.
///   float m = kiln::math::MaxOp<float>::init();
///   for (float v : values) m = kiln::math::MaxOp<float>::apply(m, v);
#include <limits>
#include <type_traits>

#include "functions.hpp"

namespace kiln::math {

template <typename T>
struct SumOp {
  KILN_HD static T init() { return T(0); }
  KILN_HD static T apply(T a, T b) { return static_cast<T>(a + b); }
};

template <typename T>
struct ProdOp {
  KILN_HD static T init() { return T(1); }
  KILN_HD static T apply(T a, T b) {
    if constexpr (std::is_same_v<T, bool>) return a && b;
    else return a * b;
  }
};

template <typename T>
struct MaxOp {
  KILN_HD static T init() {
    if constexpr (std::is_floating_point_v<T>) return -infinity<T>();
    else return std::numeric_limits<T>::lowest();
  }
  // A NaN acc stays (b > NaN is false); a NaN b wins.
  KILN_HD static T apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      if (isnan(b)) return b;
    }
    return b > a ? b : a;
  }
};

template <typename T>
struct MinOp {
  KILN_HD static T init() {
    if constexpr (std::is_floating_point_v<T>) return infinity<T>();
    else return std::numeric_limits<T>::max();
  }
  KILN_HD static T apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      if (isnan(b)) return b;
    }
    return b < a ? b : a;
  }
};

}  // namespace kiln::math
