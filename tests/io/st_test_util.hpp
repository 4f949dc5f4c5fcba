#pragma once
// Helpers shared by the safetensors and checkpoint suites.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <kiln/io/safetensors.hpp>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace ckt {

namespace fs = std::filesystem;

/// A fresh empty directory under the system temp dir, unique per process and tag.
inline fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("kiln_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

inline std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open " << p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(f.good());
}

inline std::string data_dir() { return std::string(KILN_TEST_DATA) + "/safetensors/"; }

/// Same dtype, shape and bytes (NaN payloads and -0.0 included).
inline bool bitwise_equal(const kiln::Tensor& a, const kiln::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.numel() == 0) return true;
  kiln::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

}  // namespace ckt
