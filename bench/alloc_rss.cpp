// Resident memory of a training loop whose batch B and sequence length T are drawn at random
// each step, against the allocator's peak in-use bytes (issue 11, item 4: RSS <= 1.5 x peak).
// Memory, not time: the numbers do not depend on the machine's load.
//   build/bench/alloc_rss                  # 6000 steps, B in 1..32, T in 8..256
//   build/bench/alloc_rss --steps 200      # a quick look
// Prints one RESULT line: max RSS, RSS before training, peak in-use, max RSS / peak and
// (max RSS - RSS before) / peak, OS allocations and cache hits.
#include <kiln/kiln.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

using namespace kiln;

namespace {
double rss_mib() {
  std::ifstream f("/proc/self/statm");
  double pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1 << 20);
}
}  // namespace

int main(int argc, char** argv) {
  try {
    long steps = 6000;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
        char* end = nullptr;
        steps = std::strtol(argv[++i], &end, 10);
        if (*end != '\0' || steps < 1 || steps > 10'000'000) throw Error("--steps must be an integer in 1..10000000");
      } else {
        throw Error(std::string("unknown argument '") + argv[i] + "' (usage: alloc_rss [--steps N])");
      }
    }
    manual_seed(0);
    constexpr std::int64_t kVocab = 256, kDim = 64, kHidden = 256;
    nn::Embedding emb(kVocab, kDim);
    nn::Sequential mlp(nn::Linear(nn::LinearOptions(kDim, kHidden)), nn::GELU(),
                       nn::Linear(nn::LinearOptions(kHidden, kVocab)));
    auto params = emb->parameters();
    for (const Tensor& p : mlp->parameters()) params.push_back(p);
    optim::AdamW opt(params, optim::AdamWOptions(1e-3));
    std::mt19937 rng(1);
    std::uniform_int_distribution<std::int64_t> batch(1, 32), length(8, 256);
    const double rss0 = rss_mib();  // the program before training: code, libraries, BLAS buffers
    double max_rss = 0, rss_after_first = 0;
    for (long s = 0; s < steps; ++s) {
      const std::int64_t B = batch(rng), T = length(rng);
      Tensor tokens = randint(0, kVocab, {B, T});
      opt.zero_grad();
      Tensor logits = mlp->forward(emb->forward(tokens));
      Tensor loss = cross_entropy(reshape(logits, {B * T, kVocab}), reshape(tokens, {B * T}));
      loss.backward();
      opt.step();
      max_rss = std::max(max_rss, rss_mib());
      if (s == 0) rss_after_first = max_rss;
    }
    const AllocatorStats st = cpu_allocator_stats();
    const double peak = static_cast<double>(st.peak_in_use_bytes) / (1 << 20);
    std::printf(
        "RESULT alloc_rss steps=%ld max_rss_mib=%.1f rss_before_mib=%.1f peak_in_use_mib=%.1f ratio=%.2f "
        "growth_ratio=%.2f rss_after_step1_mib=%.1f "
        "os_allocs=%llu cache_hits=%llu cached_mib=%.1f\n",
        steps, max_rss, rss0, peak, max_rss / peak, (max_rss - rss0) / peak, rss_after_first,
        static_cast<unsigned long long>(st.os_allocs), static_cast<unsigned long long>(st.cache_hits),
        static_cast<double>(st.cached_bytes) / (1 << 20));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloc_rss: %s\n", e.what());
    return 1;
  }
}
