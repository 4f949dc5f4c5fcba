// Run logs (kiln::io): the TensorBoard event file's bytes checked against bytes derived by hand
// from the record and protobuf specs, the histogram buckets, the CSV metrics log (resume, bad
// rows, a full disk), the progress display's lines, nice chart ticks and the PNG chart.
#include <kiln/io/io.hpp>

#include <kiln/io/tfevents.hpp>
#include "io/st_test_util.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

std::string hex(const std::string& s) {
  std::string h;
  for (unsigned char c : s) h += fmt::format("{:02x}", c);
  return h;
}

// CRC-32C bit by bit (reflected polynomial 0x82f63b78): independent of the table/SSE4.2 code.
std::uint32_t crc32c_reference(const std::string& s) {
  std::uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

std::uint32_t le32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("tfevents: masked CRC-32C and record framing match bytes derived from the spec") {
  // The mask: rotate right by 15, add 0xa282ead8. CRC-32C("") = 0, so the mask alone shows.
  CHECK(io::detail::masked_crc32c("", 0) == 0xa282ead8u);
  const std::string digits = "123456789";  // CRC-32C check value 0xe3069283
  const std::uint32_t c = 0xe3069283u;
  CHECK(io::detail::masked_crc32c(digits.data(), digits.size()) == ((c >> 15 | c << 17) + 0xa282ead8u));

  // Event{wall_time 1.0, step 3, summary{value{tag "loss", simple_value 0.5f}}}, field by field:
  // 09 + double 1.0 | 10 03 | 2a 0d (summary) 0a 0b (value) 0a 04 "loss" 15 + float 0.5.
  const std::string event = io::detail::scalar_event("loss", 0.5f, 3, 1.0);
  CHECK(hex(event) == "09000000000000f03f10032a0d0a0b0a046c6f7373150000003f");
  // Framing: uint64 length 26, masked CRC of those 8 bytes, the event, masked CRC of the event.
  const std::string record = io::detail::frame_record(event);
  CHECK(hex(record) == "1a00000000000000129bd82d09000000000000f03f10032a0d0a0b0a046c6f7373150000003f7fb84377");
  auto masked = [](std::uint32_t v) { return (v >> 15 | v << 17) + 0xa282ead8u; };
  CHECK(le32(record, 8) == masked(crc32c_reference(record.substr(0, 8))));
  CHECK(le32(record, record.size() - 4) == masked(crc32c_reference(event)));

  // The first record of every file: Event{wall_time, file_version "brain.Event:2"}.
  CHECK(hex(io::detail::version_event(1.0)) == "09000000000000f03f1a0d627261696e2e4576656e743a32");
  // A negative step is an int64 varint: ten bytes, two's complement.
  CHECK(hex(io::detail::scalar_event("a", 0.f, -1, 0.0)).find("10ffffffffffffffffff01") != std::string::npos);
}

TEST_CASE("tfevents: histogram buckets hold the counts up to each limit") {
  auto h = io::detail::make_histogram({0, 1, 1, 2, 3, 4}, 4);  // width 1: [0,1) [1,2) [2,3) [3,4]
  CHECK(h.min == 0);
  CHECK(h.max == 4);
  CHECK(h.num == 6);
  CHECK(h.sum == 11);
  CHECK(h.sum_squares == 31);
  CHECK(h.bucket_limit == std::vector<double>{1, 2, 3, 4});
  CHECK(h.bucket == std::vector<double>{1, 2, 1, 2});
  auto one = io::detail::make_histogram({2.5, 2.5}, 10);  // one value: one bucket
  CHECK(one.bucket_limit == std::vector<double>{2.5});
  CHECK(one.bucket == std::vector<double>{2});
  CHECK_KILN_ERROR(io::detail::make_histogram({}, 4), "[SummaryWriter::add_histogram] no values");
  CHECK_KILN_ERROR(io::detail::make_histogram({1.0, NAN}, 4), "value nan has no bucket");
  CHECK_KILN_ERROR(io::detail::make_histogram({1.0}, 0), "bins 0 is outside 1..10000");
}

TEST_CASE("SummaryWriter: a file named like TensorBoard's, every record framed with valid checksums") {
  const fs::path dir = ckt::temp_dir("tfevents") / "run";
  std::string path;
  {
    io::SummaryWriter tb(dir.string());
    path = tb.path();
    tb.add_scalar("loss", 0.5, 3, 1.0);
    tb.add_histogram("w", tensor(std::vector<float>{1, 2, 2, 3}, {2, 2}), 3, 3, 1.0);
    tb.close();
    CHECK_KILN_ERROR(tb.add_scalar("loss", 1, 4), "the writer was closed");
  }
  const std::string name = fs::path(path).filename().string();
  CHECK(name.rfind("events.out.tfevents.", 0) == 0);
  CHECK(fs::path(path).parent_path() == dir);
  const std::string bytes = read_file(path);
  std::vector<std::string> events;
  for (std::size_t at = 0; at < bytes.size();) {
    REQUIRE(at + 12 <= bytes.size());
    const std::uint64_t n = le32(bytes, at) | std::uint64_t(le32(bytes, at + 4)) << 32;
    CHECK(le32(bytes, at + 8) == io::detail::masked_crc32c(bytes.data() + at, 8));
    REQUIRE(at + 16 + n <= bytes.size());
    events.push_back(bytes.substr(at + 12, n));
    CHECK(le32(bytes, at + 12 + n) == io::detail::masked_crc32c(events.back().data(), n));
    at += 16 + n;
  }
  REQUIRE(events.size() == 3);
  CHECK(events[0].find("brain.Event:2") != std::string::npos);
  CHECK(events[1] == io::detail::scalar_event("loss", 0.5f, 3, 1.0));
  CHECK(events[2] == io::detail::histogram_event("w", io::detail::make_histogram({1, 2, 2, 3}, 3), 3, 1.0));
  CHECK_KILN_ERROR(io::SummaryWriter("/dev/null/run"), "/dev/null/run: cannot create the folder");
}

TEST_CASE("MetricsLog: CSV rows, the printed line, resume, and a full disk") {
  const fs::path dir = ckt::temp_dir("metrics_log");
  const std::string csv = (dir / "log.csv").string();
  {
    io::MetricsLog log(csv, {"step", "train_loss", "val_loss"});
    CHECK(log.row({10, 2.5, 2.75}) == "step    10  train_loss 2.5  val_loss 2.75");
    log.row({20, 1.25, 1.5});
    CHECK(log.column("val_loss") == std::vector<double>{2.75, 1.5});
    CHECK_KILN_ERROR(log.row({30, 1.0}), "[MetricsLog::row] 2 values for the 3 columns step, train_loss, val_loss");
    CHECK_KILN_ERROR(log.column("lr"), "no column 'lr'");
    log.close();
  }
  CHECK(read_file(csv) == "step,train_loss,val_loss\n10,2.5,2.75\n20,1.25,1.5\n");
  {
    io::MetricsLog resumed(csv, {"step", "train_loss", "val_loss"}, /*resume_before=*/15);
    REQUIRE(resumed.rows().size() == 1);  // the row of step 20 came after the checkpoint
    resumed.row({20, 1.0, 1.0});
  }
  CHECK(read_file(csv) == "step,train_loss,val_loss\n10,2.5,2.75\n20,1,1\n");
  io::MetricsLog memory_only("", {"step", "acc"});  // no file: rows are still kept
  memory_only.row({1, 0.5});
  CHECK(memory_only.rows().size() == 1);
  CHECK_KILN_ERROR(io::MetricsLog(csv, {"step", "a,b"}), "column name 'a,b'");
  CHECK_KILN_ERROR(io::MetricsLog((dir / "missing" / "log.csv").string(), {"step"}), "cannot create the file");
  if (fs::exists("/dev/full")) {
    // The header fits the stream's buffer; the flush of the first row reaches the device.
    CHECK_KILN_ERROR(io::MetricsLog("/dev/full", {"step", "loss"}).row({1, 2}), "/dev/full: writing failed");
  }
}

TEST_CASE("Progress: plain lines with the elapsed time and an ETA when not on a terminal") {
  std::FILE* out = std::tmpfile();
  REQUIRE(out != nullptr);
  {
    io::Progress bar(10, /*every=*/5, /*first=*/0, out);
    for (int s = 1; s <= 10; ++s) bar.step(s, "loss 1.0");
    bar.note("evaluated");
    bar.finish();
  }
  std::rewind(out);
  std::string text;
  for (int ch; (ch = std::fgetc(out)) != EOF;) text += char(ch);
  std::fclose(out);
  CHECK(text.find("step  5/10  loss 1.0  (0:00 elapsed, 0:00 left)\n") != std::string::npos);
  CHECK(text.find("step 10/10  loss 1.0") != std::string::npos);
  CHECK(text.find("step  3/10") == std::string::npos);
  CHECK(text.find("evaluated\n") != std::string::npos);
  CHECK(io::format_duration(3725) == "1:02:05");
  CHECK(io::format_duration(65) == "1:05");
  CHECK_KILN_ERROR(io::Progress(0), "total 0 must be at least 1");
}

TEST_CASE("nice_ticks: steps of 1, 2 or 5 times a power of ten covering the range") {
  CHECK(io::nice_ticks(0, 2000) == std::vector<double>{0, 500, 1000, 1500, 2000});
  CHECK(io::nice_ticks(2.61, 3.95) == std::vector<double>{2.5, 3.0, 3.5, 4.0});  // 1.34 / 5 -> step 0.5
  const auto finer = io::nice_ticks(2.61, 3.95, 8);                              // 1.34 / 7 -> step 0.2
  REQUIRE(finer.size() == 8);
  for (std::size_t i = 0; i < finer.size(); ++i) CHECK(finer[i] == doctest::Approx(2.6 + 0.2 * double(i)));
  const auto small = io::nice_ticks(0.013, 0.087, 5);  // 0.074 / 4 -> step 0.02, 0 .. 0.1
  REQUIRE(small.size() == 6);
  CHECK(small.front() == 0.0);
  CHECK(small.back() == doctest::Approx(0.1));
  CHECK(io::nice_ticks(-1, 1, 3) == std::vector<double>{-1, 0, 1});
  CHECK(io::nice_ticks(3, 3).size() >= 2);  // a single value still gets an axis
  CHECK_KILN_ERROR(io::nice_ticks(1, NAN), "[nice_ticks] the range [1, nan]");
}

TEST_CASE("LineChart: a PNG of the requested size, or a clear error") {
  const fs::path dir = ckt::temp_dir("chart");
  io::LineChart chart("loss", "step", "nats");
  chart.size(400, 300).add("train", {1, 2, 3}, {3, 2, 1.5}).add("val", {1, 3}, {3.2, NAN}).hline("baseline", 2.5);
  CHECK_KILN_ERROR(chart.add("bad", {1, 2}, {1}), "[LineChart::add] series 'bad': 2 x values but 1 y values");
  CHECK_KILN_ERROR(chart.size(10, 10), "10 x 10 pixels");
  CHECK_KILN_ERROR(io::LineChart("empty").add("nan", {NAN}, {1}).write_png((dir / "e.png").string()),
                   "no series has a finite point");
  const std::string png = (dir / "loss.png").string();
  if (!io::charts_available()) {
    CHECK_KILN_ERROR(chart.write_png(png), "built without Cairo");
    return;
  }
  chart.write_png(png);
  const std::string bytes = read_file(png);
  REQUIRE(bytes.size() > 33);
  CHECK(bytes.substr(1, 3) == "PNG");
  auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  CHECK(bytes.substr(12, 4) == "IHDR");
  CHECK(be32(16) == 400);
  CHECK(be32(20) == 300);
  CHECK_KILN_ERROR(chart.write_png((dir / "missing" / "x.png").string()), "cannot write the image");
  if (fs::exists("/dev/full")) CHECK_KILN_ERROR(chart.write_png("/dev/full"), "/dev/full: cannot write the image");
}
