// Autoregressive decoding benchmark: a small pre-norm decoder stack (LayerNorm ->
// nn::MultiHeadAttention (causal, KV cache) -> residual, LayerNorm -> nn::FeedForward -> residual)
// prefills P tokens, then decodes N tokens one at a time under NoGradGuard. The machine is shared,
// so every row reports process CPU time (all threads) beside wall time, over several repeats.
//   build/bench/decode_bench                 every row (threads=2)
//   build/bench/decode_bench quick           fewer repeats
//   build/bench/decode_bench threads=1 ...   another thread count
//   build/bench/decode_bench decode|mha      only the model rows / only the single-call rows
//   build/bench/decode_bench row=I norecompute   only model row I, without the recompute comparison
// Rows:
//   RESULT decode mode=cache     ... per-token median wall ms / CPU ms and tokens/s with the cache
//   RESULT decode mode=recompute ... the same model recomputing the whole causal prefix each step
//                                    (what decoding without a cache costs), and the speedup
//   RESULT decode_mha ...            one MultiHeadAttention call, T=1 query over S cached keys
//   RESULT decode_sdpa ...           the attention core alone for the same shape
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <kiln/kiln.hpp>
#include <kiln/nn/attention.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"

using namespace kiln;

namespace {

using kiln::bench::now_s;

// User + system time of every thread of the process (getrusage).
double cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Times `reps` calls of fn: per-call wall times, and CPU time per call over the whole run (the
// kernel accounts CPU time in ticks on some systems, so per-call CPU readings would be noise).
struct Timing {
  double wall_med_ms = 0, wall_mean_ms = 0, cpu_ms = 0;
};
Timing time_calls(int reps, const std::function<void(int)>& fn) {
  std::vector<double> w;
  const double c0 = cpu_s();
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_s();
    fn(i);
    w.push_back(now_s() - t0);
  }
  Timing t;
  t.cpu_ms = (cpu_s() - c0) / reps * 1e3;
  t.wall_med_ms = median(w) * 1e3;
  double sum = 0;
  for (double x : w) sum += x;
  t.wall_mean_ms = sum / reps * 1e3;
  return t;
}

struct Block {
  nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  nn::MultiHeadAttention attn{nullptr};
  nn::FeedForward ff{nullptr};
};

struct Model {
  std::vector<Block> blocks;
  Model(std::int64_t E, std::int64_t H, std::int64_t Hkv, int layers, Generator& g) {
    for (int i = 0; i < layers; ++i) {
      Block b;
      b.ln1 = nn::LayerNorm(E);
      b.ln2 = nn::LayerNorm(E);
      b.attn = nn::MultiHeadAttention(nn::MultiHeadAttentionOptions(E, H).num_kv_heads(Hkv).generator(&g));
      b.ff = nn::FeedForward(nn::FeedForwardOptions(E));
      b.attn->eval();
      b.ff->eval();
      blocks.push_back(b);
    }
  }
  // x (B, T, E); caches null: a full causal forward over x.
  Tensor forward(Tensor x, std::vector<nn::KVCache>* caches) {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      Block& b = blocks[i];
      x = x + b.attn(b.ln1(x), nn::MhaForward().is_causal(true).cache(caches ? &(*caches)[i] : nullptr));
      x = x + b.ff(b.ln2(x));
    }
    return x;
  }
};

struct Row {
  std::int64_t B, E, H, Hkv;
  int layers;
  std::int64_t P, N;  // prefill length, decoded tokens
};

void decode_row(const Row& r, int threads, int repeats, bool recompute) {
  Generator g(0);
  Model m(r.E, r.H, r.Hkv, r.layers, g);
  NoGradGuard ng;
  const std::int64_t L = r.P + r.N;
  Tensor seq = randn({r.B, L, r.E}, {}, &g);
  std::vector<nn::KVCache> caches;
  for (auto& b : m.blocks) caches.push_back(b.attn->make_kv_cache({r.B}, L));
  // Per-token wall times over every repeat; CPU per token per repeat.
  std::vector<double> wall, mean, cpu, prefill;
  for (int rep = 0; rep < repeats + 1; ++rep) {  // repeat 0 warms up
    for (auto& c : caches) c.reset();
    const double p0 = now_s();
    (void)m.forward(seq.narrow(1, 0, r.P), &caches);
    const double pf = now_s() - p0;
    Timing t = time_calls(static_cast<int>(r.N), [&](int i) { (void)m.forward(seq.narrow(1, r.P + i, 1), &caches); });
    if (rep == 0) continue;
    prefill.push_back(pf);
    cpu.push_back(t.cpu_ms);
    wall.push_back(t.wall_med_ms);
    mean.push_back(t.wall_mean_ms);
  }
  const double wms = median(wall), cms = median(cpu);
  const std::string shape = fmt::format("B={} E={} H={} Hkv={} layers={} prefill={} tokens={} threads={}", r.B, r.E,
                                        r.H, r.Hkv, r.layers, r.P, r.N, threads);
  fmt::print(
      "RESULT decode mode=cache {} median_token_ms={:.4f} mean_token_ms={:.4f} cpu_token_ms={:.4f} "
      "tokens_per_s={:.0f} prefill_ms={:.2f} repeats={}\n",
      shape, wms, median(mean), cms, static_cast<double>(r.B) / wms * 1e3, median(prefill) * 1e3, repeats);
  std::fflush(stdout);
  if (!recompute) return;
  // Without a cache: each step runs the whole prefix; a few steps at the same lengths suffice.
  const int steps = static_cast<int>(std::min<std::int64_t>(r.N, 4));
  std::vector<double> rwall, rcpu;
  for (int rep = 0; rep < std::max(1, repeats / 2) + 1; ++rep) {
    Timing t = time_calls(steps, [&](int i) {
      const std::int64_t len = r.P + r.N / 2 + i;
      (void)m.forward(seq.narrow(1, 0, len), nullptr);
    });
    if (rep == 0) continue;
    rwall.push_back(t.wall_med_ms);
    rcpu.push_back(t.cpu_ms);
  }
  const double rw = median(rwall), rc = median(rcpu);
  fmt::print(
      "RESULT decode mode=recompute {} median_token_ms={:.4f} cpu_token_ms={:.4f} tokens_per_s={:.0f} "
      "speedup_wall={:.1f} speedup_cpu={:.1f}\n",
      shape, rw, rc, static_cast<double>(r.B) / rw * 1e3, rw / wms, rc / cms);
  std::fflush(stdout);
}

