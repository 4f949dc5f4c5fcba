// The CPU backend's bulk 16-bit float conversions (core/cpu/convert.hpp) at every instruction-set
// level this CPU runs, against half.hpp's scalar conversions bit for bit; then the tensor paths
// built on them (strided casts, 16-bit binary ops, fill) against the same scalar formulas.
#include <cstring>
#include <kiln/core/cpu/convert.hpp>
#include <limits>
#include <random>
#include <vector>

#include "test_util.hpp"

using namespace kiln;

namespace {

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Restores the conversion level a test changed.
struct LevelGuard {
  int prev;
  explicit LevelGuard(int level) : prev(cpu::set_convert_level(level)) {}
  ~LevelGuard() { cpu::set_convert_level(prev); }
};

// Every level the CPU runs: 0 (scalar) .. the best.
std::vector<int> levels() {
  LevelGuard g(-1);
  std::vector<int> r;
  for (int l = 0; l <= cpu::convert_level(); ++l) r.push_back(l);
  return r;
}

// Every upper half with low halves at the rounding boundaries of both formats (bfloat16 drops
// 16 bits, float16 13: ties, one below and above, odd and even kept bits), plus random ones:
// covers NaN payloads (quiet and signalling), Inf, max finite, overflow, subnormals, zeros.
std::vector<float> float_patterns() {
  const std::uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000,
                                0x3001, 0x5000, 0x7fff, 0x8000, 0x8001, 0x9000, 0xa000, 0xb000,
                                0xc000, 0xdfff, 0xe000, 0xefff, 0xf000, 0xf001, 0xfffe, 0xffff};
  std::mt19937 rng(15);
  std::vector<float> v;
  v.reserve(65536 * 28);
  for (std::uint32_t hi = 0; hi < 65536; ++hi) {
    for (std::uint32_t lo : lows) v.push_back(from_bits(hi << 16 | lo));
    for (int r = 0; r < 4; ++r) v.push_back(from_bits(hi << 16 | (rng() & 0xffffu)));
  }
  return v;
}

template <typename T>
std::uint16_t scalar_narrow(float f) {
  return T(f).bits();
}

template <typename T>
void check_level(int level, const std::vector<float>& floats) {
  LevelGuard g(level);
  INFO("level " << level << std::string(std::is_same_v<T, BFloat16> ? " bfloat16" : " float16"));
  // Widening: all 2^16 patterns.
  std::vector<T> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = T::from_bits(std::uint16_t(b));
  std::vector<float> wide(all.size());
  cpu::load_float(all.data(), wide.data(), std::int64_t(all.size()));
  int bad = 0;
  for (std::uint32_t b = 0; b < 65536; ++b)
    if (float_bits(wide[b]) != float_bits(static_cast<float>(all[b])) && ++bad <= 3)
      FAIL_CHECK("widening pattern " << b << ": " << float_bits(wide[b]));
  // Narrowing: the float patterns, and each 16-bit pattern's float back to itself.
  std::vector<T> narrow(floats.size());
  cpu::store_float(floats.data(), narrow.data(), std::int64_t(floats.size()));
  for (std::size_t k = 0; k < floats.size(); ++k)
    if (narrow[k].bits() != scalar_narrow<T>(floats[k]) && ++bad <= 6)
      FAIL_CHECK("narrowing float bits " << float_bits(floats[k]) << ": " << narrow[k].bits() << " vs "
                                         << scalar_narrow<T>(floats[k]));
  std::vector<T> back(all.size());
  cpu::store_float(wide.data(), back.data(), std::int64_t(wide.size()));
  for (std::uint32_t b = 0; b < 65536; ++b)
    if (back[b].bits() != scalar_narrow<T>(wide[b]) && ++bad <= 9) FAIL_CHECK("round trip of pattern " << b);
  // Every length and misalignment around the vector widths (tails take the scalar code).
  for (std::int64_t off = 0; off < 3; ++off)
    for (std::int64_t n = 0; n <= 70; ++n) {
      std::vector<T> o(n + off + 1, T::from_bits(0x1234));
      std::vector<float> w(n + off + 1, -7.0f);
      cpu::store_float(floats.data() + 1000 * n + 3, o.data() + off, n);
      cpu::load_float(o.data() + off, w.data() + off, n);
      for (std::int64_t k = 0; k < n; ++k) {
        const float f = floats[1000 * n + 3 + k];
        if ((o[off + k].bits() != scalar_narrow<T>(f) ||
             float_bits(w[off + k]) != float_bits(static_cast<float>(o[off + k]))) &&
            ++bad <= 12)
          FAIL_CHECK("length " << n << " offset " << off << " element " << k);
      }
      if ((o[off + n].bits() != 0x1234 || w[off + n] != -7.0f) && ++bad <= 12)
        FAIL_CHECK("length " << n << " offset " << off << " wrote past the end");
    }
  CHECK(bad == 0);
}

// Values with the edge cases mixed in: NaN, Inf, signed zeros, subnormals of both formats, ties.
std::vector<float> mixed_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  const float special[] = {std::numeric_limits<float>::quiet_NaN(),
                           from_bits(0x7f800001u),
                           from_bits(0xffc12345u),
                           HUGE_VALF,
                           -HUGE_VALF,
                           0.0f,
                           -0.0f,
                           1e-40f,
                           -3e-8f,
                           65520.0f,
                           65519.0f,
                           from_bits(0x3f808000u),
                           from_bits(0x3f818000u),
                           from_bits(0x7f7fffffu)};
  std::vector<float> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = k % 7 == 3 ? special[(k / 7) % std::size(special)] : dist(rng);
  return v;
}

