// kiln::data's ready datasets: IDX files (values, every kind of damage) and text windows.
#include <kiln/data/data.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "test_util.hpp"

using namespace kiln;
namespace data = kiln::data;
using namespace kt;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("kiln_data_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string write(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  return path.string();
}

// An IDX file: magic 0 0 type rank, big-endian u32 sizes, then `payload`.
std::string idx(int type, const std::vector<std::uint32_t>& dims, const std::string& payload) {
  std::string s = {0, 0, char(type), char(dims.size())};
  for (std::uint32_t d : dims)
    for (int b = 3; b >= 0; --b) s += char((d >> (8 * b)) & 0xff);
  return s + payload;
}

}  // namespace

TEST_CASE("data: read_idx decodes every IDX element type big-endian") {
  fs::path d = scratch("idx_types");
  Tensor u8 = data::read_idx(write(d / "u8", idx(0x08, {2, 3}, std::string("\x00\x01\x02\xfd\xfe\xff", 6))));
  expect_shape(u8, {2, 3});
  CHECK(u8.dtype() == kInt64);
  CHECK(u8.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 253, 254, 255});
  CHECK(data::read_idx(write(d / "i8", idx(0x09, {2}, "\x7f\x80"))).to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{127, -128});
  CHECK(
      data::read_idx(write(d / "i16", idx(0x0B, {2}, std::string("\x01\x02\xff\xfe", 4)))).to_vector<std::int64_t>() ==
      std::vector<std::int64_t>{258, -2});
  CHECK(
      data::read_idx(write(d / "i32", idx(0x0C, {1}, std::string("\xff\xff\xff\xfd", 4)))).to_vector<std::int64_t>() ==
      std::vector<std::int64_t>{-3});
  Tensor f32 = data::read_idx(write(d / "f32", idx(0x0D, {1}, std::string("\x3f\xc0\x00\x00", 4))));  // 1.5
  CHECK(f32.dtype() == kFloat32);
  CHECK(f32.item<float>() == 1.5f);
  Tensor f64 = data::read_idx(write(d / "f64", idx(0x0E, {1}, std::string("\xc0\x04\x00\x00\x00\x00\x00\x00", 8))));
  CHECK(f64.item<double>() == -2.5);
  expect_shape(data::read_idx(write(d / "empty", idx(0x08, {0, 28, 28}, ""))), {0, 28, 28});
  if (data::has_gzip() && std::system(("gzip -c " + (d / "u8").string() + " > " + (d / "u8.gz").string()).c_str()) == 0)
    CHECK(data::read_idx((d / "u8.gz").string()).to_vector<std::int64_t>() == u8.to_vector<std::int64_t>());
  fs::remove_all(d);
}

TEST_CASE("data: damaged IDX files are errors naming the file") {
  fs::path d = scratch("idx_bad");
  auto err = [&](const std::string& name, const std::string& bytes) { return data::read_idx(write(d / name, bytes)); };
  CHECK_KILN_ERROR(data::read_idx((d / "missing").string()),
                   ("[read_idx] " + (d / "missing").string() + ": cannot open the file").c_str());
  CHECK_KILN_ERROR(err("text", "not an idx file"), "text: not an IDX file (bad magic number)");
  CHECK_KILN_ERROR(err("short", std::string("\0", 1)), "short: not an IDX file");
  CHECK_KILN_ERROR(err("type", idx(0x07, {1}, "x")), "type: unknown IDX element type 0x07");
  CHECK_KILN_ERROR(err("rank0", idx(0x08, {}, "")), "rank0: IDX rank 0");
  CHECK_KILN_ERROR(err("header", idx(0x08, {5, 5}, "").substr(0, 9)),
                   "header: truncated IDX header: rank 2 needs 12 bytes, the file has 9");
  CHECK_KILN_ERROR(
      err("trunc", idx(0x08, {2, 3}, "abcd")),
      "trunc: the IDX header promises shape (2, 3) of 1-byte values, the file has 4 data bytes (truncated)");
  CHECK_KILN_ERROR(err("long", idx(0x08, {2}, "abc")), "(trailing bytes)");
  CHECK_KILN_ERROR(err("i16odd", idx(0x0B, {2}, "abc")), "i16odd: the IDX header promises shape (2,) of 2-byte values");
  // Sizes whose product overflows 64 bits must not wrap around to a small count.
  CHECK_KILN_ERROR(err("huge", idx(0x08, {0xffffffff, 0xffffffff, 0xffffffff}, "abc")), "(truncated)");
  std::string gz = "\x1f\x8b" + std::string("garbage that is no gzip stream");
  if (data::has_gzip()) CHECK_KILN_ERROR(err("bad.gz", gz), "bad.gz: ");
  else CHECK_KILN_ERROR(err("bad.gz", gz), "kiln was built without zlib");
  fs::remove_all(d);
}

