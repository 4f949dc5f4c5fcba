#pragma once
/// The safetensors byte format without kiln::Tensor: header parsing and validation (for
/// untrusted files), element conversion, and header writing. io/safetensors.hpp builds the
/// public API on it; the libFuzzer target (tests/fuzz/) compiles this file alone.
///
/// A file is: u64 little-endian N, N bytes of UTF-8 JSON (the header), then the data buffer.
///   {"__metadata__": {"k": "v"}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
/// Offsets are relative to the buffer start; the tensors tile the buffer exactly.
///
///   detail::MemorySource src(bytes.data(), bytes.size());
///   auto header = detail::read_header(src, "<memory>");        // throws kiln::Error
///   detail::read_tensor_data(src, header, "<memory>", [](const detail::TensorEntry& e) { return dst; });
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/shape.hpp"

namespace kiln::io::detail {

/// Largest header accepted (the reference implementation's limit).
inline constexpr std::uint64_t kSafetensorsMaxHeader = 100'000'000;
/// Most dims a tensor may have (keeps a hostile header from allocating 8 bytes per shape digit).
inline constexpr std::size_t kSafetensorsMaxDims = 64;

/// The element types of the safetensors format. Those with `kiln_dtype` set load (possibly
/// converted); the 8-bit floats are known but rejected with a clear message.
enum class StDType : std::uint8_t { BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

struct StDTypeInfo {
  StDType dtype;
  std::string_view name;  // as written in the header: "F32"
  std::size_t itemsize;
  bool loadable;
  DType kiln_dtype;  // what it becomes in kiln (when loadable)
};

/// Info for a header dtype name; null when the name is unknown.
const StDTypeInfo* find_st_dtype(std::string_view name);
const StDTypeInfo& st_dtype_info(StDType d);
/// The format's name for a kiln dtype: float32 -> "F32", bool -> "BOOL".
std::string_view st_dtype_name(DType d);

struct TensorEntry {
  std::string name;
  StDType dtype = StDType::F32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data buffer
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;  // absolute file offset of the buffer
  std::uint64_t data_size = 0;
};

/// Where the bytes come from. read() fills exactly n bytes at offset or throws.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual std::uint64_t size() const = 0;
  virtual void read(std::uint64_t offset, void* dst, std::size_t n) = 0;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(const void* data, std::size_t size) : data_(static_cast<const unsigned char*>(data)), size_(size) {}
  std::uint64_t size() const override { return size_; }
  void read(std::uint64_t offset, void* dst, std::size_t n) override;

 private:
  const unsigned char* data_;
  std::size_t size_;
};

/// Reads and validates the length prefix and the header: strict JSON, known dtypes, shapes that
/// match byte counts, offsets that tile the buffer up to the end of the source. Every problem is a
/// kiln::Error "[load_safetensors] <where>: ..." naming the offending values.
SafetensorsHeader read_header(ByteSource& src, std::string_view where);

/// Reads every tensor of a validated header. `dest(entry)` returns memory for
/// numel * itemsize(kiln dtype) bytes; the data is converted into it (F16/BF16 -> float32,
/// integers -> int64, BOOL bytes -> 0/1).
void read_tensor_data(ByteSource& src, const SafetensorsHeader& header, std::string_view where,
                      const std::function<void*(const TensorEntry&)>& dest);

/// The header text for tensors laid out back to back in `entries` order (offsets are set by the
/// caller), padded with spaces so the data buffer starts 8-byte aligned. Throws
/// "[save_safetensors] ..." for names or metadata that are not valid UTF-8 or are reserved.
std::string build_header(const std::vector<TensorEntry>& entries, const std::map<std::string, std::string>& metadata);

/// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace kiln::io::detail
