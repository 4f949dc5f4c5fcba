// The safetensors reader and writer: round trips, the byte layout, files written by Python's
// safetensors and PyTorch (tools/safetensors_fixtures.py), the malformed corpus, and nn::save/load.
#include <cmath>
#include <cstdlib>
#include <kiln/io/checksum.hpp>
#include <kiln/io/safetensors_format.hpp>
#include <limits>
#include <set>
#include <sstream>

#include "st_test_util.hpp"

using namespace kiln;
using namespace kiln::io;
namespace fs = std::filesystem;

namespace {

NamedTensors mixed_tensors() {
  Tensor f32 = arange(0, 6, 1, TensorOptions(kFloat32)).reshape({2, 3}) * 0.5 - 1.0;
  return {
      {"f32", f32},
      {"f64", tensor({1.0 / 3.0, -0.0, 1e300, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()},
                     kFloat64)},
      {"i64", tensor(std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), -1, 0,
                                               std::numeric_limits<std::int64_t>::max()})},
      {"bool", tensor({true, false, false, true})},
      {"scalar", scalar_tensor(2.5, kFloat64)},
      {"empty", zeros({0, 5}, kInt64)},
      {"transposed", f32.t()},
      {"name \xc3\xbc \"q\"", tensor({7.0f})},
  };
}
const std::map<std::string, std::string> kMixedMetadata = {{"producer", "kiln"},
                                                           {"text", "caf\xc3\xa9 \"quoted\" \\ \n tab\t"}};

// Linear(3, 4) + LayerNorm(4) with values a Python check can write down.
nn::Sequential small_module() {
  nn::Sequential m(nn::Linear(3, 4), nn::LayerNorm(4));
  auto sd = m->state_dict();
  NoGradGuard ng;
  sd["0.weight"].copy_(arange(0, 12, 1, TensorOptions(kFloat32)).reshape({4, 3}) / 8.0);
  sd["0.bias"].copy_(tensor({-1.0f, 0.0f, 1.0f, 2.0f}));
  sd["1.weight"].fill_(1.5);
  sd["1.bias"].fill_(-0.25);
  return m;
}

void check_same(const SafetensorsFile& f, const NamedTensors& expect) {
  REQUIRE(f.tensors.size() == expect.size());
  for (std::size_t i = 0; i < expect.size(); ++i) {
    INFO("tensor " << expect[i].first);
    CHECK(f.tensors[i].first == expect[i].first);
    CHECK(ckt::bitwise_equal(f.tensors[i].second, expect[i].second));
  }
}

std::uint64_t le64(const std::vector<std::uint8_t>& b, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
  return v;
}

}  // namespace

TEST_CASE("safetensors: round trip of every kiln dtype with scalars and empty and non-contiguous tensors") {
  auto dir = ckt::temp_dir("st_roundtrip");
  auto tensors = mixed_tensors();
  save_safetensors((dir / "m.safetensors").string(), tensors, kMixedMetadata);
  SafetensorsFile f = load_safetensors((dir / "m.safetensors").string());
  check_same(f, tensors);
  CHECK(f.metadata == kMixedMetadata);
  CHECK(f.at("transposed").is_contiguous());
  // the in-memory variants agree with the file
  auto bytes = save_safetensors_to_buffer(tensors, kMixedMetadata);
  CHECK(bytes == ckt::read_bytes(dir / "m.safetensors"));
  check_same(load_safetensors_from_buffer(bytes.data(), bytes.size()), tensors);
  // tensors that require grad are saved by value
  Tensor w = randn({3}).requires_grad_();
  save_safetensors((dir / "g.safetensors").string(), {{"w", w * 2.0}});
  CHECK(ckt::bitwise_equal(load_safetensors((dir / "g.safetensors").string()).at("w"), (w * 2.0).detach()));
  // no tensors at all
  save_safetensors((dir / "none.safetensors").string(), {});
  auto none = load_safetensors((dir / "none.safetensors").string());
  CHECK(none.tensors.empty());
  CHECK(none.metadata.empty());
  fs::remove_all(dir);
}

