// Checkpoints and safetensors files refuse silent corruption (issue 11, item 5): per-tensor
// CRC-32C checksums written by kiln and verified on load, training-state validation, an optional
// finiteness check, stale temporary files of a killed writer removed, and the header's first byte.
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <kiln/io/checksum.hpp>
#include "io/st_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
using io::load_safetensors;
using io::load_safetensors_from_buffer;
using io::save_safetensors;
namespace fs = std::filesystem;

namespace {

struct Run {
  Run() : net(nn::LinearOptions(3, 2)), opt(net->parameters(), optim::AdamOptions(0.1)) {
    manual_seed(3);
    opt.zero_grad();
    square(net(randn({4, 3}))).mean().backward();
    opt.step();
  }
  io::TrainingState state() { return {.model = net, .optimizer = opt}; }
  nn::Linear net;
  optim::Adam opt;
};

// The file at `path` rewritten with its tensors changed by `edit` (metadata kept; kiln writes
// fresh checksums), as a user script editing a checkpoint would.
void rewrite(const std::string& path, const std::function<void(io::NamedTensors&)>& edit) {
  io::SafetensorsFile f = load_safetensors(path);
  io::NamedTensors ts = f.tensors;
  edit(ts);
  save_safetensors(path, ts, f.metadata);
}

}  // namespace

TEST_CASE("stress checkpoint integrity: CRC-32C matches the standard check values") {
  CHECK(io::detail::crc32c("123456789", 9) == 0xe3069283u);
  CHECK(io::detail::crc32c("", 0) == 0u);
  std::vector<unsigned char> zeros32(32, 0), ones32(32, 0xff);
  CHECK(io::detail::crc32c(zeros32.data(), 32) == 0x8a9136aau);  // RFC 3720 B.4 test vectors
  CHECK(io::detail::crc32c(ones32.data(), 32) == 0x62a8ab43u);
  // Continuing over pieces (any split, unaligned tails) equals the whole.
  const char* text = "The quick brown fox jumps over the lazy dog, twice over.";
  const std::size_t n = std::strlen(text);
  for (std::size_t cut = 0; cut <= n; cut += 7)
    CHECK(io::detail::crc32c(text + cut, n - cut, io::detail::crc32c(text, cut)) == io::detail::crc32c(text, n));
}

TEST_CASE("stress checkpoint integrity: a flipped data bit is caught, files without checksums still load") {
  auto dir = ckt::temp_dir("integrity_bits");
  const std::string path = (dir / "w.safetensors").string();
  save_safetensors(path, {{"a", arange(0, 6, 1, kFloat32)}, {"w", tensor({1.0f, 2.0f, 3.0f, 4.0f})}}, {{"k", "v"}});
  auto f = load_safetensors(path);
  CHECK(f.metadata == std::map<std::string, std::string>{{"k", "v"}});  // the checksums are not user metadata
  auto bytes = ckt::read_bytes(path);
  bytes[bytes.size() - 2] ^= 0x10;  // inside "w", the last tensor
  ckt::write_bytes(path, bytes);
  CHECK_KILN_ERROR(load_safetensors(path),
                   ("[load_safetensors] " + path + ": tensor 'w' (F32, shape (4,)) fails its checksum").c_str());
  CHECK_KILN_ERROR(load_safetensors_from_buffer(bytes.data(), bytes.size()),
                   "[load_safetensors] <memory>: tensor 'w' (F32, shape (4,)) fails its checksum");
  bytes[bytes.size() - 2] ^= 0x10;
  CHECK(load_safetensors_from_buffer(bytes.data(), bytes.size()).tensors.size() == 2);
  // A damaged checksum list is an error too, and the key is kiln's.
  std::string text(bytes.begin(), bytes.end());
  const auto at = text.find("\"kiln.crc32c\":\"") + 15;
  REQUIRE(at > 15);
  text[at + 3] = 'x';
  CHECK_KILN_ERROR(load_safetensors_from_buffer(text.data(), text.size()), "its 'kiln.crc32c' metadata '");
  CHECK_KILN_ERROR(save_safetensors(path, {{"w", ones({1})}}, {{"kiln.crc32c", "0"}}),
                   "[save_safetensors] metadata key 'kiln.crc32c' is reserved");
  // Python-written files carry no checksum and load as before.
  CHECK(load_safetensors(ckt::data_dir() + "python_written.safetensors").tensors.size() == 12);
  fs::remove_all(dir);
}

