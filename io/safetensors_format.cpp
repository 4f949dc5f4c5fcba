#include "safetensors_format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>

#include "../core/error.hpp"

namespace kiln::io::detail {

namespace {

constexpr std::array<StDTypeInfo, 15> kDTypes = {{
    {StDType::BOOL, "BOOL", 1, true, kBool},
    {StDType::U8, "U8", 1, true, kInt64},
    {StDType::I8, "I8", 1, true, kInt64},
    {StDType::U16, "U16", 2, true, kInt64},
    {StDType::I16, "I16", 2, true, kInt64},
    {StDType::U32, "U32", 4, true, kInt64},
    {StDType::I32, "I32", 4, true, kInt64},
    {StDType::U64, "U64", 8, true, kInt64},
    {StDType::I64, "I64", 8, true, kInt64},
    {StDType::F16, "F16", 2, true, kFloat16},
    {StDType::BF16, "BF16", 2, true, kBFloat16},
    {StDType::F32, "F32", 4, true, kFloat32},
    {StDType::F64, "F64", 8, true, kFloat64},
    {StDType::F8_E4M3, "F8_E4M3", 1, false, kFloat32},
    {StDType::F8_E5M2, "F8_E5M2", 1, false, kFloat32},
}};

[[noreturn]] void fail(std::string_view where, const std::string& msg) {
  throw Error(fmt::format("[load_safetensors] {}: {}", where, msg));
}
[[noreturn]] void fail_save(const std::string& msg) { throw Error("[save_safetensors] " + msg); }

// A string from the file as it appears in a message: quoted, non-printable bytes as \xNN, and
// cut short so a megabyte-long hostile name does not become a megabyte-long message.
std::string shown(std::string_view s) {
  constexpr std::size_t kMax = 60;
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') out += static_cast<char>(c);
    else out += fmt::format("\\x{:02x}", c);
  }
  out += s.size() > kMax ? fmt::format("'... ({} bytes)", s.size()) : "'";
  return out;
}

std::string dims_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Length of the UTF-8 sequence at p (1-4), or 0 when it is malformed, overlong, a surrogate,
// above U+10FFFF or cut off by the end of the text.
std::size_t utf8_seq_len(const unsigned char* p, std::size_t avail) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // > U+10FFFF
  } else {
    return 0;
  }
  if (avail < n) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (std::size_t i = 2; i < n; ++i)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return n;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// A JSON parser that accepts exactly the safetensors header schema, so that nothing a hostile
