// libFuzzer target for kiln's training-checkpoint loader (io::load_checkpoint), built with clang
// -fsanitize=fuzzer,address,undefined over the whole library by .ci/fuzz. Each input is the bytes
// of a checkpoint file, restored into a realistic TrainingState: a small transformer model, AdamW
// (float32 masters for a bfloat16/float16 model, AMSGrad on request), WarmupCosineLR, a
// GradScaler extra and two generators. The file's user metadata "user.fuzz" picks the variant
// (words: bf16 | f16 parameters, scaler = float32 parameters with a float16 autocast forward and
// a GradScaler, amsgrad, finite = check_finite, loose = strict_model off), so the
// mutator explores the variants too. For every input:
//   - the load either succeeds or throws kiln::Error "[load_checkpoint] <path>: ..." (or
//     "[load_safetensors] <path>: ..." for the file format); any other exception, crash,
//     sanitizer report or hang is a finding;
//   - an accepted checkpoint leaves a usable state: parameters keep their shapes and dtypes, the
//     state saves and loads back into a fresh TrainingState to the same file bytes, and a
//     training step (forward, backward, GradScaler or optimizer step, scheduler step) runs.
// kiln writes a CRC-32C per tensor, so random mutations of the data would only test the checksum:
// the custom mutator mutates the JSON header or the data buffer separately, keeps the length
// prefix right, and mostly recomputes (sometimes drops, sometimes keeps stale) the checksums, so
// the metadata and state validation behind them is reached.
//   checkpoint_fuzz --write-seeds DIR    writes the seed checkpoints (one per variant) and exits
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <kiln/io/checkpoint.hpp>
#include <kiln/io/checksum.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/io/safetensors_format.hpp>
#include <kiln/kiln.hpp>

using namespace kiln;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "checkpoint_fuzz: %s: %s\n", what, detail.c_str());
  std::abort();
}

struct Variant {
  DType dtype = kFloat32;
  bool amsgrad = false, scaler = false, finite = false, loose = false;
  std::string words() const {
    std::string s = dtype == kBFloat16 ? "bf16" : dtype == kFloat16 ? "f16" : "f32";
    for (auto [on, w] : {std::pair{amsgrad, "amsgrad"}, {scaler, "scaler"}, {finite, "finite"}, {loose, "loose"}})
      if (on) s += std::string(" ") + w;
    return s;
  }
  static Variant parse(const std::string& words) {
    Variant v;
    std::istringstream in(words);
    for (std::string w; in >> w;) {
      if (w == "bf16") v.dtype = kBFloat16;
      if (w == "f16") v.dtype = kFloat16;
      v.amsgrad |= w == "amsgrad";
      v.scaler |= w == "scaler";
      v.finite |= w == "finite";
      v.loose |= w == "loose";
    }
    if (v.scaler) v.dtype = kFloat32;  // float32 parameters, float16 forward under autocast
    return v;
  }
};

constexpr std::int64_t kVocab = 8, kDim = 4;

struct NetImpl : nn::Module {
  NetImpl()
      : emb(register_module("emb", nn::Embedding(kVocab, kDim))),
        layer(register_module("layer", nn::TransformerEncoderLayer(
                                           nn::TransformerLayerOptions(kDim, 2).dim_feedforward(8).dropout(0)))),
        norm(register_module("norm", nn::LayerNorm(kDim))),
        head(register_module("head", nn::Linear(kDim, kVocab))) {}
  Tensor forward(const Tensor& tokens) { return head(norm(layer(emb(tokens)))); }
  nn::Embedding emb;
  nn::TransformerEncoderLayer layer;
  nn::LayerNorm norm;
  nn::Linear head;
};
KILN_MODULE(Net);

// Everything a checkpoint restores, built the same way every time.
struct Training {
  explicit Training(const Variant& v)
      : variant(v),
        net((manual_seed(7), Net())),
        opt((net->to(v.dtype), net->parameters()), optim::AdamWOptions(1e-2).amsgrad(v.amsgrad)),
        sched(opt, 2, 10),
        scaler(kFloat16, amp::GradScalerOptions().init_scale(1024).growth_interval(2)) {}

  io::TrainingState state() {
    io::TrainingState s{.model = net,
                        .optimizer = opt,
                        .scheduler = sched,
                        .generators = {{"data", &data_gen}, {"dropout", &dropout_gen}}};
    if (variant.scaler) s.extras.emplace("scaler", scaler);
    return s;
  }
  io::LoadCheckpointOptions load_options() const {
    return io::LoadCheckpointOptions().check_finite(variant.finite).strict_model(!variant.loose);
  }