TEST_CASE("data: IdxDataset pairs images in [0, 1] with labels, and checks them") {
  fs::path d = scratch("idx_ds");
  const std::string images = write(d / "img", idx(0x08, {3, 2, 2},
                                                  std::string("\x00\xff\x00\xff"
                                                              "\x33\x33\x33\x33"
                                                              "\x00\x00\x00\x00",
                                                              12)));
  const std::string labels = write(d / "lbl", idx(0x08, {3}, std::string("\x02\x00\x01", 3)));
  data::IdxDataset ds(images, labels, data::IdxDatasetOptions().num_classes(3));
  CHECK(ds.size() == 3);
  data::Example e = ds.get(1);
  expect_values(e[0], {0.2, 0.2, 0.2, 0.2});
  CHECK(e[0].dtype() == kFloat32);
  CHECK(e[1].item<std::int64_t>() == 0);
  expect_values(ds.get(0)[0], {0, 1, 0, 1});

  CHECK_KILN_ERROR(data::IdxDataset(images, labels, data::IdxDatasetOptions().num_classes(2)),
                   "lbl: label 2 (example 0) is out of range [0, 2)");
  const std::string two = write(d / "two", idx(0x08, {2}, std::string("\x00\x01", 2)));
  CHECK_KILN_ERROR(data::IdxDataset(images, two), ("img has 3 images but " + two + " has 2 labels").c_str());
  const std::string none = write(d / "none", idx(0x08, {0, 2, 2}, ""));
  CHECK_KILN_ERROR(data::IdxDataset(none, write(d / "nolabels", idx(0x08, {0}, ""))), "none: the file holds no images");
  const std::string flat = write(d / "flat", idx(0x08, {3}, "abc"));
  CHECK_KILN_ERROR(data::IdxDataset(flat, labels), "flat: images need shape (N, ...), got (3,)");
  const std::string floats = write(d / "floats", idx(0x0D, {1, 1}, std::string(4, '\0')));
  CHECK_KILN_ERROR(data::IdxDataset(floats, labels),
                   "floats: images must be unsigned bytes (IDX type 0x08), got type 0x0d");
  fs::remove_all(d);
}

TEST_CASE("data: text, character vocabulary and windows") {
  fs::path d = scratch("text");
  const std::string text = "hello world";
  write(d / "a.txt", text);
  CHECK(data::read_text((d / "a.txt").string()) == text);
  fs::create_directories(d / "folder");
  write(d / "folder" / "2", "second");
  write(d / "folder" / "1", "first ");
  write(d / "folder" / "1.dat", std::string("\0\1", 2));
  CHECK(data::read_text((d / "folder").string()) == "first second");
  CHECK_KILN_ERROR(data::read_text((d / "nope").string()), "nope: no such file or folder");
  CHECK_KILN_ERROR(data::read_text(write(d / "bin", std::string("ab\0c", 4))),
                   "bin: not a text file (a NUL byte at offset 2)");
  CHECK_KILN_ERROR(data::read_text(write(d / "empty", "")), "empty: the file is empty");
  fs::create_directories(d / "binaries");
  write(d / "binaries" / "x", std::string("\0", 1));
  CHECK_KILN_ERROR(data::read_text((d / "binaries").string()), "binaries: the folder has no text files");
  fs::remove_all(d);

  data::CharVocab vocab(text);
  CHECK(vocab.chars() == " dehlorw");
  Tensor ids = vocab.encode(text);
  CHECK(vocab.decode(ids.to_vector<std::int64_t>()) == text);
  CHECK(vocab.id('h') == 3);
  CHECK_KILN_ERROR(vocab.encode("hi"),
                   "[CharVocab] character \"i\" (byte 105) is not in the vocabulary of 8 characters");
  CHECK_KILN_ERROR(vocab.decode({8}), "[CharVocab] token id 8 is out of range for a vocabulary of 8 characters");

  data::TextWindows w(ids, 4);
  CHECK(w.size() == 7);  // 11 tokens: windows start at 0..6
  data::Example e = w.get(6);
  CHECK(vocab.decode(e[0].to_vector<std::int64_t>()) == "worl");
  CHECK(vocab.decode(e[1].to_vector<std::int64_t>()) == "orld");
  CHECK_KILN_ERROR(w.get(7), "[TextWindows] index 7 is out of range for a dataset of 7 examples");
  data::TextWindows strided(ids, 4, 3);
  CHECK(strided.size() == 3);  // starts 0, 3, 6
  CHECK(vocab.decode(strided.get(2)[0].to_vector<std::int64_t>()) == "worl");
  CHECK(data::TextWindows(ids, 11).size() == 0);
  CHECK(data::TextWindows(ids, 10).size() == 1);
  CHECK_KILN_ERROR(data::TextWindows(ids, 0), "[TextWindows] context must be >= 1, got 0");
  CHECK_KILN_ERROR(data::TextWindows(ids.to(kFloat32), 2),
                   "[TextWindows] tokens must be a 1-D int64 tensor, got float32 (11,)");
  // Through a loader: (batch, context) inputs and targets.
  data::DataLoader loader(std::make_shared<data::TextWindows>(ids, 4), data::DataLoaderOptions().batch_size(3));
  auto b = *loader.begin();
  expect_shape(b[0], {3, 4});
  expect_shape(b[1], {3, 4});
}