// header says is held in a general structure before it is checked, nesting is bounded by the
// schema (no recursion on input), and every error names the byte where it was found.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view where) : s_(text), where_(where) {}

  void parse(SafetensorsHeader& out) {
    if (s_.empty()) fail(where_, "the header is empty (length 0); expected a JSON object");
    ws();
    if (peek() != '{') error(fmt::format("the header must be a JSON object: expected '{{', found {}", describe()));
    ++p_;
    bool have_metadata = false;
    std::string key;
    items(
        '}',
        [&] {
          std::size_t key_pos = p_;
          key = string("a tensor name");
          expect(':');
          if (key == "__metadata__") {
            if (have_metadata) error_at(key_pos, "duplicate key '__metadata__'");
            have_metadata = true;
            metadata(out.metadata);
          } else {
            out.tensors.push_back(tensor(key));
          }
        },
        [&] { return fmt::format("after the entry for {}", shown(key)); });
    ws();
    if (p_ != s_.size())
      error(fmt::format("unexpected {} after the header's JSON object (only spaces may pad it)", describe()));
    // Duplicate names: JSON parsers disagree on which one wins, so the file is ambiguous.
    std::vector<std::size_t> order(out.tensors.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return out.tensors[a].name < out.tensors[b].name; });
    for (std::size_t i = 1; i < order.size(); ++i)
      if (out.tensors[order[i]].name == out.tensors[order[i - 1]].name)
        fail(where_, fmt::format("duplicate tensor name {} in the header", shown(out.tensors[order[i]].name)));
  }

 private:
  [[noreturn]] void error_at(std::size_t pos, const std::string& what) {
    fail(where_, fmt::format("header JSON, byte {}: {}", pos, what));
  }
  [[noreturn]] void error(const std::string& what) { error_at(p_, what); }

  char peek() const { return p_ < s_.size() ? s_[p_] : '\0'; }
  std::string describe() const {
    if (p_ >= s_.size()) return "the end of the header";
    auto c = static_cast<unsigned char>(s_[p_]);
    if (c >= 0x20 && c < 0x7f) return fmt::format("'{}'", static_cast<char>(c));
    return fmt::format("byte 0x{:02x}", c);
  }
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
  }
  // The items of a JSON array or object whose opening bracket was just read, up to `close`:
  // item() reads one (an object's key and value), then ',' or `close` must follow, else the
  // error says where (`where()`: "in the shape", "after the entry for 'x'", ...).
  template <typename Item, typename Where>
  void items(char close, Item&& item, Where&& where) {
    ws();
    if (peek() == close) {
      ++p_;
      return;
    }
    for (;;) {
      ws();
      item();
      ws();
      const char c = peek();
      if (c == close) {
        ++p_;
        return;
      }
      if (c != ',') error(fmt::format("expected ',' or '{}' {}, found {}", close, where(), describe()));
      ++p_;
    }
  }
  void expect(char c) {
    ws();
    if (p_ >= s_.size() || s_[p_] != c) error(fmt::format("expected '{}', found {}", c, describe()));
    ++p_;
  }

  unsigned hex4() {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      char c = peek();
      unsigned d;
      if (c >= '0' && c <= '9') d = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') d = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = static_cast<unsigned>(c - 'A' + 10);
      else error(fmt::format("bad \\u escape: expected a hex digit, found {}", describe()));
      v = v * 16 + d;
    }
    return v;
  }

  std::string string(const char* what) {
    ws();
    if (peek() != '"') error(fmt::format("expected {} (a JSON string), found {}", what, describe()));
    ++p_;
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) error("unterminated string");
      auto c = static_cast<unsigned char>(s_[p_]);
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c == '\\') {
        ++p_;
        char e = peek();
        ++p_;
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            std::uint32_t cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) error(fmt::format("lone low surrogate \\u{:04x} in a string", cp));
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (peek() != '\\' || p_ + 1 >= s_.size() || s_[p_ + 1] != 'u')
                error(fmt::format("high surrogate \\u{:04x} is not followed by a low surrogate", cp));
              p_ += 2;
              std::uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF)
                error(fmt::format("high surrogate \\u{:04x} is followed by \\u{:04x}, not a low surrogate", cp, lo));
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, cp);
            break;
          }
          default: --p_; error(fmt::format("invalid escape '\\' followed by {}", describe()));
        }
        continue;
      }
      if (c < 0x20) error(fmt::format("unescaped control character 0x{:02x} in a string", c));
      std::size_t n = utf8_seq_len(reinterpret_cast<const unsigned char*>(s_.data()) + p_, s_.size() - p_);
      if (n == 0) error(fmt::format("invalid UTF-8 (byte 0x{:02x}) in a string", c));
      out.append(s_.data() + p_, n);
      p_ += n;
    }
  }

  std::uint64_t uint(const char* what) {
    ws();
    char c = peek();
    if (c < '0' || c > '9') error(fmt::format("expected {} (a non-negative integer), found {}", what, describe()));
    std::size_t start = p_;
    std::uint64_t v = 0;
    while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') {
      auto d = static_cast<std::uint64_t>(s_[p_] - '0');
      if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
        error_at(start, fmt::format("{} does not fit in 64 bits", what));
      v = v * 10 + d;
      ++p_;
    }
    if (s_[start] == '0' && p_ - start > 1) error_at(start, fmt::format("{} has a leading zero", what));
    c = peek();
    if (c == '.' || c == 'e' || c == 'E') error(fmt::format("{} must be an integer, found {}", what, describe()));
    return v;
  }

  std::vector<std::uint64_t> uint_array(const char* what, std::size_t max_len, const std::string& name) {
    expect('[');
    std::vector<std::uint64_t> v;
    items(
        ']',
        [&] {
          if (v.size() == max_len)
            error(fmt::format("tensor {}: {} has more than {} entries", shown(name), what, max_len));
          v.push_back(uint(what));
        },
        [&] { return fmt::format("in {}", what); });
    return v;
  }

  void metadata(std::map<std::string, std::string>& out) {
    expect('{');
    items(
        '}',
        [&] {
          std::size_t key_pos = p_;
          std::string key = string("a __metadata__ key");
          expect(':');
          ws();
          if (peek() != '"')
            error(fmt::format("__metadata__ value for {} must be a string, found {}", shown(key), describe()));
          std::string value = string("a __metadata__ value");
          if (!out.emplace(std::move(key), std::move(value)).second) error_at(key_pos, "duplicate __metadata__ key");
        },
        [] { return std::string("in __metadata__"); });
  }

  TensorEntry tensor(const std::string& name) {
    TensorEntry e;
    e.name = name;
    ws();
    if (peek() != '{')
      error(fmt::format("the entry for tensor {} must be an object, found {}", shown(name), describe()));
    ++p_;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    items(
        '}',
        [&] {
          std::size_t key_pos = p_;
          std::string key = string("a field name");
          expect(':');
          auto dup = [&](bool& flag) {
            if (flag) error_at(key_pos, fmt::format("tensor {} has a duplicate field {}", shown(name), shown(key)));
            flag = true;
          };
          if (key == "dtype") {
            dup(have_dtype);
            ws();
            std::size_t pos = p_;
            std::string d = string("the dtype");
            const StDTypeInfo* info = find_st_dtype(d);
            if (!info)
              error_at(pos, fmt::format("tensor {} has unknown dtype {} (known: BOOL, U8, I8, U16, I16, U32, I32, "
                                        "U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2)",
                                        shown(name), shown(d)));
            e.dtype = info->dtype;
          } else if (key == "shape") {
            dup(have_shape);
            std::size_t pos = p_;
            auto dims = uint_array("the shape", kSafetensorsMaxDims, name);
            for (auto d : dims)
              if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                error_at(pos,
                         fmt::format("tensor {} has dimension {} in its shape, larger than 2^63 - 1", shown(name), d));
            e.shape.assign(dims.begin(), dims.end());
          } else if (key == "data_offsets") {
            dup(have_offsets);
            std::size_t pos = p_;
            auto off = uint_array("data_offsets", 3, name);
            if (off.size() != 2)
              error_at(pos, fmt::format("tensor {}: data_offsets must be [begin, end], found {} numbers", shown(name),
                                        off.size()));
            e.begin = off[0];
            e.end = off[1];
          } else {
            error_at(key_pos, fmt::format("tensor {} has an unknown field {} (expected dtype, shape, data_offsets)",
                                          shown(name), shown(key)));
          }
        },
        [&] { return fmt::format("in the entry for tensor {}", shown(name)); });
    const char* missing = !have_dtype ? "dtype" : !have_shape ? "shape" : !have_offsets ? "data_offsets" : nullptr;
    if (missing) error(fmt::format("tensor {} has no '{}' field", shown(name), missing));
    return e;
  }

  std::string_view s_;
  std::string_view where_;
  std::size_t p_ = 0;
};