TEST_CASE("safetensors: the bytes kiln writes follow the format") {
  Tensor a = tensor({1.0f, -2.0f});
  Tensor b = tensor(std::vector<std::int64_t>{3}, {1, 1});
  auto bytes = save_safetensors_to_buffer({{"a", a}, {"b", b}}, {{"k", "v"}});
  std::uint64_t n = le64(bytes, 0);
  std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  // kiln adds one CRC-32C per tensor (of the data bytes checked below) to the metadata
  std::string json = R"({"__metadata__":{"k":"v","kiln.crc32c":"aa36f2c9 576c35e3"},)"
                     R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]}})";
  CHECK((8 + n) % 8 == 0);  // the data buffer is 8-byte aligned
  CHECK(header.substr(0, json.size()) == json);
  CHECK(header.find_first_not_of(' ', json.size()) == std::string::npos);  // padding is spaces
  REQUIRE(bytes.size() == 8 + n + 16);
  const std::uint8_t* data = bytes.data() + 8 + n;
  std::vector<std::uint8_t> expect_a = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0};  // 1.0f, -2.0f little-endian
  CHECK(std::vector<std::uint8_t>(data, data + 8) == expect_a);
  CHECK(le64(bytes, 8 + n + 8) == 3);
  CHECK(io::detail::crc32c(data, 8) == 0xaa36f2c9u);
  CHECK(io::detail::crc32c(data + 8, 8) == 0x576c35e3u);
}

TEST_CASE("safetensors: kiln-written golden files are stable (tools/safetensors_fixtures.py loads them in PyTorch)") {
  // tools/safetensors_fixtures.py --check loads these two committed files with safetensors and
  // torch; this test keeps the writer from drifting away from what was checked there.
  auto mixed = save_safetensors_to_buffer(mixed_tensors(), kMixedMetadata);
  NamedTensors module_state;
  for (const auto& [k, t] : small_module()->state_dict()) module_state.emplace_back(k, t);
  auto module = save_safetensors_to_buffer(module_state);
  std::string d = ckt::data_dir();
  if (std::getenv("KILN_WRITE_GOLDENS")) {
    save_safetensors(d + "kiln_written.safetensors", mixed_tensors(), kMixedMetadata);
    nn::save(*small_module(), d + "kiln_module.safetensors");
  }
  CHECK(ckt::read_bytes(d + "kiln_written.safetensors") == mixed);
  CHECK(ckt::read_bytes(d + "kiln_module.safetensors") == module);
}

TEST_CASE("safetensors: a file written by Python safetensors loads with F16 BF16 kept and small ints converted") {
  SafetensorsFile f = load_safetensors(ckt::data_dir() + "python_written.safetensors");
  CHECK(f.metadata ==
        std::map<std::string, std::string>{{"format", "pt"}, {"note", "kiln fixture \xe2\x9c\x93 \"quoted\"\n"}});
  CHECK(f.tensors.size() == 12);
  Tensor f32 = f.at("f32");
  CHECK(f32.dtype() == kFloat32);
  kt::expect_shape(f32, {3, 4});
  std::vector<double> e;
  for (int i = 0; i < 12; ++i) e.push_back(i * 0.25 - 1.0);
  kt::expect_values(f32, e, 0, 0);

  const double inf = std::numeric_limits<double>::infinity();
  CHECK(f.at("f64").dtype() == kFloat64);
  CHECK(f.at("f64").to_vector<double>() == std::vector<double>{1.0 / 3.0, -2.5e-300, 1e300, -0.0, inf, -inf, 5e-324});
  std::vector<double> f16;
  for (int k = -8; k < 8; ++k) f16.push_back(k * 0.375);
  for (double v : {std::ldexp(1.0, -14), std::ldexp(1.0, -24), 65504.0, inf, -0.0, -std::ldexp(1.0, -20)})
    f16.push_back(v);
  CHECK(f.at("f16").dtype() == kFloat16);
  CHECK(f.at("f16").to_vector<double>() == f16);
  CHECK(std::signbit(f.at("f16").to_vector<double>()[20]));  // -0.0 keeps its sign
  CHECK(f.at("bf16").dtype() == kBFloat16);
  CHECK(f.at("bf16").to_vector<double>() ==
        std::vector<double>{1.0, -2.5, 3.140625, std::ldexp(1.0, 100), -std::ldexp(1.0, -130), 0.0});
  using V = std::vector<std::int64_t>;
  CHECK(f.at("i64").to_vector<std::int64_t>() == V{-(std::int64_t{1} << 62) - 3, -1, 0, (std::int64_t{1} << 62) + 5,
                                                   std::numeric_limits<std::int64_t>::max(),
                                                   std::numeric_limits<std::int64_t>::min()});
  CHECK(f.at("i32").dtype() == kInt64);
  CHECK(f.at("i32").to_vector<std::int64_t>() == V{-2147483648LL, 2147483647LL, 7});
  CHECK(f.at("i16").to_vector<std::int64_t>() == V{-32768, 32767, -2});
  CHECK(f.at("i8").to_vector<std::int64_t>() == V{-128, 127, 0});
  CHECK(f.at("u8").to_vector<std::int64_t>() == V{0, 255, 17});
  CHECK(f.at("bool").dtype() == kBool);
  CHECK(f.at("bool").to_vector<bool>() == std::vector<bool>{true, false, true});
  kt::expect_shape(f.at("scalar"), {});
  CHECK(f.at("scalar").item<float>() == 2.5f);
  kt::expect_shape(f.at("empty"), {0, 3});
}

