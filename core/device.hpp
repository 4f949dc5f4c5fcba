#pragma once
/// Where a tensor lives: `kiln::Device::cpu()` or `kiln::Device::cuda(0)`.
#include <string>

namespace kiln {

enum class DeviceType : unsigned char { CPU = 0, CUDA = 1 };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::CPU, 0}; }
  static constexpr Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  constexpr bool is_cpu() const { return type == DeviceType::CPU; }
  constexpr bool is_cuda() const { return type == DeviceType::CUDA; }
  constexpr bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  /// Parses "cpu", "cuda", "cuda:1"; throws kiln::Error otherwise.
  static Device parse(const std::string& s);
};

}  // namespace kiln