// One MultiHeadAttention call with T=1 over S keys (S - 1 cached), and the core alone.
void mha_row(std::int64_t B, std::int64_t E, std::int64_t H, std::int64_t Hkv, std::int64_t S, int threads,
             int repeats) {
  Generator g(1);
  nn::MultiHeadAttention attn(nn::MultiHeadAttentionOptions(E, H).num_kv_heads(Hkv).generator(&g));
  attn->eval();
  NoGradGuard ng;
  nn::KVCache cache = attn->make_kv_cache({B}, S);
  (void)attn(randn({B, S - 1, E}, {}, &g), nn::MhaForward().is_causal(true).cache(&cache));
  Tensor x = randn({B, 1, E}, {}, &g);
  const int calls = 200;
  std::vector<double> wall, mean, cpu;
  for (int rep = 0; rep < repeats + 1; ++rep) {
    Timing t = time_calls(calls, [&](int) {
      cache.crop(S - 1);
      (void)attn(x, nn::MhaForward().is_causal(true).cache(&cache));
    });
    if (rep == 0) continue;
    wall.push_back(t.wall_med_ms);
    mean.push_back(t.wall_mean_ms);
    cpu.push_back(t.cpu_ms);
  }
  fmt::print(
      "RESULT decode_mha B={} E={} H={} Hkv={} T=1 S={} threads={} median_ms={:.4f} mean_ms={:.4f} "
      "cpu_ms={:.4f}\n",
      B, E, H, Hkv, S, threads, median(wall), median(mean), median(cpu));

  const std::int64_t D = E / H;
  Tensor q = randn({B, H, 1, D}, {}, &g), k = randn({B, Hkv, S, D}, {}, &g), v = randn({B, Hkv, S, D}, {}, &g);
  nn::functional::SdpaOptions so;
  so.is_causal(true);
  wall.clear();
  mean.clear();
  cpu.clear();
  for (int rep = 0; rep < repeats + 1; ++rep) {
    Timing t = time_calls(calls, [&](int) { (void)nn::functional::scaled_dot_product_attention(q, k, v, so); });
    if (rep == 0) continue;
    wall.push_back(t.wall_med_ms);
    mean.push_back(t.wall_mean_ms);
    cpu.push_back(t.cpu_ms);
  }
  fmt::print(
      "RESULT decode_sdpa B={} H={} Hkv={} D={} T=1 S={} threads={} median_ms={:.4f} mean_ms={:.4f} "
      "cpu_ms={:.4f}\n",
      B, H, Hkv, D, S, threads, median(wall), median(mean), median(cpu));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, repeats = 5, row = -1;
  bool recompute = true;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "threads=", 8) == 0) threads = std::atoi(argv[i] + 8);
    else if (std::strcmp(argv[i], "quick") == 0) repeats = 2;
    else if (std::strncmp(argv[i], "row=", 4) == 0) row = std::atoi(argv[i] + 4);
    else if (std::strcmp(argv[i], "norecompute") == 0) recompute = false;
    else if (std::strcmp(argv[i], "decode") == 0 || std::strcmp(argv[i], "mha") == 0) only = argv[i];
    else {
      std::fprintf(stderr, "usage: %s [threads=N] [quick] [decode|mha] [row=I] [norecompute]\n", argv[0]);
      return 2;
    }
  }
  set_num_threads(threads);
  const Row rows[] = {
      {1, 128, 4, 4, 2, 128, 64},  // charlm-sized
      {1, 256, 8, 2, 4, 256, 64},  // GQA
      {1, 256, 8, 8, 4, 768, 64},  // long cache
      {4, 256, 8, 2, 4, 768, 64},  // batched
  };
  if (only != "mha")
    for (int i = 0; i < static_cast<int>(std::size(rows)); ++i)
      if (row < 0 || row == i) decode_row(rows[i], threads, repeats, recompute);
  if (only != "decode")
    for (std::int64_t S : {128, 768, 2048}) {
      mha_row(1, 256, 8, 8, S, threads, repeats);
      mha_row(1, 256, 8, 2, S, threads, repeats);
    }
  return 0;
}