TEST_CASE("safetensors: a file written by hand from the spec (U16 U32 U64 and whitespace and escapes) loads") {
  SafetensorsFile f = load_safetensors(ckt::data_dir() + "spec_written.safetensors");
  using V = std::vector<std::int64_t>;
  std::vector<std::string> names;
  for (const auto& [k, t] : f.tensors) names.push_back(k);
  // header order, not data order
  CHECK(names == std::vector<std::string>{"u16", "caf\xc3\xa9/\x01 \"q\"", "u32", "u64"});
  CHECK(f.at("u16").to_vector<std::int64_t>() == V{0, 65535, 300});
  CHECK(f.at("u32").to_vector<std::int64_t>() == V{0, 4294967295LL, 70000});
  CHECK(f.at("u64").to_vector<std::int64_t>() == V{0, std::numeric_limits<std::int64_t>::max(), 12345678901234LL});
  kt::expect_shape(f.at("u64"), {3, 1});
  CHECK(f.at("caf\xc3\xa9/\x01 \"q\"").to_vector<float>() == std::vector<float>{1.5f, -2.0f});
  CHECK(f.metadata == std::map<std::string, std::string>{{"\xc3\xbc"
                                                          "ber",
                                                          "\xf0\x9f\x98\x80 emoji"},
                                                         {"empty", ""}});
}

TEST_CASE("safetensors: a PyTorch module's state dict loads into the same kiln module and gives its output") {
  nn::Sequential m(nn::Linear(3, 4), nn::LayerNorm(4));
  auto r = nn::load(*m, ckt::data_dir() + "torch_module.safetensors");
  CHECK(r.missing_keys.empty());
  CHECK(r.unexpected_keys.empty());
  SafetensorsFile io = load_safetensors(ckt::data_dir() + "torch_module_io.safetensors");
  Tensor y = m(io.at("x"));
  kt::expect_values(y, io.at("y").to_vector<double>(), 1e-5, 1e-5);
}

