// Attention benchmark on the anchors' MHA workloads (../shared/anchors/src/mha_bench.cpp).
// For now it times the attention core only, kiln::nn::functional::scaled_dot_product_attention
// on q, k, v of (B, H, T, E/H) split off (B, T, E) buffers the way a MultiHeadAttention layer
// does (no input/output projections yet: compare with the anchors' full-module numbers for
// context only).
//   build/bench/mha_bench                                  every row, each in its own process
//   build/bench/mha_bench B T E H causal(0|1) fwd|fwdbwd [threads=2] [window=L] [alibi=1] [sinks=1]
//   fwd    : output under NoGradGuard
//   fwdbwd : output with autograd, then backward(gy) for q, k and v (grads reset untimed)
//   window=L: sliding window of L keys to the left (and 0 to the right when causal, L otherwise);
//   alibi=1 : ALiBi with kiln::alibi_slopes(H); sinks=1: one learned sink logit per head.
// One `RESULT mha impl=kiln_sdpa ... scope=core ...` line per row (format in bench/README.md).
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
namespace F = kiln::nn::functional;

namespace {

using kiln::bench::cpu_time_s;
using kiln::bench::now_s;
using kiln::bench::peak_rss_mib;
using kiln::bench::time_reps;

struct Extras {
  std::int64_t window = -1;
  bool alibi = false, sinks = false;
};

int run_row(std::int64_t B, std::int64_t T, std::int64_t E, std::int64_t H, bool causal, const std::string& mode,
            int threads, const Extras& x) {
  set_num_threads(threads);
  const std::int64_t D = E / H;
  Generator g(0);
  // (B, T, E) buffers viewed as (B, H, T, D): the head split of a MultiHeadAttention layer.
  auto heads = [&](const Tensor& x) { return x.reshape({B, T, H, D}).transpose(1, 2); };
  Tensor qb = randn({B, T, E}, {}, &g), kb = randn({B, T, E}, {}, &g), vb = randn({B, T, E}, {}, &g);
  Tensor gy = randn({B, H, T, D}, {}, &g);
  SdpaOptions opts = SdpaOptions().is_causal(causal);
  if (x.window >= 0) opts.window_left(x.window).window_right(causal ? 0 : x.window);
  if (x.alibi) opts.alibi_slopes(alibi_slopes(H));
  if (x.sinks) opts.sinks(randn({H}, {}, &g));
  const double setup_rss = peak_rss_mib();
  std::vector<double> t;
  double cpu0 = cpu_time_s(), wall0 = now_s();
  if (mode == "fwd") {
    NoGradGuard ng;
    Tensor q = heads(qb), k = heads(kb), v = heads(vb);
    t = time_reps([] {}, [&] { (void)F::scaled_dot_product_attention(q, k, v, opts); });
  } else if (mode == "fwdbwd") {
    Tensor ql = qb.requires_grad_(), kl = kb.requires_grad_(), vl = vb.requires_grad_();
    t = time_reps(
        [&] {
          for (Tensor* x : {&ql, &kl, &vl}) x->set_grad(Tensor());
        },
        [&] {
          auto r = F::scaled_dot_product_attention(heads(ql), heads(kl), heads(vl), opts);
          r.output.backward(gy);
        });
  } else {
    std::fprintf(stderr, "unknown mode %s (fwd or fwdbwd)\n", mode.c_str());
    return 2;
  }
  const double util = (cpu_time_s() - cpu0) / (now_s() - wall0);
  std::vector<double> s = t;
  std::sort(s.begin(), s.end());
  const double med = s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  // Attention-core FLOPs as computed: q k^T and p v over the (causally halved) T x T logits;
  // backward counts 2.5x (recomputed q k^T, dP, dV, dK, dQ).
  // With a window, the (query, key) pairs actually visible.
  double pairs = static_cast<double>(B * H * T) * static_cast<double>(T) * (causal ? 0.5 : 1.0);
  if (x.window >= 0) {
    double n = 0;
    for (std::int64_t t = 0; t < T; ++t)
      n += static_cast<double>(std::min(T - 1, t + (causal ? 0 : x.window)) - std::max<std::int64_t>(0, t - x.window) +
                               1);
    pairs = static_cast<double>(B * H) * n;
  }
  const double fwd_flop = 4.0 * pairs * static_cast<double>(D);
  const double flop = mode == "fwd" ? fwd_flop : 3.5 * fwd_flop;
  fmt::print(
      "RESULT mha impl=kiln_sdpa scope=core B={} T={} E={} H={} causal={} window={} alibi={} sinks={} mode={} "
      "threads={} "
      "reps={} median_ms={:.3f} min_ms={:.3f} core_gflops={:.1f} setup_rss_mib={:.1f} peak_rss_mib={:.1f} "
      "cpu_util={:.2f}\n",
      B, T, E, H, causal ? 1 : 0, x.window, x.alibi ? 1 : 0, x.sinks ? 1 : 0, mode, threads, t.size(), med * 1e3,
      s.front() * 1e3, flop / med / 1e9, setup_rss, peak_rss_mib(), util);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 7) {
    Extras x;
    int threads = 2;
    for (int i = 7; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("window=", 0) == 0) x.window = std::atoll(a.c_str() + 7);
      else if (a.rfind("alibi=", 0) == 0) x.alibi = std::atoi(a.c_str() + 6) != 0;
      else if (a.rfind("sinks=", 0) == 0) x.sinks = std::atoi(a.c_str() + 6) != 0;
      else threads = std::atoi(a.c_str());
    }
    return run_row(std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]),
                   std::atoi(argv[5]) != 0, argv[6], threads, x);
  }
  if (argc != 1 && !(argc == 2 && std::strcmp(argv[1], "--all") == 0)) {
    std::fprintf(stderr, "usage: %s [B T E H causal(0|1) fwd|fwdbwd [threads=2] [window=L] [alibi=1] [sinks=1]]\n",
                 argv[0]);
    return 2;
  }
  // Every row in a fresh process, so peak RSS is per row.
  fmt::print("# kiln mha_bench: attention core only (scaled_dot_product_attention), no projections yet\n");
  std::fflush(stdout);
  const std::int64_t rows[][4] = {{32, 64, 128, 4}, {8, 256, 256, 8}, {4, 1024, 256, 8}, {1, 4096, 256, 8}};
  int rc = 0;
  for (const auto& r : rows)
    for (int causal : {0, 1})
      for (const char* mode : {"fwd", "fwdbwd"}) {
        std::string cmd = fmt::format("'{}' {} {} {} {} {} {}", argv[0], r[0], r[1], r[2], r[3], causal, mode);
        rc |= std::system(cmd.c_str());
      }
  // Local attention: a 256-key causal window over 4096 tokens (compare with the full causal rows).
  for (const char* mode : {"fwd", "fwdbwd"}) {
    std::string cmd = fmt::format("'{}' 1 4096 256 8 1 {} 2 window=256", argv[0], mode);
    rc |= std::system(cmd.c_str());
  }
  return rc == 0 ? 0 : 1;
}