  // One training step on fixed tokens; returns the loss.
  double step() {
    const Tensor tokens = tensor(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}).reshape({2, 3});
    const Tensor targets = tensor(std::vector<std::int64_t>{2, 3, 4, 5, 6, 7});
    opt.zero_grad();
    Tensor logits;
    {
      auto mixed = autocast(kFloat16, variant.scaler);
      logits = net(tokens);
    }
    if (logits.shape() != Shape{2, 3, kVocab}) finding("forward", "logits of shape " + shape_str(logits.shape()));
    Tensor loss = cross_entropy(logits.reshape({6, kVocab}).to(kFloat32), targets);
    if (variant.scaler) {
      scaler.scale(loss).backward();
      scaler.step(opt);
      scaler.update();
    } else {
      loss.backward();
      opt.step();
    }
    sched.step();
    return loss.item<double>();
  }

  Variant variant;
  Net net;
  optim::AdamW opt;
  optim::WarmupCosineLR sched;
  amp::GradScaler scaler;
  Generator data_gen{11}, dropout_gen{12};
};

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) finding("harness", "cannot write " + path);
}

// The files each input goes through (in memory where /dev/shm is), removed at exit (never
// destroyed: the exit handler reads them).
const std::string& scratch(int i) {
  static const auto* paths = [] {
    const std::string base = std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") +
                             "/kiln_checkpoint_fuzz." + std::to_string(getpid());
    auto* p = new std::vector<std::string>{base + ".input.safetensors", base + ".saved.safetensors",
                                           base + ".resaved.safetensors"};
    std::atexit([] {
      for (int k = 0; k < 3; ++k) std::remove(scratch(k).c_str());
    });
    return p;
  }();
  return (*paths)[static_cast<std::size_t>(i)];
}

// The variant named by the file's "user.fuzz" metadata (f32 without extras when unreadable).
Variant variant_of(const std::uint8_t* data, std::size_t size) {
  try {
    io::detail::MemorySource src(data, size);
    auto h = io::detail::read_header(src, "<fuzz>");
    auto it = h.metadata.find("user.fuzz");
    if (it != h.metadata.end()) return Variant::parse(it->second);
  } catch (const Error&) {
  }
  return {};
}

bool expected_error(const std::string& msg, const std::string& path) {
  for (const char* op : {"[load_checkpoint] ", "[load_safetensors] "})
    if (msg.rfind(op + path + ": ", 0) == 0) return true;
  return false;
}

void write_seeds(const std::string& dir) {
  const char* variants[] = {"scaler", "f32 amsgrad finite", "bf16", "bf16 amsgrad finite", "f16", "f16 scaler loose"};
  int n = 0;
  for (const char* words : variants) {
    Training t(Variant::parse(words));
    for (int i = 0; i < 2; ++i) t.step();  // optimizer buffers, a scheduler past warmup, a scaler that grew
    const std::string path = dir + "/seed_" + std::to_string(n++) + ".safetensors";
    io::save_checkpoint(path, t.state(), 2, {{"fuzz", words}});
    // The same checkpoint without checksums, as a file rewritten by Python's safetensors would be.
    io::SafetensorsFile f = io::load_safetensors(path);
    io::save_safetensors(dir + "/seed_" + std::to_string(n++) + ".safetensors", f.tensors, f.metadata,
                         io::SafetensorsSaveOptions().checksum(false));
  }
  std::printf("checkpoint_fuzz: %d seeds written to %s\n", n, dir.c_str());
}

// Inputs whose header parses: split into header text and data buffer.
bool split(const std::uint8_t* data, std::size_t size, std::string& header, std::vector<std::uint8_t>& buffer) {
  if (size < 8) return false;
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8) return false;
  header.assign(reinterpret_cast<const char*>(data) + 8, n);
  buffer.assign(data + 8 + n, data + size);
  return true;
}

std::size_t join(const std::string& header, const std::vector<std::uint8_t>& buffer, std::uint8_t* out,
                 std::size_t max) {
  const std::size_t total = 8 + header.size() + buffer.size();
  if (total > max) return 0;
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  std::memcpy(out + 8, header.data(), header.size());
  if (!buffer.empty()) std::memcpy(out + 8 + header.size(), buffer.data(), buffer.size());
  return total;
}

