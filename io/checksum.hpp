#pragma once
// CRC-32C (Castagnoli), the per-tensor checksum kiln writes into safetensors metadata
// (io/safetensors.cpp). Internal: not installed.
//   std::uint32_t c = detail::crc32c(data, n);           // whole buffer
//   c = detail::crc32c(more, m, c);                      // continued over a second piece
#include <cstddef>
#include <cstdint>

namespace kiln::io::detail {

/// CRC-32C of `n` bytes, continuing from `crc` (0 to start). Uses the SSE4.2 instruction when the
/// CPU has it; the same values either way ("123456789" -> 0xe3069283).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

}  // namespace kiln::io::detail