TEST_CASE("safetensors: every malformed file in the corpus gets a load_safetensors error saying what is wrong") {
  std::ifstream manifest(ckt::data_dir() + "bad_cases.txt");
  REQUIRE(manifest.good());
  std::set<std::string> listed;
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string file, text;
    std::getline(fields, file, '\t');
    std::getline(fields, text, '\t');
    listed.insert(file);
    std::string path = ckt::data_dir() + file;
    INFO(file);
    try {
      load_safetensors(path);
      FAIL_CHECK("loaded without an error");
    } catch (const Error& e) {
      std::string msg = e.what();
      CHECK(msg.rfind("[load_safetensors] " + path + ": ", 0) == 0);
      CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
    }
    auto bytes = ckt::read_bytes(path);
    try {
      load_safetensors_from_buffer(bytes.data(), bytes.size());
      FAIL_CHECK("loaded from memory without an error");
    } catch (const Error& e) {
      std::string msg = e.what();
      CHECK(msg.rfind("[load_safetensors] <memory>: ", 0) == 0);
      CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
    }
  }
  std::set<std::string> present;
  for (const auto& entry : fs::directory_iterator(ckt::data_dir())) {
    std::string name = entry.path().filename().string();
    if (name.rfind("bad_", 0) == 0 && name != "bad_cases.txt") present.insert(name);
  }
  CHECK(listed.size() > 40);
  CHECK(present == listed);
}

TEST_CASE("safetensors: every truncation and many corruptions of a valid file fail cleanly") {
  auto bytes = ckt::read_bytes(ckt::data_dir() + "python_written.safetensors");
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    INFO("prefix of " << len << " bytes");
    try {
      load_safetensors_from_buffer(bytes.data(), len);
      FAIL_CHECK("a truncated file loaded");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).rfind("[load_safetensors] <memory>: ", 0) == 0);
    }
  }
  // Single-byte changes anywhere in the length prefix and header either still load or throw
  // kiln::Error; the sanitizer build turns any out-of-bounds access here into a failure.
  std::size_t header_end = 8 + le64(bytes, 0), loaded = 0, rejected = 0;
  for (std::size_t pos = 0; pos < header_end; ++pos) {
    for (std::uint8_t v : {std::uint8_t{0}, std::uint8_t{0xff}, std::uint8_t{'"'}, std::uint8_t{'9'}, std::uint8_t{' '},
                           std::uint8_t{','}, static_cast<std::uint8_t>(bytes[pos] ^ 1)}) {
      auto copy = bytes;
      copy[pos] = v;
      try {
        load_safetensors_from_buffer(copy.data(), copy.size());
        ++loaded;
      } catch (const Error& e) {
        ++rejected;
        if (std::string(e.what()).rfind("[load_safetensors]", 0) != 0) FAIL_CHECK(e.what());
      }
    }
  }
  CHECK(rejected > 0);
  CHECK(loaded > 0);  // e.g. a digit of a value inside the metadata
}

// The data bytes of tensor `name` in a safetensors file: 8-byte length, header, then the buffer.
std::vector<unsigned char> tensor_bytes(const std::vector<unsigned char>& file, const std::string& name) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{file[i]} << (8 * i);
  std::string header(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  auto at = header.find("\"" + name + "\"");
  REQUIRE(at != std::string::npos);
  at = header.find("\"data_offsets\"", at);
  auto open = header.find('[', at), comma = header.find(',', open), close = header.find(']', comma);
  std::uint64_t b = std::stoull(header.substr(open + 1, comma - open - 1));
  std::uint64_t e = std::stoull(header.substr(comma + 1, close - comma - 1));
  auto base = file.begin() + 8 + static_cast<std::ptrdiff_t>(n);
  return {base + static_cast<std::ptrdiff_t>(b), base + static_cast<std::ptrdiff_t>(e)};
}

TEST_CASE("safetensors: BF16 and F16 written by PyTorch load as bfloat16/float16 and save back byte-identical") {
  const std::string path = ckt::data_dir() + "python_written.safetensors";
  const auto original = ckt::read_bytes(path);
  SafetensorsFile f = load_safetensors(path);
  auto saved = save_safetensors_to_buffer({{"bf16", f.at("bf16")}, {"f16", f.at("f16")}});
  std::vector<unsigned char> bytes(saved.begin(), saved.end());
  for (const char* name : {"bf16", "f16"}) {
    INFO(name);
    CHECK(tensor_bytes(bytes, name) == tensor_bytes(original, name));
  }
  // The header names the dtypes as Python's safetensors does.
  std::string text(bytes.begin(), bytes.end());
  CHECK(text.find("\"dtype\":\"BF16\"") != std::string::npos);
  CHECK(text.find("\"dtype\":\"F16\"") != std::string::npos);
  SafetensorsFile back = load_safetensors_from_buffer(bytes.data(), bytes.size());
  CHECK(back.at("bf16").dtype() == kBFloat16);
  CHECK(back.at("f16").dtype() == kFloat16);
}

