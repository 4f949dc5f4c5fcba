#pragma once
// Emulator stand-in for cuda_fp16.h: IEEE binary16 storage for the warp-matrix API, with the
// conversions (exact to float; from float by the compiler's _Float16, round to nearest even).
#include <cstdint>
#include <cstring>

struct __half {
  std::uint16_t x;
};
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, sizeof v);
  return static_cast<float>(v);
}
inline __half __float2half(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.x, &v, sizeof h.x);
  return h;
}