std::uint64_t load_u64_le(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

template <typename T>
T load_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  if constexpr (std::endian::native == std::endian::big && sizeof(T) > 1) {
    unsigned char b[sizeof(T)];
    for (std::size_t i = 0; i < sizeof(T); ++i) b[i] = p[sizeof(T) - 1 - i];
    std::memcpy(&v, b, sizeof(T));
  }
  return v;
}

// Converts n elements at `src` (file bytes) into `dst` (kiln's element type), element index `first`
// for messages.
void convert(const TensorEntry& e, const unsigned char* src, std::size_t n, unsigned char* dst, std::uint64_t first,
             std::string_view where) {
  auto put = [&](auto v, std::size_t i) { std::memcpy(dst + i * sizeof(v), &v, sizeof(v)); };
  switch (e.dtype) {
    case StDType::BOOL:
      for (std::size_t i = 0; i < n; ++i) dst[i] = src[i] != 0;
      break;
    case StDType::U8:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{src[i]}, i);
      break;
    case StDType::I8:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{static_cast<std::int8_t>(src[i])}, i);
      break;
    case StDType::U16:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{load_le<std::uint16_t>(src + 2 * i)}, i);
      break;
    case StDType::I16:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{load_le<std::int16_t>(src + 2 * i)}, i);
      break;
    case StDType::U32:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{load_le<std::uint32_t>(src + 4 * i)}, i);
      break;
    case StDType::I32:
      for (std::size_t i = 0; i < n; ++i) put(std::int64_t{load_le<std::int32_t>(src + 4 * i)}, i);
      break;
    case StDType::U64:
      for (std::size_t i = 0; i < n; ++i) {
        auto v = load_le<std::uint64_t>(src + 8 * i);
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          fail(where, fmt::format("tensor {} (U64) element {} is {}, which does not fit kiln's int64", shown(e.name),
                                  first + i, v));
        put(static_cast<std::int64_t>(v), i);
      }
      break;
    case StDType::I64:
      for (std::size_t i = 0; i < n; ++i) put(load_le<std::int64_t>(src + 8 * i), i);
      break;
    case StDType::F16:
    case StDType::BF16:  // kept as they are: the bits of kiln's float16 / bfloat16
      for (std::size_t i = 0; i < n; ++i) put(load_le<std::uint16_t>(src + 2 * i), i);
      break;
    case StDType::F32:
      for (std::size_t i = 0; i < n; ++i) put(load_le<float>(src + 4 * i), i);
      break;
    case StDType::F64:
      for (std::size_t i = 0; i < n; ++i) put(load_le<double>(src + 8 * i), i);
      break;
    default:
      fail(where, fmt::format("tensor {}: dtype {} cannot be loaded", shown(e.name), st_dtype_info(e.dtype).name));
  }
}

