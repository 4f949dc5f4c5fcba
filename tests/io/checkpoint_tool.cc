// A small trainer that kiln's checkpoint tests run as separate processes (test_checkpoint.cpp):
//
//   checkpoint_tool train  STEPS OUT [SAVE_AT CKPT]   train from scratch; with SAVE_AT, save a
//                                                     checkpoint after that step and stop there
//   checkpoint_tool resume CKPT STEPS OUT [--skip-generator NAME]
//                                                     load CKPT in this new process and go on
//   checkpoint_tool stall-write PATH MARKER           start writing a checkpoint to PATH, create
//                                                     MARKER half-way through and wait to be killed
//
// OUT receives a checkpoint of the final state. The model has dropout (its own Generator), the
// data come from another Generator, the optimizer is AdamW with a warm-up + cosine schedule.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/kiln.hpp>
#include <kiln/optim/optim.hpp>
#include <string>

using namespace kiln;
using namespace kiln::io;

namespace {

struct NetImpl : nn::Module {
  explicit NetImpl(Generator* dropout_gen)
      : fc1(register_module("fc1", nn::Linear(4, 32))),
        drop(register_module("drop", nn::Dropout(nn::DropoutOptions(0.25).generator(dropout_gen)))),
        norm(register_module("norm", nn::LayerNorm(32))),
        fc2(register_module("fc2", nn::Linear(32, 3))) {}
  Tensor forward(const Tensor& x) { return fc2(norm(drop(gelu(fc1(x))))); }
  nn::Linear fc1;
  nn::Dropout drop;
  nn::LayerNorm norm;
  nn::Linear fc2;
};
KILN_MODULE(Net);

constexpr std::int64_t kWarmup = 3, kTotal = 20;

// Everything a run owns. `seed` differs between a fresh run and a resumed one, so that a resume
// only matches when the checkpoint restores every part.
struct Run {
  explicit Run(std::uint64_t seed)
      : dropout_gen(seed + 1),
        data_gen(seed + 2),
        net((manual_seed(seed), &dropout_gen)),
        opt(net->parameters(), optim::AdamWOptions(1e-2).weight_decay(0.1)),
        sched(opt, kWarmup, kTotal, /*start_factor=*/0.1) {}

  io::TrainingState state(bool with_dropout_gen = true) {
    io::TrainingState s{.model = net.get(), .optimizer = opt, .scheduler = sched};
    s.generators["data"] = &data_gen;
    if (with_dropout_gen) s.generators["dropout"] = &dropout_gen;
    return s;
  }

  void step() {
    Tensor x = randn({16, 4}, {}, &data_gen);
    Tensor y = randn({16, 3}, {}, &data_gen);
    opt.zero_grad();
    mse_loss(net(x), y).backward();
    opt.step();
    sched.step();
  }

  Generator dropout_gen, data_gen;
  Net net;
  optim::AdamW opt;
  optim::WarmupCosineLR sched;
};

int usage() {
  std::fprintf(stderr,
               "usage: checkpoint_tool train STEPS OUT [SAVE_AT CKPT] | resume CKPT STEPS OUT "
               "[--skip-generator dropout] | stall-write PATH MARKER\n");
  return 2;
}

const char* g_marker = nullptr;

void stall_half_way(std::uint64_t written, std::uint64_t total) {
  if (written * 2 < total) return;
  std::ofstream(g_marker) << written << " of " << total << "\n";
  for (;;) pause();  // until SIGKILL
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) return usage();
  std::string mode = argv[1];
  if (mode == "train" && (argc == 4 || argc == 6)) {
    std::int64_t steps = std::stoll(argv[2]);
    std::int64_t save_at = argc == 6 ? std::stoll(argv[4]) : -1;
    Run run(100);
    for (std::int64_t s = 1; s <= steps; ++s) {
      run.step();
      if (s == save_at) {
        io::save_checkpoint(argv[5], run.state(), s, {{"note", "mid-run"}});
        return 0;
      }
    }
    io::save_checkpoint(argv[3], run.state(), steps);
    return 0;
  }
  if (mode == "resume" && (argc == 5 || (argc == 7 && std::string(argv[5]) == "--skip-generator"))) {
    std::int64_t steps = std::stoll(argv[3]);
    Run run(555);  // different seeds everywhere: only the checkpoint can make this match
    bool skip_dropout = argc == 7;
    io::CheckpointInfo info = io::load_checkpoint(argv[2], run.state(!skip_dropout));
    if (info.metadata.at("note") != "mid-run") throw Error("metadata did not survive");
    for (std::int64_t s = info.step + 1; s <= steps; ++s) run.step();
    io::save_checkpoint(argv[4], run.state(), steps);
    return 0;
  }
  if (mode == "stall-write" && argc == 4) {
    g_marker = argv[3];
    NamedTensors big;
    for (int i = 0; i < 8; ++i) big.emplace_back("t" + std::to_string(i), full({256 * 1024}, static_cast<double>(i)));
    io::detail::set_safetensors_write_hook(&stall_half_way);
    save_safetensors(argv[2], big, {{"version", "interrupted"}});
    std::fprintf(stderr, "checkpoint_tool: the write finished without stalling\n");
    return 1;
  }
  return usage();
} catch (const std::exception& e) {
  std::fprintf(stderr, "checkpoint_tool: %s\n", e.what());
  return 1;
}
