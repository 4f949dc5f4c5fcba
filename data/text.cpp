// Text data (data/datasets.hpp): read_text, CharVocab, TextWindows.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "datasets.hpp"

namespace kiln::data {

namespace fs = std::filesystem;

namespace {

std::string file_bytes(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(static_cast<bool>(f), "read_text", "{}: cannot open the file", path.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

std::string read_text(const std::string& path) {
  std::error_code ec;
  KILN_CHECK(fs::exists(path, ec), "read_text", "{}: no such file or folder", path);
  if (!fs::is_directory(path, ec)) {
    std::string text = file_bytes(path);
    const auto nul = text.find('\0');
    KILN_CHECK(nul == std::string::npos, "read_text", "{}: not a text file (a NUL byte at offset {})", path, nul);
    KILN_CHECK(!text.empty(), "read_text", "{}: the file is empty", path);
    return text;
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  KILN_CHECK(!ec, "read_text", "{}: cannot list the folder: {}", path, ec.message());
  std::sort(files.begin(), files.end());
  std::string all;
  for (const auto& f : files) {
    std::string text = file_bytes(f);
    if (text.find('\0') == std::string::npos) all += text;
  }
  KILN_CHECK(!all.empty(), "read_text", "{}: the folder has no text files", path);
  return all;
}

CharVocab::CharVocab(std::string_view text) {
  for (unsigned char c : text) known_[c] = true;
  for (int c = 0; c < 256; ++c)
    if (known_[c]) id_[c] = static_cast<std::int64_t>(chars_.size()), chars_ += static_cast<char>(c);
}

std::int64_t CharVocab::id(unsigned char c) const {
  KILN_CHECK(known_[c], "CharVocab", "character {:?} (byte {}) is not in the vocabulary of {} characters",
             std::string(1, static_cast<char>(c)), int(c), chars_.size());
  return id_[c];
}

Tensor CharVocab::encode(std::string_view text) const {
  std::vector<std::int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(id(c));
  return tensor(ids, {static_cast<std::int64_t>(ids.size())});
}

std::string CharVocab::decode(const std::vector<std::int64_t>& ids) const {
  std::string s;
  s.reserve(ids.size());
  for (std::int64_t i : ids) {
    KILN_CHECK(i >= 0 && i < size(), "CharVocab", "token id {} is out of range for a vocabulary of {} characters", i,
               size());
    s += chars_[static_cast<std::size_t>(i)];
  }
  return s;
}

TextWindows::TextWindows(Tensor tokens, std::int64_t context, std::int64_t stride)
    : tokens_(std::move(tokens)), context_(context), stride_(stride) {
  KILN_CHECK(tokens_.defined() && tokens_.dim() == 1 && tokens_.dtype() == kInt64, "TextWindows",
             "tokens must be a 1-D int64 tensor, got {}",
             tokens_.defined() ? fmt::format("{} {}", dtype_name(tokens_.dtype()), shape_str(tokens_.shape()))
                               : std::string("an undefined tensor"));
  KILN_CHECK(context >= 1, "TextWindows", "context must be >= 1, got {}", context);
  KILN_CHECK(stride >= 1, "TextWindows", "stride must be >= 1, got {}", stride);
  const std::int64_t n = tokens_.size(0);
  size_ = n < context + 1 ? 0 : (n - context - 1) / stride + 1;
}

Example TextWindows::get(std::int64_t index) const {
  check_index("TextWindows", index, size_);
  const std::int64_t start = index * stride_;
  return {tokens_.narrow(0, start, context_), tokens_.narrow(0, start + 1, context_)};
}

}  // namespace kiln::data
