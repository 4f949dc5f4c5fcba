#include "generator.hpp"

namespace kiln {

void Generator::manual_seed(std::uint64_t seed) {
  std::lock_guard<std::mutex> lock(mu_);
  seed_ = seed;
  offset_ = 0;
}

void Generator::set_state(std::uint64_t seed, std::uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  seed_ = seed;
  offset_ = offset;
}

std::uint64_t Generator::reserve(std::uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  std::uint64_t start = offset_;
  offset_ += n;
  return start;
}

Generator& default_generator() {
  static Generator g(0x5eed);
  return g;
}

void manual_seed(std::uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace kiln
