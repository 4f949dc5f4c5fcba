#pragma once
/// Named tensors in the safetensors format (the format of Hugging Face's `safetensors` package,
/// readable by PyTorch through it): an 8-byte little-endian header length, a JSON header with
/// each tensor's dtype, shape and byte range plus free-form string metadata, then the data.
///
///   kiln::io::save_safetensors("w.safetensors", {{"w", w}, {"b", b}}, {{"epoch", "3"}});
///   auto f = kiln::io::load_safetensors("w.safetensors");
///   Tensor w2 = f.at("w");  f.metadata["epoch"];
///   kiln::nn::save(*model, "model.safetensors");          // Module::state_dict()
///   kiln::nn::load(*model, "model.safetensors");          // strict key check by default
///
/// Writing: kiln's dtypes become F32, F64, BF16, F16, I64, BOOL; tensors are written row-major from the
/// CPU; the file is replaced atomically (a temporary file in the same directory, fsync, rename,
/// fsync of the directory), so a crash mid-write leaves the previous file intact. A crashed
/// writer can leave a `.<name>.tmp.<pid>.<n>` file behind; nothing reads it, and the next save of
/// the same target removes it once process <pid> is gone. kiln adds a CRC-32C of each tensor's
/// bytes to the metadata (key `kiln.crc32c`, reserved) and verifies it on load ("tensor 'w' ...
/// fails its checksum"); files without it (Python's) load unchecked, and the key is not part of
/// the returned metadata. `SafetensorsSaveOptions().checksum(false)` leaves it out: a file read
/// from Python's safetensors (dtypes kiln keeps: F32, F64, BF16, F16, I64, BOOL) and saved back
/// with its tensors in file order and its metadata is then byte-identical to the original.
///
/// Reading treats the file as untrusted: header at most 100 MB beginning with '{', strict JSON (duplicate keys,
/// unknown fields, bad UTF-8 and non-integer numbers are errors), known dtypes, shapes whose byte
/// size (overflow-checked) matches the offsets, offsets that tile the data buffer exactly with no
/// gap, overlap or trailing byte. Anything else throws kiln::Error "[load_safetensors] <path>: ...".
/// F16 and BF16 load as float16 and bfloat16 (bit for bit), U8..U64 and I8..I32 as int64; F8
/// types are refused.
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/arg.hpp"
#include "../core/tensor.hpp"

namespace kiln {
namespace nn {
class Module;
struct LoadStateDictResult;
}  // namespace nn
}  // namespace kiln

namespace kiln::io {

/// What a safetensors file holds: tensors in header order, and the `__metadata__` strings.
struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata;

  bool contains(const std::string& name) const;
  /// The tensor named `name`; throws kiln::Error listing the names present when absent.
  const Tensor& at(const std::string& name) const;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct SafetensorsSaveOptions {
  /// Store a CRC-32C per tensor under the metadata key `kiln.crc32c` (verified on load).
  KILN_ARG(bool, checksum) = true;
};

/// Writes `tensors` (any device, dtype, layout; names unique UTF-8) and `metadata` to `path`.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      const SafetensorsSaveOptions& options = {});
/// The bytes save_safetensors would write.
std::vector<std::uint8_t> save_safetensors_to_buffer(const NamedTensors& tensors,
                                                     const std::map<std::string, std::string>& metadata = {},
                                                     const SafetensorsSaveOptions& options = {});

/// Reads a whole file onto the CPU.
SafetensorsFile load_safetensors(const std::string& path);
/// Reads from memory (the same checks; messages name the source as "<memory>").
SafetensorsFile load_safetensors_from_buffer(const void* data, std::size_t size);

}  // namespace kiln::io

// Module files keep the spelling nn::save / nn::load (as torch::save for modules): they are what
// a user reaches for next to Module::state_dict(), and io/ is where they are declared.
namespace kiln::nn {
/// Saves `module.state_dict()` (parameters and persistent buffers, dotted names).
void save(const Module& module, const std::string& path, const std::map<std::string, std::string>& metadata = {});
/// Loads a file written by nn::save (or by PyTorch's safetensors for a matching module) into
/// `module` with Module::load_state_dict: strict by default, errors "[nn::load] <path>: ...".
LoadStateDictResult load(Module& module, const std::string& path, bool strict = true);
/// The same for a module holder: `nn::save(model, path)`, `nn::load(model, path)`.
template <typename H>
requires std::is_base_of_v<Module, typename H::ContainedType>
void save(const H& holder, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  save(static_cast<const Module&>(*holder), path, metadata);
}
template <typename H>
requires std::is_base_of_v<Module, typename H::ContainedType>
auto load(const H& holder, const std::string& path, bool strict = true) {  // LoadStateDictResult
  // Through the dependent type, so the call resolves at instantiation, where LoadStateDictResult
  // is complete (clang rejects a non-dependent call returning an incomplete type).
  return load(static_cast<typename H::ContainedType&>(*holder.ptr()), path, strict);
}
}  // namespace kiln::nn

namespace kiln::io::detail {
/// Testing only: called by the writer after each chunk of bytes reaches the temporary file
/// (argument: bytes written so far, total bytes). The crash test pauses there and is killed.
using SafetensorsWriteHook = void (*)(std::uint64_t written, std::uint64_t total);
void set_safetensors_write_hook(SafetensorsWriteHook hook);
}  // namespace kiln::io::detail