TEST_CASE(
    "safetensors: BF16 and F16 bit patterns (NaN payloads, signalling NaN, subnormals) round trip byte-identical") {
  const std::string path = ckt::data_dir() + "spec_16bit.safetensors";
  const auto original = ckt::read_bytes(path);
  SafetensorsFile f = load_safetensors(path);
  REQUIRE(f.at("bf16").dtype() == kBFloat16);
  REQUIRE(f.at("f16").dtype() == kFloat16);
  kt::expect_shape(f.at("bf16"), {2, 4});
  std::vector<std::uint16_t> bf, hf;
  for (BFloat16 v : f.at("bf16").to_vector<BFloat16>()) bf.push_back(v.bits());
  for (Half v : f.at("f16").to_vector<Half>()) hf.push_back(v.bits());
  // tools/safetensors_fixtures.py BF16_BITS / F16_BITS
  CHECK(bf == std::vector<std::uint16_t>{0x3F80, 0xC020, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x7FC1, 0x7F81});
  CHECK(hf == std::vector<std::uint16_t>{0x3C00, 0x7BFF, 0x0001, 0x8400, 0x7C00, 0xFC00, 0x7E01, 0x7C01});
  CHECK(f.at("f16").to_vector<double>()[2] == std::ldexp(1.0, -24));
  // kiln's header adds its per-tensor checksum (key kiln.crc32c); the data bytes are the file's.
  const auto saved = save_safetensors_to_buffer(f.tensors, f.metadata);
  auto data_of = [](const auto& bytes) {
    std::uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<std::uint8_t>(bytes[i]);
    return std::vector<std::uint8_t>(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header), bytes.end());
  };
  CHECK(data_of(saved) == data_of(original));
  // Without kiln's checksum the whole file is Python's, byte for byte.
  const auto plain = save_safetensors_to_buffer(f.tensors, f.metadata, SafetensorsSaveOptions().checksum(false));
  CHECK(std::vector<std::uint8_t>(plain.begin(), plain.end()) ==
        std::vector<std::uint8_t>(original.begin(), original.end()));
  CHECK(load_safetensors_from_buffer(plain.data(), plain.size()).metadata == f.metadata);
  SafetensorsFile back = load_safetensors_from_buffer(saved.data(), saved.size());
  CHECK(back.metadata == f.metadata);
  CHECK(back.at("bf16").dtype() == kBFloat16);
}

TEST_CASE("safetensors: malformed BF16 and F16 entries and the newer spec dtypes are refused, a padded file loads") {
  auto file = [](const std::string& header, std::size_t data_bytes) {
    std::vector<std::uint8_t> b;
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<std::uint8_t>(header.size() >> (8 * i)));
    for (char c : header) b.push_back(static_cast<std::uint8_t>(c));
    b.resize(b.size() + data_bytes, 0x3f);
    return b;
  };
  auto error = [&](const std::string& header, std::size_t data_bytes) {
    const auto b = file(header, data_bytes);
    return kt::error_of([&] { load_safetensors_from_buffer(b.data(), b.size()); });
  };
  CHECK(error(R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,5]}})", 5) ==
        "[load_safetensors] <memory>: tensor 'w' (BF16, shape [3]) needs 6 bytes but data_offsets [0, 5] hold 5");
  CHECK(error(R"({"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,4]}})", 4).find("needs 8 bytes but") !=
        std::string::npos);
  CHECK(error(R"({"w":{"dtype":"BF16","shape":[0,4],"data_offsets":[0,2]}})", 2).find("needs 0 bytes") !=
        std::string::npos);
  CHECK(error(R"({"w":{"dtype":"F16","shape":[4611686018427387904],"data_offsets":[0,2]}})", 2)
            .find("needs 9223372036854775808 bytes") != std::string::npos);
  CHECK(error(R"({"w":{"dtype":"F16","shape":[4611686018427387904,4],"data_offsets":[0,2]}})", 2)
            .find("whose size overflows 64 bits") != std::string::npos);
  CHECK(error(R"({"w":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"v":{"dtype":"BF16","shape":[1],)"
              R"("data_offsets":[1,3]}})",
              3)
            .find("overlap") != std::string::npos);
  for (const char* d : {"F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "bf16"}) {
    INFO(d);
    CHECK(error(fmt::format(R"({{"w":{{"dtype":"{}","shape":[2],"data_offsets":[0,2]}}}})", d), 2)
              .find(fmt::format("unknown dtype '{}'", d)) != std::string::npos);
  }
  // The writer's layout: space padding after the object, an odd element count.
  const auto ok = file(R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}      )", 6);
  SafetensorsFile f = load_safetensors_from_buffer(ok.data(), ok.size());
  REQUIRE(f.at("w").dtype() == kBFloat16);
  CHECK(f.at("w").to_vector<double>() == std::vector<double>(3, 0.74609375));  // bits 0x3f3f
}