// After a mutation: a header that parses gets its checksums recomputed over the (possibly
// mutated) data, or dropped (1 in 8), or left stale (1 in 8).
std::size_t fix_checksums(std::uint8_t* data, std::size_t size, std::size_t max, std::minstd_rand& rng) {
  io::detail::SafetensorsHeader h;
  try {
    io::detail::MemorySource src(data, size);
    h = io::detail::read_header(src, "<fuzz>");
  } catch (const Error&) {
    return size;
  }
  auto it = h.metadata.find("kiln.crc32c");
  const unsigned r = rng() % 8;
  if (it == h.metadata.end() || r == 0) return size;
  if (r == 1) {
    h.metadata.erase(it);
  } else {
    std::string sums;
    for (const auto& e : h.tensors) {
      char hex[10];
      std::snprintf(hex, sizeof hex, "%08x", io::detail::crc32c(data + h.data_start + e.begin, e.end - e.begin));
      sums += (sums.empty() ? "" : " ") + std::string(hex);
    }
    it->second = sums;
  }
  std::string header;
  try {
    header = io::detail::build_header(h.tensors, h.metadata);
  } catch (const Error&) {
    return size;
  }
  std::vector<std::uint8_t> buffer(data + h.data_start, data + size);
  std::vector<std::uint8_t> out(max);
  const std::size_t n = join(header, buffer, out.data(), max);
  if (n == 0) return size;
  std::memcpy(data, out.data(), n);
  return n;
}

// Edits a readable checkpoint as a script (or an attacker) would, through kiln's own reader and
// writer: a metadata value replaced, a key or tensor dropped, a tensor of another dtype or shape,
// renamed or holding NaN/Inf, a group's or parameter's entries copied under another index. Byte
// mutations rarely produce these (each needs consistent JSON, offsets and checksums).
std::size_t edit_checkpoint(std::uint8_t* data, std::size_t size, std::size_t max_size, std::minstd_rand& rng) {
  io::SafetensorsFile f;
  try {
    f = io::load_safetensors_from_buffer(data, size);
  } catch (const Error&) {
    return 0;
  }
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  auto& meta = f.metadata;
  auto& ts = f.tensors;
  auto some_key = [&]() -> const std::string* {
    if (meta.empty()) return nullptr;
    auto it = meta.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(pick(meta.size())));
    return &it->first;
  };
  // "optimizer.state.3.exp_avg" -> "optimizer.state.<n>.exp_avg" (the first number in the name).
  auto renumber = [&](std::string name) {
    const auto a = name.find_first_of("0123456789");
    if (a == std::string::npos) return name + ".0";
    const auto b = name.find_first_not_of("0123456789", a);
    return name.replace(a, b == std::string::npos ? std::string::npos : b - a, std::to_string(pick(24)));
  };
  static const char* values[] = {"-1",     "0",
                                 "1",      "2",
                                 "3",      "0.5",
                                 "1.5",    "nan",
                                 "inf",    "-inf",
                                 "1e20",   "-1e20",
                                 "1e308",  "-0",
                                 "5e-324", "9007199254740993",
                                 "",       " 1",
                                 "1 2",    "0x10",
                                 "11 0",   "12 18446744073709551615"};
  static const DType dtypes[] = {kFloat32, kFloat64, kBFloat16, kFloat16, kInt64, kBool};
  try {
    switch (pick(8)) {
      case 0:
        if (const std::string* k = some_key()) meta[*k] = values[pick(std::size(values))];
        break;
      case 1:
        if (const std::string* k = some_key()) meta.erase(*k);
        break;
      case 2:
        if (!ts.empty()) ts.erase(ts.begin() + static_cast<std::ptrdiff_t>(pick(ts.size())));
        break;
      case 3:
        if (!ts.empty()) {
          Tensor& t = ts[pick(ts.size())].second;
          t = t.to(dtypes[pick(std::size(dtypes))]);
        }
        break;
      case 4:
        if (!ts.empty()) {
          Tensor& t = ts[pick(ts.size())].second;
          const unsigned how = rng() % 4;
          if (how == 0) t = t.reshape({-1});
          else if (how == 1) t = unsqueeze(t, 0);
          else if (how == 2 && t.dim() > 0 && t.size(0) > 0) t = t.narrow(0, 0, t.size(0) - 1).contiguous();
          else if (t.dim() >= 2) t = transpose(t, 0, 1).contiguous();
        }
        break;
      case 5:
        if (!ts.empty()) {
          std::string& name = ts[pick(ts.size())].first;
          const std::string renamed = renumber(name);
          bool taken = false;
          for (const auto& [n, t] : ts) taken |= n == renamed;
          if (!taken) name = renamed;
        }
        break;
      case 6:
        if (const std::string* k = some_key()) {
          const std::string copy = renumber(*k);
          meta.emplace(copy, meta.at(*k));
        }
        break;
      default:
        if (!ts.empty()) {
          Tensor& t = ts[pick(ts.size())].second;
          if (t.is_floating_point() && t.numel() > 0) {
            const Shape shape = t.shape();
            Tensor flat = t.clone().reshape({-1});
            const double special[] = {std::nan(""), INFINITY, -INFINITY, 1e30, -0.0};
            flat.index_put_({static_cast<std::int64_t>(pick(static_cast<std::size_t>(t.numel())))},
                            special[pick(std::size(special))]);
            t = flat.reshape(shape);
          }
        }
    }
    const auto bytes = io::save_safetensors_to_buffer(ts, meta, io::SafetensorsSaveOptions().checksum(rng() % 4 != 0));
    if (bytes.size() > max_size) return 0;
    std::memcpy(data, bytes.data(), bytes.size());
    return bytes.size();
  } catch (const Error&) {
    return 0;  // e.g. a reserved metadata key: leave this input to the byte mutations
  }
}

}  // namespace

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i + 1 < *argc; ++i)
    if (std::strcmp((*argv)[i], "--write-seeds") == 0) {
      write_seeds((*argv)[i + 1]);
      std::exit(0);
    }
  return 0;
}

extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  std::minstd_rand rng(seed);
  if (rng() % 4 == 0)
    if (std::size_t n = edit_checkpoint(data, size, max_size, rng)) return n;
  std::string header;
  std::vector<std::uint8_t> buffer;
  const unsigned choice = rng() % 10;
  if (choice == 0 || !split(data, size, header, buffer)) {  // the raw bytes, length prefix included
    return fix_checksums(data, LLVMFuzzerMutate(data, size, max_size), max_size, rng);
  }
  if (choice <= 6) {  // the JSON header (the dictionary's keys and values land here)
    const std::size_t room = max_size - 8 - buffer.size();
    if (room == 0) return size;
    header.resize(std::max(room, header.size()));
    header.resize(LLVMFuzzerMutate(reinterpret_cast<std::uint8_t*>(header.data()), size - 8 - buffer.size(), room));
  } else if (!buffer.empty()) {  // the data buffer, same length (the header's offsets must tile it)
    const std::size_t n = buffer.size();
    buffer.resize(LLVMFuzzerMutate(buffer.data(), n, n));
    buffer.resize(n, 0);
  }
  const std::size_t n = join(header, buffer, data, max_size);
  return fix_checksums(data, n == 0 ? size : n, max_size, rng);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string &path = scratch(0), &again = scratch(1), &again2 = scratch(2);
  write_file(path, data, size);
  const Variant variant = variant_of(data, size);
  Training t(variant);
  std::vector<std::pair<Shape, DType>> params;
  for (const auto& p : t.net->parameters()) params.emplace_back(p.shape(), p.dtype());
  try {
    io::CheckpointInfo info = io::load_checkpoint(path, t.state(), t.load_options());
    if (info.step < 0) finding("accepted", "negative step " + std::to_string(info.step));
  } catch (const Error& e) {
    if (!expected_error(e.what(), path)) finding("error not attributed to the file", e.what());
    return 0;
  } catch (const std::exception& e) {
    finding("non-kiln exception from load_checkpoint", e.what());
  }

  try {
    auto now = t.net->parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
      if (now[i].shape() != params[i].first || now[i].dtype() != params[i].second)
        finding("accepted", "parameter " + std::to_string(i) + " changed shape or dtype");
    // Saved again, the state loads into a fresh TrainingState and saves to the same bytes.
    io::save_checkpoint(again, t.state(), 3, {{"fuzz", variant.words()}});
    Training u(variant);
    io::load_checkpoint(again, u.state(), io::LoadCheckpointOptions().strict_model(!variant.loose));
    io::save_checkpoint(again2, u.state(), 3, {{"fuzz", variant.words()}});
    if (read_file(again) != read_file(again2)) finding("accepted", "the loaded state does not round-trip");
    t.step();
  } catch (const std::exception& e) {
    finding("an accepted checkpoint leaves an unusable state", e.what());
  }
  return 0;
}
