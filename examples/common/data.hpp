#pragma once
/// Reading the examples' data files with clear errors (a missing file, a folder without text,
/// a file that is not what it should be): every problem is a UsageError naming the path.
///
///   std::string text = examples::read_text("/usr/share/games/fortunes");   // a file or a folder
///   examples::Idx images = examples::read_idx(".../train-images-idx3-ubyte.gz");   // gzip'd or plain
#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common.hpp"

namespace examples {

namespace fs = std::filesystem;

/// The bytes of one file.
inline std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError(fmt::format("{}: cannot open the file", path.string()));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

/// A text file, or every regular file (not a symlink) in a folder, in name order, joined. Files
/// containing NUL bytes are not text: an error for a file given directly, skipped in a folder
/// (so a folder of fortune files with their binary .dat indexes works).
inline std::string read_text(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw UsageError(fmt::format("{}: no such file or folder", path));
  if (!fs::is_directory(path, ec)) {
    std::string text = read_file(path);
    if (auto nul = text.find('\0'); nul != std::string::npos)
      throw UsageError(fmt::format("{}: not a text file (a NUL byte at offset {})", path, nul));
    return text;
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string all;
  for (const auto& f : files) {
    std::string text = read_file(f);
    if (text.find('\0') == std::string::npos) all += text;
  }
  if (all.empty()) throw UsageError(fmt::format("{}: the folder has no text files", path));
  return all;
}

/// An IDX array (the MNIST format): big-endian header (0, 0, type, rank), rank u32 sizes, data.
struct Idx {
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;  // unsigned bytes (type 0x08), the only type MNIST uses
};

/// Reads an IDX file, gzip-compressed or not (zlib's gz reader handles both).
inline Idx read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw UsageError(fmt::format("{}: cannot open the file", path));
  std::string bytes;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) bytes.append(buf, std::size_t(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string zmsg = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END))
    throw UsageError(fmt::format("{}: cannot decompress: {}", path, zmsg));

  auto u32 = [&](std::size_t at) {
    return std::uint32_t(std::uint8_t(bytes[at])) << 24 | std::uint32_t(std::uint8_t(bytes[at + 1])) << 16 |
           std::uint32_t(std::uint8_t(bytes[at + 2])) << 8 | std::uint32_t(std::uint8_t(bytes[at + 3]));
  };
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0)
    throw UsageError(fmt::format("{}: not an IDX file (bad magic number)", path));
  if (std::uint8_t(bytes[2]) != 0x08)
    throw UsageError(
        fmt::format("{}: IDX element type 0x{:02x}, expected unsigned bytes (0x08)", path, std::uint8_t(bytes[2])));
  const int rank = std::uint8_t(bytes[3]);
  if (rank < 1 || bytes.size() < 4 + 4 * std::size_t(rank))
    throw UsageError(fmt::format("{}: truncated IDX header (rank {}, {} bytes)", path, rank, bytes.size()));
  Idx idx;
  std::size_t count = 1;
  for (int i = 0; i < rank; ++i) {
    idx.shape.push_back(u32(4 + 4 * i));
    count *= std::size_t(idx.shape.back());
  }
  const std::size_t header = 4 + 4 * std::size_t(rank);
  if (bytes.size() != header + count)
    throw UsageError(
        fmt::format("{}: IDX header promises {} values, the file has {}", path, count, bytes.size() - header));
  idx.data.assign(bytes.begin() + std::ptrdiff_t(header), bytes.end());
  return idx;
}

}  // namespace examples