TEST_CASE("stress checkpoint integrity: the header must begin with '{'") {
  const std::string header = R"( {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::vector<unsigned char> bytes(8 + header.size() + 4, 0);
  bytes[0] = static_cast<unsigned char>(header.size());
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  CHECK_KILN_ERROR(load_safetensors_from_buffer(bytes.data(), bytes.size()),
                   "[load_safetensors] <memory>: the header must begin with '{', got byte 0x20");
  bytes[8] = '{';  // "{{..." is then the parser's error, not a crash
  CHECK_THROWS_AS(load_safetensors_from_buffer(bytes.data(), bytes.size()), Error);
  std::memmove(bytes.data() + 8, header.data() + 1, header.size() - 1);
  bytes[8 + header.size() - 1] = ' ';  // the same header with trailing padding instead
  CHECK(load_safetensors_from_buffer(bytes.data(), bytes.size()).tensors.size() == 1);
}

TEST_CASE("stress checkpoint integrity: corrupt bits, a negative step and missing optimizer state are refused") {
  auto dir = ckt::temp_dir("integrity_ckpt");
  const std::string path = (dir / "ck.safetensors").string();
  Run a;
  io::save_checkpoint(path, a.state(), 1);
  Run b;
  CHECK(io::load_checkpoint(path, b.state()).step == 1);
  CHECK(ckt::bitwise_equal(b.net->weight, a.net->weight));

  auto good = ckt::read_bytes(path);
  auto bad = good;
  bad[bad.size() - 1] ^= 0x01;
  ckt::write_bytes(path, bad);
  CHECK_KILN_ERROR(io::load_checkpoint(path, b.state()), "fails its checksum");
  ckt::write_bytes(path, good);

  CHECK_KILN_ERROR(io::save_checkpoint(path, a.state(), -5), "[save_checkpoint] step must be >= 0, got -5");
  save_safetensors((dir / "neg.safetensors").string(), {}, {{"kiln.checkpoint", "1"}, {"kiln.step", "-5"}});
  CHECK_KILN_ERROR(io::read_checkpoint_info((dir / "neg.safetensors").string()),
                   "'kiln.step' is -5: a step count is never negative");

  // One parameter's Adam moments gone, its step kept: refused, and nothing loads.
  rewrite(path, [](io::NamedTensors& ts) {
    std::erase_if(ts, [](const auto& kv) { return kv.first == "optimizer.state.1.exp_avg"; });
  });
  Run c;
  const Tensor moment = c.opt.state(c.net->bias)->buffers[0].clone();
  CHECK_KILN_ERROR(io::load_checkpoint(path, c.state()),
                   "optimizer: [Adam] load_state_dict: 'state.1.exp_avg' is missing (parameter 1 has a step");
  CHECK(ckt::bitwise_equal(c.opt.state(c.net->bias)->buffers[0], moment));  // the optimizer is untouched
  fs::remove_all(dir);
}

TEST_CASE("stress checkpoint integrity: check_finite refuses NaN weights, stale temporary files are removed") {
  auto dir = ckt::temp_dir("integrity_finite");
  const std::string path = (dir / "ck.safetensors").string();
  Run a;
  {
    NoGradGuard ng;
    a.net->weight.view({-1}).select(0, 4).fill_(std::nan(""));
  }
  io::save_checkpoint(path, a.state(), 2);
  Run b;
  CHECK_KILN_ERROR(io::load_checkpoint(path, b.state(), io::LoadCheckpointOptions().check_finite(true)),
                   "tensor 'model.weight' (shape (2, 3)) holds nan at flat index 4 (check_finite)");
  CHECK(io::load_checkpoint(path, b.state()).step == 2);  // off by default: NaN is data
  CHECK(std::isnan(b.net->weight.view({-1}).select(0, 4).item<float>()));

  // A writer killed mid-write left its temporary file; its process is gone.
  pid_t child = fork();
  if (child == 0) _exit(0);
  REQUIRE(waitpid(child, nullptr, 0) == child);
  const auto dead = dir / (".ck.safetensors.tmp." + std::to_string(child) + ".0");
  const auto other = dir / (".other.safetensors.tmp." + std::to_string(child) + ".0");
  const auto mine = dir / (".ck.safetensors.tmp." + std::to_string(::getpid()) + ".999");
  for (const auto& p : {dead, other, mine}) ckt::write_bytes(p, {1, 2, 3});
  io::save_checkpoint(path, b.state(), 3);
  CHECK_FALSE(fs::exists(dead));  // removed by the next save of the same target
  CHECK(fs::exists(other));       // another target's
  CHECK(fs::exists(mine));        // this process's own (it may be a save in flight on another thread)
  fs::remove_all(dir);
}
