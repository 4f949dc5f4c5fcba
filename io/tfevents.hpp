#pragma once
// The bytes of TensorBoard event files, for io/summary_writer.cpp and its tests. Internal: not
// installed.
//   std::string event = detail::scalar_event("loss", 0.5f, 3, 1.0);   // an Event protobuf
//   std::string record = detail::frame_record(event);                 // TFRecord framing
#include <cstdint>
#include <string>
#include <vector>

namespace kiln::io::detail {

/// TFRecord's checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8.
std::uint32_t masked_crc32c(const void* data, std::size_t n);
/// uint64 length (little-endian), masked CRC of those 8 bytes, the data, masked CRC of the data.
std::string frame_record(const std::string& data);

/// Event{wall_time, step = 0, file_version}.
std::string version_event(double wall_time, const std::string& version = "brain.Event:2");
/// Event{wall_time, step, summary{value{tag, simple_value}}}.
std::string scalar_event(const std::string& tag, float value, std::int64_t step, double wall_time);

/// HistogramProto's fields: buckets hold counts of values <= bucket_limit (and above the previous limit).
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};
Histogram make_histogram(const std::vector<double>& values, int bins);
/// Event{wall_time, step, summary{value{tag, histo}}}.
std::string histogram_event(const std::string& tag, const Histogram& h, std::int64_t step, double wall_time);

}  // namespace kiln::io::detail
