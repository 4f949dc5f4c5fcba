#pragma once
/// Counter-based random numbers (Philox4x32-10). A Generator is a (seed, offset)
/// pair: element i of a draw comes from counter offset + i / k (k = 4 values per
/// counter for 32-bit draws, 2 for 64-bit), so results do not depend on the thread
/// count or device; a draw of n values advances the offset by n (never overlapping).
///   kiln::Generator g(42);
///   auto a = kiln::randn({3, 4}, {}, &g);
///   kiln::manual_seed(0);                 // the default generator
#include <array>
#include <cstdint>
#include <mutex>

#include "host_device.hpp"

namespace kiln {

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0x5eed) : seed_(seed) {}
  Generator(const Generator& o) : seed_(o.seed_), offset_(o.offset_) {}
  Generator& operator=(const Generator& o) {
    seed_ = o.seed_;
    offset_ = o.offset_;
    return *this;
  }

  void manual_seed(std::uint64_t seed);
  std::uint64_t seed() const { return seed_; }
  std::uint64_t offset() const { return offset_; }
  /// Restores a state saved with seed()/offset().
  void set_state(std::uint64_t seed, std::uint64_t offset);
  /// Claims `n` counters and returns the first; thread-safe.
  std::uint64_t reserve(std::uint64_t n);

 private:
  std::uint64_t seed_;
  std::uint64_t offset_ = 0;
  std::mutex mu_;
};

Generator& default_generator();
/// Seeds the default generator.
void manual_seed(std::uint64_t seed);

/// Philox4x32-10 block: four 32-bit random words for (key, counter). Both backends draw with it.
KILN_HD std::array<std::uint32_t, 4> philox4x32(std::uint64_t key, std::uint64_t counter_lo,
                                                std::uint64_t counter_hi = 0) {
  std::uint32_t c0 = static_cast<std::uint32_t>(counter_lo), c1 = static_cast<std::uint32_t>(counter_lo >> 32);
  std::uint32_t c2 = static_cast<std::uint32_t>(counter_hi), c3 = static_cast<std::uint32_t>(counter_hi >> 32);
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    std::uint64_t p0 = static_cast<std::uint64_t>(0xD2511F53u) * c0;
    std::uint64_t p1 = static_cast<std::uint64_t>(0xCD9E8D57u) * c2;
    std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
    std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<std::uint32_t>(p1);
    c3 = static_cast<std::uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

/// 32 random bits -> float uniform in [0, 1) (24-bit mantissa).
KILN_HD float uint_to_unit_float(std::uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
/// 64 random bits -> double uniform in [0, 1).
KILN_HD double uint_to_unit_double(std::uint32_t hi, std::uint32_t lo) {
  return static_cast<double>(((static_cast<std::uint64_t>(hi) << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace kiln
