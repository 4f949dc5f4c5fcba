#include "summary_writer.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "checksum.hpp"
#include "tfevents.hpp"

namespace kiln::io {
namespace detail {
namespace {

// Protocol buffers' wire format, the few pieces an Event needs: varints, 64-bit doubles,
// 32-bit floats and length-delimited fields (strings, nested messages, packed doubles).
void put_varint(std::string& out, std::uint64_t v) {
  for (; v >= 0x80; v >>= 7) out += char((v & 0x7f) | 0x80);
  out += char(v);
}
void put_key(std::string& out, int field, int wire_type) { put_varint(out, std::uint64_t(field) << 3 | wire_type); }
template <class T>
void put_fixed(std::string& out, int field, T v) {  // wire type 1 (8 bytes) or 5 (4 bytes), little-endian
  static_assert(sizeof(T) == 8 || sizeof(T) == 4);
  put_key(out, field, sizeof(T) == 8 ? 1 : 5);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));  // x86-64 and aarch64 are little-endian, as the format
  out.append(bytes, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_packed(std::string& out, int field, const std::vector<double>& v) {
  std::string body(v.size() * 8, '\0');
  if (!v.empty()) std::memcpy(body.data(), v.data(), body.size());
  put_bytes(out, field, body);
}

// Event (tensorflow/core/util/event.proto): wall_time = 1 (double), step = 2 (int64),
// file_version = 3 (string), summary = 5 (Summary). Summary: repeated Value value = 1.
// Summary.Value: tag = 1, simple_value = 2 (float), histo = 5 (HistogramProto).
std::string event(double wall_time, std::int64_t step, const std::string& tag, const std::string& value_fields) {
  std::string value;
  put_bytes(value, 1, tag);
  value += value_fields;
  std::string summary;
  put_bytes(summary, 1, value);
  std::string e;
  put_fixed(e, 1, wall_time);
  if (step != 0) put_key(e, 2, 0), put_varint(e, std::uint64_t(step));  // two's complement, as int64 varints are
  put_bytes(e, 5, summary);
  return e;
}

void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char(v >> (8 * i) & 0xff);
}

}  // namespace

std::uint32_t masked_crc32c(const void* data, std::size_t n) {
  const std::uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string frame_record(const std::string& data) {
  std::string out;
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(out.data(), 8), 4);
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

std::string version_event(double wall_time, const std::string& version) {
  std::string e;
  put_fixed(e, 1, wall_time);
  put_bytes(e, 3, version);
  return e;
}

std::string scalar_event(const std::string& tag, float value, std::int64_t step, double wall_time) {
  std::string v;
  put_fixed(v, 2, value);
  return event(wall_time, step, tag, v);
}

Histogram make_histogram(const std::vector<double>& values, int bins) {
  KILN_CHECK(!values.empty(), "SummaryWriter::add_histogram", "no values");
  KILN_CHECK(bins >= 1 && bins <= 10000, "SummaryWriter::add_histogram", "bins {} is outside 1..10000", bins);
  Histogram h;
  h.min = *std::min_element(values.begin(), values.end());
  h.max = *std::max_element(values.begin(), values.end());
  for (double v : values) {
    KILN_CHECK(std::isfinite(v), "SummaryWriter::add_histogram", "value {} has no bucket (non-finite)", v);
    h.sum += v, h.sum_squares += v * v;
  }
  h.num = double(values.size());
  if (h.max == h.min) bins = 1;  // every value in one bucket ending at that value
  const double width = (h.max - h.min) / bins;
  h.bucket.assign(bins, 0.0);
  for (int k = 0; k < bins; ++k) h.bucket_limit.push_back(k + 1 == bins ? h.max : h.min + width * (k + 1));
  for (double v : values)
    h.bucket[width > 0 ? std::min<std::size_t>(bins - 1, std::size_t((v - h.min) / width)) : 0] += 1;
  return h;
}

std::string histogram_event(const std::string& tag, const Histogram& h, std::int64_t step, double wall_time) {
  // HistogramProto: min 1, max 2, num 3, sum 4, sum_squares 5 (doubles), bucket_limit 6, bucket 7 (packed).
  std::string histo;
  put_fixed(histo, 1, h.min);
  put_fixed(histo, 2, h.max);
  put_fixed(histo, 3, h.num);
  put_fixed(histo, 4, h.sum);
  put_fixed(histo, 5, h.sum_squares);
  put_packed(histo, 6, h.bucket_limit);
  put_packed(histo, 7, h.bucket);
  std::string v;
  put_bytes(v, 5, histo);
  return event(wall_time, step, tag, v);
}

}  // namespace detail

namespace {

double now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// TensorBoard's naming: events.out.tfevents.<seconds>.<host>.<pid>.<n>, n counting the writers
// of this process so two writers started in the same second get different files.
std::string event_file_name() {
  static std::atomic<int> counter{0};
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  return fmt::format("events.out.tfevents.{:010d}.{}.{}.{}", static_cast<long long>(now()), host, getpid(), counter++);
}

}  // namespace

SummaryWriter::SummaryWriter(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  KILN_CHECK(!ec, "SummaryWriter", "{}: cannot create the folder: {}", log_dir, ec.message());
  path_ = (std::filesystem::path(log_dir) / event_file_name()).string();
  file_.open(path_, std::ios::binary);
  KILN_CHECK(file_.is_open(), "SummaryWriter", "{}: cannot create the event file: {}", path_, std::strerror(errno));
  write_record(detail::version_event(now()));
  flush();
}

SummaryWriter::~SummaryWriter() {
  if (file_.is_open()) file_.close();  // errors here have nobody to go to; close() reports them
}

void SummaryWriter::write_record(const std::string& event) {
  KILN_CHECK(file_.is_open(), "SummaryWriter", "{}: the writer was closed", path_);
  file_ << detail::frame_record(event);
  KILN_CHECK(file_.good(), "SummaryWriter", "{}: writing failed (disk full?)", path_);
}

void SummaryWriter::add_scalar(const std::string& tag, double value, std::int64_t step, double wall_time) {
  write_record(detail::scalar_event(tag, float(value), step, wall_time < 0 ? now() : wall_time));
}

void SummaryWriter::add_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step,
                                  int bins, double wall_time) {
  write_record(
      detail::histogram_event(tag, detail::make_histogram(values, bins), step, wall_time < 0 ? now() : wall_time));
}

void SummaryWriter::add_histogram(const std::string& tag, const Tensor& values, std::int64_t step, int bins,
                                  double wall_time) {
  add_histogram(tag, values.detach().to(Device::cpu(), kFloat64).flatten().to_vector<double>(), step, bins, wall_time);
}

void SummaryWriter::flush() {
  KILN_CHECK(file_.is_open(), "SummaryWriter", "{}: the writer was closed", path_);
  file_.flush();
  KILN_CHECK(file_.good(), "SummaryWriter", "{}: writing failed (disk full?)", path_);
}

void SummaryWriter::close() {
  if (!file_.is_open()) return;
  file_.close();
  KILN_CHECK(!file_.fail(), "SummaryWriter", "{}: closing failed: the last records may be lost (disk full?)", path_);
}

}  // namespace kiln::io