TEST_CASE("safetensors: save rejects duplicate and reserved and non-UTF-8 names and undefined tensors") {
  Tensor t = ones({2});
  CHECK_KILN_ERROR(save_safetensors_to_buffer({{"a", t}, {"b", t}, {"a", t}}),
                   "[save_safetensors] duplicate tensor name 'a'");
  CHECK_KILN_ERROR(save_safetensors_to_buffer({{"__metadata__", t}}), "'__metadata__' is reserved");
  CHECK_KILN_ERROR(save_safetensors_to_buffer({{"bad\xff", t}}), "tensor name 'bad\\xff' is not valid UTF-8");
  CHECK_KILN_ERROR(save_safetensors_to_buffer({{"a", t}}, {{"k", "\xc0\xaf"}}),
                   "metadata value '\\xc0\\xaf' is not valid UTF-8");
  CHECK_KILN_ERROR(save_safetensors_to_buffer({{"u", Tensor()}}), "[save_safetensors] tensor 'u' is undefined");
}

TEST_CASE("safetensors: write errors name the path and leave no temporary file behind") {
  auto dir = ckt::temp_dir("st_write_errors");
  std::string missing = (dir / "no_such_dir" / "x.safetensors").string();
  CHECK_KILN_ERROR(save_safetensors(missing, {{"a", ones({1})}}),
                   ("[save_safetensors] cannot write '" + missing + "': creating temporary file").c_str());
  CHECK_KILN_ERROR(save_safetensors(dir.string() + "/", {{"a", ones({1})}}), "names a directory, not a file");
  fs::create_directories(dir / "occupied" / "child");
  CHECK_KILN_ERROR(save_safetensors((dir / "occupied").string(), {{"a", ones({1})}}), "renaming");
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  CHECK(left == std::vector<std::string>{"occupied"});
  CHECK_KILN_ERROR(load_safetensors((dir / "nothing.safetensors").string()), "[load_safetensors] cannot open");
  CHECK_KILN_ERROR(load_safetensors(dir.string()), "is not a regular file");
  fs::remove_all(dir);
}

TEST_CASE("safetensors: stale temporary files from a crashed writer change nothing") {
  auto dir = ckt::temp_dir("st_stale");
  std::string path = (dir / "model.safetensors").string();
  for (int i = 0; i < 32; ++i)  // junk where this process's own temporary names would go, and others'
    ckt::write_bytes(dir / (".model.safetensors.tmp." + std::to_string(::getpid()) + "." + std::to_string(i)),
                     {1, 2, 3});
  ckt::write_bytes(dir / ".model.safetensors.tmp.1.0", {0xde, 0xad});
  save_safetensors(path, {{"w", full({3}, 1.0)}});
  save_safetensors(path, {{"w", full({3}, 2.0)}});
  kt::expect_values(load_safetensors(path).at("w"), {2, 2, 2});
  CHECK(ckt::read_bytes(dir / ".model.safetensors.tmp.1.0") == std::vector<std::uint8_t>{0xde, 0xad});
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++files;
  CHECK(files == 34);  // the junk plus the target: the writer's own temporary files are gone
  fs::remove_all(dir);
}

