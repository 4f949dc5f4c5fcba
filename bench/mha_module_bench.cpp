// nn::MultiHeadAttention benchmark: the full module (q/k/v/out projections included) on the
// anchors' MHA workloads (../shared/anchors/src/mha_bench.cpp, libtorch's
// torch::nn::MultiheadAttention), same methodology: self-attention on x (B, T, E), bias on,
// dropout 0, need_weights off, fp32 (or bf16); >= 1 warm-up call and 0.5 s of warm-up, then the
// median of 3..30 timed calls within ~2 s.
//   build/bench/mha_module_bench [precision=bf16]         every row, each in its own process
//   build/bench/mha_module_bench B T E H causal(0|1) fwd|fwdbwd [threads=2] [precision=fp32|bf16]
//   precision=bf16: module, input and upstream gradient in bfloat16 (GEMMs and attention on bf16
//   dot products with float32 accumulation), beside PyTorch's autocast=bf16 rows
//   fwd    : y = mha(x) under NoGradGuard
//   fwdbwd : y = mha(x) with autograd, then y.backward(gy): gradients for x and every parameter
//            (gradients reset to none, untimed, before each call)
// Causal uses the module's is_causal flag (the anchors pass libtorch a (T, T) -inf mask).
// One `RESULT mha impl=kiln ...` line per row (format in bench/README.md); nominal_gflops counts the
// full T x T attention as the anchors do.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <kiln/kiln.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"

using namespace kiln;

namespace {

using kiln::bench::cpu_time_s;
using kiln::bench::now_s;
using kiln::bench::peak_rss_mib;
using kiln::bench::time_reps;

int run_row(std::int64_t B, std::int64_t T, std::int64_t E, std::int64_t H, bool causal, const std::string& mode,
            int threads, const std::string& precision) {
  set_num_threads(threads);
  Generator g(0);
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(E, H).dropout(0.0).bias(true).generator(&g));
  mha->train(mode == "fwdbwd");
  Tensor x = randn({B, T, E}, {}, &g), gy = randn({B, T, E}, {}, &g);
  if (precision == "bf16") {
    mha->to(kBFloat16);
    x = x.to(kBFloat16);
    gy = gy.to(kBFloat16);
  } else if (precision != "fp32") {
    std::fprintf(stderr, "unknown precision %s (fp32 or bf16)\n", precision.c_str());
    return 2;
  }
  const nn::MhaForward f = nn::MhaForward().is_causal(causal);
  const double setup_rss = peak_rss_mib();
  std::vector<double> t;
  double cpu0 = cpu_time_s(), wall0 = now_s();
  if (mode == "fwd") {
    NoGradGuard ng;
    t = time_reps([] {}, [&] { (void)mha(x, f); });
  } else if (mode == "fwdbwd") {
    x.requires_grad_();
    t = time_reps(
        [&] {
          x.set_grad(Tensor());
          mha->zero_grad(/*set_to_none=*/true);
        },
        [&] { mha(x, f).backward(gy); });
  } else {
    std::fprintf(stderr, "unknown mode %s (fwd or fwdbwd)\n", mode.c_str());
    return 2;
  }
  const double util = (cpu_time_s() - cpu0) / (now_s() - wall0);
  std::vector<double> s = t;
  std::sort(s.begin(), s.end());
  const double med = s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  // The anchors' nominal count: projections 8*B*T*E^2, q k^T and p v over the full T x T:
  // 4*B*T^2*E; backward ~2x forward.
  const double fwd_flop = 8.0 * static_cast<double>(B * T) * static_cast<double>(E * E) +
                          4.0 * static_cast<double>(B * T) * static_cast<double>(T * E);
  const double flop = mode == "fwd" ? fwd_flop : 3.0 * fwd_flop;
  fmt::print(
      "RESULT mha impl=kiln B={} T={} E={} H={} causal={} mode={} threads={} precision={} reps={} median_ms={:.3f} "
      "min_ms={:.3f} max_ms={:.3f} nominal_gflops={:.1f} setup_rss_mib={:.1f} peak_rss_mib={:.1f} cpu_util={:.2f}\n",
      B, T, E, H, causal ? 1 : 0, mode, threads, precision, t.size(), med * 1e3, s.front() * 1e3, s.back() * 1e3,
      flop / med / 1e9, setup_rss, peak_rss_mib(), util);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A trailing precision=... argument applies to one row or to all of them.
  std::string precision = "fp32";
  if (argc > 1 && std::strncmp(argv[argc - 1], "precision=", 10) == 0) precision = argv[--argc] + 10;
  if (argc >= 7) {
    return run_row(std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]),
                   std::atoi(argv[5]) != 0, argv[6], argc > 7 ? std::atoi(argv[7]) : 2, precision);
  }
  if (argc != 1 && !(argc == 2 && std::strcmp(argv[1], "--all") == 0)) {
    std::fprintf(stderr, "usage: %s [B T E H causal(0|1) fwd|fwdbwd [threads=2]] [precision=fp32|bf16]\n", argv[0]);
    return 2;
  }
  // Every row in a fresh process, so peak RSS is per row.
  const std::int64_t rows[][4] = {{32, 64, 128, 4}, {8, 256, 256, 8}, {4, 1024, 256, 8}, {1, 4096, 256, 8}};
  int rc = 0;
  for (const auto& r : rows)
    for (int causal : {0, 1})
      for (const char* mode : {"fwd", "fwdbwd"}) {
        std::string cmd = fmt::format("'{}' {} {} {} {} {} {} 2 precision={}", argv[0], r[0], r[1], r[2], r[3], causal,
                                      mode, precision);
        rc |= std::system(cmd.c_str());
      }
  return rc == 0 ? 0 : 1;
}
