// libFuzzer target for kiln's safetensors reader (io/safetensors_format.cpp), built with
// clang -fsanitize=fuzzer,address,undefined by .ci/fuzz. For every input:
//   - the reader either accepts it or throws kiln::Error "[load_safetensors] <fuzz>: ..."; any
//     other exception, crash, out-of-bounds access or UB is a finding;
//   - an accepted file's tensors are all read and converted;
//   - the header kiln would write for the accepted entries parses back to the same entries.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../io/safetensors_format.hpp"

using namespace kiln::io::detail;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "safetensors_fuzz: %s: %s\n", what, detail.c_str());
  std::abort();
}

std::uint64_t kiln_bytes(const TensorEntry& e) {
  std::uint64_t n = 1;
  for (auto d : e.shape) n *= static_cast<std::uint64_t>(d);  // validated: no overflow
  return n * kiln::itemsize(st_dtype_info(e.dtype).kiln_dtype);
}

bool same(const SafetensorsHeader& a, const SafetensorsHeader& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const auto &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin || x.end != y.end)
      return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  MemorySource src(data, size);
  SafetensorsHeader h;
  try {
    h = read_header(src, "<fuzz>");
    std::vector<std::vector<unsigned char>> out;
    read_tensor_data(src, h, "<fuzz>", [&](const TensorEntry& e) -> void* {
      out.emplace_back(kiln_bytes(e));
      return out.back().data();
    });
  } catch (const kiln::Error& e) {
    if (std::strncmp(e.what(), "[load_safetensors] <fuzz>: ", 27) != 0) finding("bad message", e.what());
    return 0;
  } catch (const std::exception& e) {
    finding("non-kiln exception", e.what());
  }

  // Re-encode the accepted header (same offsets, original data buffer) and read it again.
  std::string text;
  try {
    text = build_header(h.tensors, h.metadata);
  } catch (const std::exception& e) {
    finding("an accepted header cannot be written back", e.what());
  }
  std::vector<std::uint8_t> file(8);
  for (int i = 0; i < 8; ++i) file[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(text.size() >> (8 * i));
  file.insert(file.end(), text.begin(), text.end());
  file.insert(file.end(), data + h.data_start, data + size);
  MemorySource again(file.data(), file.size());
  try {
    if (!same(h, read_header(again, "<fuzz>"))) finding("round trip", "re-encoded header differs");
  } catch (const std::exception& e) {
    finding("re-encoded header rejected", e.what());
  }
  return 0;
}