TEST_CASE("SafetensorsFile::at names the tensors the file has") {
  auto bytes = save_safetensors_to_buffer({{"a", ones({1})}, {"b", ones({1})}});
  auto f = load_safetensors_from_buffer(bytes.data(), bytes.size());
  CHECK(f.contains("a"));
  CHECK_FALSE(f.contains("c"));
  CHECK_KILN_ERROR(f.at("c"), "[SafetensorsFile] no tensor 'c'; the file has 'a', 'b'");
}

TEST_CASE("nn::save and nn::load: a fresh module gets the saved state in place with dtype conversion") {
  auto dir = ckt::temp_dir("st_module");
  std::string path = (dir / "m.safetensors").string();
  manual_seed(1);
  nn::Sequential a(nn::Linear(3, 4), nn::LayerNorm(4));
  nn::save(*a, path, {{"epoch", "3"}});
  CHECK(load_safetensors(path).metadata.at("epoch") == "3");
  manual_seed(2);
  nn::Sequential b(nn::Linear(3, 4), nn::LayerNorm(4));
  Tensor w = b->named_parameters()["0.weight"];
  CHECK_FALSE(ckt::bitwise_equal(w, a->named_parameters()["0.weight"]));
  auto r = nn::load(*b, path);
  CHECK(r.missing_keys.empty());
  for (const auto& [k, t] : a->state_dict()) CHECK(ckt::bitwise_equal(b->state_dict()[k], t));
  CHECK(ckt::bitwise_equal(w, a->named_parameters()["0.weight"]));  // the same tensor, updated in place
  CHECK(w.requires_grad());
  nn::Sequential c(nn::Linear(3, 4), nn::LayerNorm(4));
  c->to(kFloat64);
  nn::load(*c, path);
  CHECK(c->state_dict()["0.weight"].dtype() == kFloat64);
  kt::expect_values(c->state_dict()["0.weight"], a->state_dict()["0.weight"].to_vector<double>(), 0, 0);
  fs::remove_all(dir);
}

TEST_CASE("nn::load: strict key checking and shape mismatches and bad files name the file") {
  auto dir = ckt::temp_dir("st_module_errors");
  std::string path = (dir / "m.safetensors").string();
  nn::Sequential a(nn::Linear(3, 4), nn::LayerNorm(4));
  nn::save(*a, path);
  nn::Sequential more(nn::Linear(3, 4), nn::LayerNorm(4), nn::Linear(4, 2));
  CHECK_KILN_ERROR(nn::load(*more, path),
                   ("[nn::load] " + path + ": [load_state_dict] missing keys: '2.weight', '2.bias'").c_str());
  Tensor before = more->state_dict()["0.weight"].clone();
  auto r = nn::load(*more, path, /*strict=*/false);
  CHECK(r.missing_keys == std::vector<std::string>{"2.weight", "2.bias"});
  CHECK(ckt::bitwise_equal(more->state_dict()["0.weight"], a->state_dict()["0.weight"]));
  CHECK_FALSE(ckt::bitwise_equal(before, a->state_dict()["0.weight"]));
  nn::Sequential fewer(nn::Linear(3, 4));
  CHECK_KILN_ERROR(nn::load(*fewer, path), "unexpected keys: '1.weight', '1.bias'");
  CHECK(nn::load(*fewer, path, false).unexpected_keys == std::vector<std::string>{"1.weight", "1.bias"});
  nn::Sequential wider(nn::Linear(3, 5), nn::LayerNorm(5));
  CHECK_KILN_ERROR(nn::load(*wider, path), "shape mismatch for '0.weight': expected (5, 3), got (4, 3)");
  CHECK_KILN_ERROR(nn::load(*a, ckt::data_dir() + "bad_offsets_gap.safetensors"), "[load_safetensors]");
  fs::remove_all(dir);
}
