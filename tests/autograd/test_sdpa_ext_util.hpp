#pragma once
// Shared helpers for the scaled_dot_product_attention extension suites (window, ALiBi, sinks,
// learned bias): a host-loop implementation of the extended semantics and option builders.
#include "autograd/test_attention_util.hpp"

namespace kiln::cpu {
// core/cpu/attention_decode.cpp: chunks > 0 makes the few-query path split every key range into that
// many chunks (0: its own choice, by thread count and work); returns the previous setting.
std::int64_t attention_decode_split_for_testing(std::int64_t chunks);
}  // namespace kiln::cpu

namespace kx {

// While alive, every key range of more than one tile (64 keys) is split into up to 3 chunks
// (uneven ones too), whatever the thread count; the split itself runs on one machine thread
// here as it would on several.
struct SplitEverything {
  std::int64_t prev = kiln::cpu::attention_decode_split_for_testing(3);
  SplitEverything() = default;
  ~SplitEverything() { kiln::cpu::attention_decode_split_for_testing(prev); }
  SplitEverything(const SplitEverything&) = delete;
  SplitEverything& operator=(const SplitEverything&) = delete;
};

using namespace ka;
using kiln::SdpaOptions;

// Plain loops over contiguous host copies, (B, H, T, S) semantics of ARCHITECTURE.md plus the
// extensions: window (negative = unbounded), ALiBi slopes per (b, h), sinks per (b, h).
struct HostExt {
  std::int64_t B, H, Hkv, T, S, Dk, Dv;
  double scale;
  bool causal = false;
  std::int64_t wl = -1, wr = -1;
  std::vector<double> q, k, v;
  std::vector<double> mask;  // full (B, H, T, S) or empty
  bool bool_mask = false;
  std::vector<double> slopes;  // (B, H) or empty
  std::vector<double> sinks;   // (B, H) or empty
};

struct HostOut {
  std::vector<double> out;      // (B, H, T, Dv)
  std::vector<double> weights;  // (B, H, T, S)
};

inline HostOut host_sdpa_ext(const HostExt& c) {
  HostOut r;
  r.out.assign(static_cast<std::size_t>(c.B * c.H * c.T * c.Dv), 0.0);
  r.weights.assign(static_cast<std::size_t>(c.B * c.H * c.T * c.S), 0.0);
  const std::int64_t G = c.H / c.Hkv;
  auto at = [](std::int64_t i) { return static_cast<std::size_t>(i); };
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t h = 0; h < c.H; ++h)
      for (std::int64_t t = 0; t < c.T; ++t) {
        const std::int64_t kh = h / G, p = c.S - c.T + t, row = (b * c.H + h) * c.T + t;
        std::vector<double> s(at(c.S));
        std::vector<bool> keep(at(c.S), true);
        for (std::int64_t j = 0; j < c.S; ++j) {
          double d = 0;
          for (std::int64_t x = 0; x < c.Dk; ++x)
            d += c.q[at(row * c.Dk + x)] * c.k[at(((b * c.Hkv + kh) * c.S + j) * c.Dk + x)];
          double l = d * c.scale;
          if (!c.slopes.empty()) l -= c.slopes[at(b * c.H + h)] * std::abs(static_cast<double>(p - j));
          if (!c.mask.empty()) {
            const double m = c.mask[at(row * c.S + j)];
            if (c.bool_mask) keep[at(j)] = m != 0;
            else l += m;
          }
          if (c.causal && j > p) keep[at(j)] = false;
          if (c.wl >= 0 && j < p - c.wl) keep[at(j)] = false;
          if (c.wr >= 0 && j > p + c.wr) keep[at(j)] = false;
          if (l == -kInf) keep[at(j)] = false;
          s[at(j)] = l;
        }
        double mx = -kInf;
        for (std::int64_t j = 0; j < c.S; ++j)
          if (keep[at(j)]) mx = std::max(mx, s[at(j)]);
        if (mx == -kInf) continue;  // no key: output 0, weights 0
        const double sink = c.sinks.empty() ? -kInf : c.sinks[at(b * c.H + h)];
        const double m2 = std::max(mx, sink);
        double den = std::exp(sink - m2);
        for (std::int64_t j = 0; j < c.S; ++j)
          if (keep[at(j)]) den += std::exp(s[at(j)] - m2);
        for (std::int64_t j = 0; j < c.S; ++j) {
          if (!keep[at(j)]) continue;
          const double pj = std::exp(s[at(j)] - m2) / den;
          r.weights[at(row * c.S + j)] = pj;
          for (std::int64_t x = 0; x < c.Dv; ++x)
            r.out[at(row * c.Dv + x)] += pj * c.v[at(((b * c.Hkv + kh) * c.S + j) * c.Dv + x)];
        }
      }
  return r;
}

// (T, S) bool band: query t (at S - T + t) may see key s under causal and window (l, r).
inline kiln::Tensor band_mask(std::int64_t T, std::int64_t S, bool causal, std::int64_t l, std::int64_t r) {
  kiln::Tensor m = kiln::zeros({T, S}, kiln::kBool);
  auto* mp = static_cast<bool*>(m.raw_data());
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t j = 0; j < S; ++j) {
      const std::int64_t p = S - T + t;
      mp[t * S + j] = (!causal || j <= p) && (l < 0 || j >= p - l) && (r < 0 || j <= p + r);
    }
  return m;
}

// (H, T, S) float ALiBi bias -slopes[h] * |S - T + t - s| for host slopes.
inline kiln::Tensor alibi_bias(const std::vector<double>& slopes, std::int64_t T, std::int64_t S,
                               kiln::DType dt = kiln::kFloat64) {
  const auto H = static_cast<std::int64_t>(slopes.size());
  std::vector<double> b(static_cast<std::size_t>(H * T * S));
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t j = 0; j < S; ++j)
        b[static_cast<std::size_t>((h * T + t) * S + j)] =
            -slopes[static_cast<std::size_t>(h)] * std::abs(static_cast<double>(S - T + t - j));
  return kiln::tensor(b, {H, T, S}).to(dt);
}

inline Shape cat_shape(const Shape& a, std::initializer_list<std::int64_t> b) {
  Shape s = a;
  s.insert(s.end(), b);
  return s;
}

// Max |x - y| over gradients that may be undefined on both sides.
inline double grad_diff(const kiln::Tensor& a, const kiln::Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined() ? 0.0 : kInf;
  return max_abs_diff(a, b);
}

}  // namespace kx