void json_string(std::string& out, std::string_view s, const char* what) {
  if (!is_valid_utf8(s)) fail_save(fmt::format("{} {} is not valid UTF-8", what, shown(s)));
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20) out += fmt::format("\\u{:04x}", c);
    else out += ch;
  }
  out += '"';
}

}  // namespace

void MemorySource::read(std::uint64_t offset, void* dst, std::size_t n) {
  if (offset > size_ || n > size_ - offset)
    throw Error(
        fmt::format("[load_safetensors] read of {} bytes at {} is outside the {}-byte buffer", n, offset, size_));
  if (n) std::memcpy(dst, data_ + offset, n);
}

const StDTypeInfo* find_st_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return &d;
  return nullptr;
}

const StDTypeInfo& st_dtype_info(StDType d) { return kDTypes[static_cast<std::size_t>(d)]; }

std::string_view st_dtype_name(DType d) {
  switch (d) {
    case DType::Bool: return "BOOL";
    case DType::Int64: return "I64";
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::BFloat16: return "BF16";
    case DType::Float16: return "F16";
  }
  return "?";
}

bool is_valid_utf8(std::string_view s) {
  auto p = reinterpret_cast<const unsigned char*>(s.data());
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = utf8_seq_len(p + i, s.size() - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

SafetensorsHeader read_header(ByteSource& src, std::string_view where) {
  const std::uint64_t size = src.size();
  if (size == 0) fail(where, "the file is empty");
  if (size < 8) fail(where, fmt::format("the file is {} bytes, too short for the 8-byte header length", size));
  unsigned char len_bytes[8];
  src.read(0, len_bytes, 8);
  const std::uint64_t n = load_u64_le(len_bytes);
  if (n > kSafetensorsMaxHeader)
    fail(where, fmt::format("header length {} exceeds the limit of {} bytes", n, kSafetensorsMaxHeader));
  if (n > size - 8)
    fail(where,
         fmt::format("header length {} runs past the end of the file ({} bytes follow the length)", n, size - 8));
  std::string text(static_cast<std::size_t>(n), '\0');
  src.read(8, text.data(), text.size());
  // The format's header is a JSON object starting at its first byte (trailing spaces pad it).
  if (!text.empty() && text[0] != '{')
    fail(where, fmt::format("the header must begin with '{{', got byte 0x{:02x}", static_cast<unsigned char>(text[0])));

  SafetensorsHeader h;
  HeaderParser(text, where).parse(h);
  h.data_start = 8 + n;
  h.data_size = size - h.data_start;

  for (const auto& e : h.tensors) {
    const auto& info = st_dtype_info(e.dtype);
    if (e.begin > e.end)
      fail(where,
           fmt::format("tensor {} has data_offsets [{}, {}]: begin is after end", shown(e.name), e.begin, e.end));
    if (e.end > h.data_size)
      fail(where, fmt::format("tensor {} has data_offsets [{}, {}], past the end of the {}-byte data buffer",
                              shown(e.name), e.begin, e.end, h.data_size));
    // kiln computes strides as products of max(dim, 1) in int64, so those must not overflow even
    // when a zero dim makes the tensor empty.
    bool zero = false;
    std::int64_t span = 1;
    std::uint64_t bytes = 0;
    for (auto d : e.shape) {
      zero = zero || d == 0;
      if (__builtin_mul_overflow(span, std::max<std::int64_t>(d, 1), &span))
        fail(where,
             fmt::format("tensor {} has shape {}, whose size overflows 64 bits", shown(e.name), dims_str(e.shape)));
    }
    if (!zero && __builtin_mul_overflow(static_cast<std::uint64_t>(span), info.itemsize, &bytes))
      fail(where, fmt::format("tensor {} ({}, shape {}) has a byte size that overflows 64 bits", shown(e.name),
                              info.name, dims_str(e.shape)));
    if (bytes != e.end - e.begin)
      fail(where, fmt::format("tensor {} ({}, shape {}) needs {} bytes but data_offsets [{}, {}] hold {}",
                              shown(e.name), info.name, dims_str(e.shape), bytes, e.begin, e.end, e.end - e.begin));
  }

  // The tensors must tile the buffer: sorted by offset, each starts where the previous ended.
  std::vector<std::size_t> order(h.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto &x = h.tensors[a], &y = h.tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  std::uint64_t expected = 0;
  const TensorEntry* prev = nullptr;
  for (std::size_t i : order) {
    const auto& e = h.tensors[i];
    if (e.begin < expected)
      fail(where, fmt::format("tensor {} data_offsets [{}, {}] overlap tensor {} [{}, {}]", shown(e.name), e.begin,
                              e.end, shown(prev->name), prev->begin, prev->end));
    if (e.begin > expected)
      fail(where, fmt::format("bytes [{}, {}) of the data buffer belong to no tensor (a gap before tensor {})",
                              expected, e.begin, shown(e.name)));
    expected = e.end;
    prev = &e;
  }
  if (expected != h.data_size)
    fail(where, fmt::format("the data buffer has {} bytes but the tensors cover {}: {} trailing bytes", h.data_size,
                            expected, h.data_size - expected));

  for (const auto& e : h.tensors)
    if (!st_dtype_info(e.dtype).loadable)
      fail(where, fmt::format("tensor {} has dtype {}, which kiln cannot load (it loads BOOL, U8-U64, I8-I64, F16, "
                              "BF16, F32, F64)",
                              shown(e.name), st_dtype_info(e.dtype).name));
  return h;
}

void read_tensor_data(ByteSource& src, const SafetensorsHeader& header, std::string_view where,
                      const std::function<void*(const TensorEntry&)>& dest) {
  constexpr std::size_t kChunk = 1 << 16;  // a multiple of every itemsize
  std::vector<unsigned char> scratch;
  for (const auto& e : header.tensors) {
    auto* dst = static_cast<unsigned char*>(dest(e));
    const auto& info = st_dtype_info(e.dtype);
    const std::uint64_t nbytes = e.end - e.begin, offset = header.data_start + e.begin;
    if (nbytes == 0) continue;
    bool same_layout = std::endian::native == std::endian::little &&
                       (e.dtype == StDType::F32 || e.dtype == StDType::F64 || e.dtype == StDType::I64 ||
                        e.dtype == StDType::F16 || e.dtype == StDType::BF16);
    if (same_layout) {
      src.read(offset, dst, static_cast<std::size_t>(nbytes));
      continue;
    }
    const std::size_t out_item = itemsize(info.kiln_dtype);
    scratch.resize(std::min<std::uint64_t>(kChunk, nbytes));
    for (std::uint64_t done = 0; done < nbytes;) {
      std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, nbytes - done));
      src.read(offset + done, scratch.data(), len);
      std::uint64_t first = done / info.itemsize;
      convert(e, scratch.data(), len / info.itemsize, dst + first * out_item, first, where);
      done += len;
    }
  }
}

std::string build_header(const std::vector<TensorEntry>& entries, const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      json_string(h, k, "metadata key");
      h += ':';
      json_string(h, v, "metadata value");
    }
    h += '}';
  }
  std::vector<std::string_view> names;
  for (const auto& e : entries) {
    if (e.name == "__metadata__") fail_save("'__metadata__' is reserved by the format and cannot name a tensor");
    names.push_back(e.name);
    if (h.size() > 1) h += ',';
    json_string(h, e.name, "tensor name");
    h += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[", st_dtype_info(e.dtype).name);
    for (std::size_t i = 0; i < e.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(e.shape[i]);
    }
    h += fmt::format("],\"data_offsets\":[{},{}]}}", e.begin, e.end);
  }
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) fail_save(fmt::format("duplicate tensor name {}", shown(*dup)));
  h += '}';
  // Pad with spaces (JSON whitespace) so the data buffer starts at a multiple of 8.
  h.append((8 - (h.size() % 8)) % 8, ' ');
  return h;
}

}  // namespace kiln::io::detail