template <typename T>
std::vector<std::uint16_t> bits_of(const Tensor& t) {
  std::vector<std::uint16_t> r;
  for (T v : t.contiguous().to_vector<T>()) r.push_back(v.bits());
  return r;
}

template <typename T>
void check_tensor_paths(DType dt) {
  const std::int64_t R = 37, C = 301;  // C > the conversion chunk, not a multiple of the widths
  const auto xs = mixed_values(R * C, 1), ys = mixed_values(R * C, 2);
  auto narrow = [](float f) { return T(f).bits(); };
  // float32 -> 16-bit, transposed source (strided reads) and transposed destination (strided writes).
  Tensor x = tensor(xs, {R, C});
  Tensor xt = x.transpose(0, 1).to(dt);  // strided source
  std::vector<std::uint16_t> want(R * C);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t r = 0; r < R; ++r) want[c * R + r] = narrow(xs[r * C + c]);
  CHECK(bits_of<T>(xt) == want);
  Tensor dst = empty({C, R}, TensorOptions().dtype(dt)).transpose(0, 1);  // strided destination
  dst.copy_(x);
  CHECK(bits_of<T>(dst.transpose(0, 1)) == want);
  // 16-bit -> float32, strided and every other column.
  Tensor h = x.to(dt);
  const auto hb = bits_of<T>(h);
  auto wide = [&](std::int64_t r, std::int64_t c) { return float_bits(float(T::from_bits(hb[r * C + c]))); };
  auto hw = h.transpose(0, 1).to(kFloat32).to_vector<float>();
  auto hs = h.slice(1, 1, C, 2).to(kFloat32).to_vector<float>();
  bool ok = true;
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      ok = ok && float_bits(hw[c * R + r]) == wide(r, c);
      if (c % 2 == 1) ok = ok && float_bits(hs[r * (C / 2) + c / 2]) == wide(r, c);
    }
  CHECK(ok);
  // Binary ops: float32 math on the widened inputs, one rounding; contiguous, transposed, broadcast.
  Tensor y = tensor(ys, {R, C}).to(dt);
  const auto yb = bits_of<T>(y);
  auto f = [](std::uint16_t b) { return float(T::from_bits(b)); };
  std::vector<std::uint16_t> sum(R * C), prod(R * C), bc(R * C);
  for (std::int64_t k = 0; k < R * C; ++k) {
    sum[k] = narrow(f(hb[k]) + f(yb[k]));
    prod[k] = narrow(f(hb[k]) * f(yb[k]));
    bc[k] = narrow(f(hb[k]) - f(yb[k % C]));
  }
  CHECK(bits_of<T>(h + y) == sum);
  CHECK(bits_of<T>(h * y) == prod);
  Tensor yt = y.transpose(0, 1).contiguous().transpose(0, 1);  // same values, strided
  CHECK(bits_of<T>(h * yt) == prod);
  CHECK(bits_of<T>(h - y.slice(0, 0, 1)) == bc);
  const float s = float(T(1.7f));  // one value broadcast over every element (stride 0 throughout)
  std::vector<std::uint16_t> scaled(R * C);
  for (std::int64_t k = 0; k < R * C; ++k) scaled[k] = narrow(f(hb[k]) * s);
  CHECK(bits_of<T>(h * tensor(std::vector<float>{1.7f}, {1}).to(dt)) == scaled);
  CHECK(bits_of<T>(tensor(std::vector<float>{1.7f}, {1}).to(dt) * h.transpose(0, 1)) ==
        bits_of<T>(h.transpose(0, 1) * s));
  // Fill writes the value's 16-bit pattern, contiguous and strided.
  for (double v : {0.1, -0.0, 1e30, 70000.0, 1e-6}) {
    Tensor t = zeros({R, C}, TensorOptions().dtype(dt));
    t.slice(1, 0, C, 3).fill_(v);
    const auto tb = bits_of<T>(t);
    bool fill_ok = true;
    for (std::int64_t k = 0; k < R * C; ++k) fill_ok = fill_ok && tb[k] == (k % C % 3 == 0 ? T(v).bits() : 0);
    CHECK_MESSAGE(fill_ok, "fill " << v);
    CHECK(bits_of<T>(full({5, 33}, v, TensorOptions().dtype(dt))) == std::vector<std::uint16_t>(165, T(v).bits()));
  }
}

}  // namespace

TEST_CASE("convert: bulk bfloat16/float16 conversions equal the scalar ones at every level") {
  const auto floats = float_patterns();
  for (int level : levels()) {
    check_level<BFloat16>(level, floats);
    check_level<Half>(level, floats);
  }
}

TEST_CASE("convert: strided casts, 16-bit binary ops and fill round like the scalar conversions") {
  for (int level : levels()) {
    LevelGuard g(level);
    INFO("level " << level);
    check_tensor_paths<BFloat16>(kBFloat16);
    check_tensor_paths<Half>(kFloat16);
  }
}
