// Foundation benchmarks: the machine's float32 FMA and bf16 dot-product peaks, matmul GFLOP/s in
// float32 and bf16, softmax / layer_norm / add GB/s, per-op overhead, random fills and dropout
// (scalar against vector Philox, draw + mul against one pass), gelu / layer_norm backward (composite
// against fused), rms_norm forward and forward+backward (composite against fused). Prints one
// `RESULT ...` line per measurement (format in bench/README.md).
//   build/bench/ops_bench [--threads 2] [--quick] [--only rms_norm]
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <kiln/core/cpu/bf16_dot.hpp>
#include <kiln/core/cpu/convert.hpp>
#include <kiln/core/cpu/cpu_backend.hpp>
#include <kiln/core/cpu/gemm_lowp.hpp>
#include <kiln/core/cpu/random.hpp>
#include <kiln/kiln.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "peak.hpp"

using namespace kiln;
using Clock = std::chrono::steady_clock;

namespace {

using kiln::bench::peak_rss_mib;

// Median seconds per call: >= 1 warm-up call, then calls until min_reps and ~budget_s.
double median_seconds(const std::function<void()>& fn, int min_reps, double budget_s, int inner = 1) {
  fn();
  std::vector<double> ts;
  auto start = Clock::now();
  while (static_cast<int>(ts.size()) < min_reps ||
         std::chrono::duration<double>(Clock::now() - start).count() < budget_s) {
    auto t0 = Clock::now();
    for (int i = 0; i < inner; ++i) fn();
    ts.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / inner);
    if (ts.size() >= 2000) break;
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// 16-bit element paths (casts both ways, strided cast, add, mul, fill) beside float32, with the
// bulk conversions at the scalar level (conv=scalar: what the compiler makes of half.hpp's
// formulas) and at the CPU's best (conv=vector), alternated in rounds; medians of the rounds.
void sixteen_bit_rows(int threads, double budget) {
  const std::int64_t N = std::int64_t{1} << 22, R = 2048, C = N / R;
  const int best = cpu::set_convert_level(-1), levels[] = {0, cpu::convert_level()};
  cpu::set_convert_level(best);
  for (DType dt : {kBFloat16, kFloat16}) {
    Tensor f = randn({R, C}), g = randn({R, C});
    Tensor a = f.to(dt), b = g.to(dt), ft = f.transpose(0, 1);
    struct Row {
      const char* op;
      std::function<void(DType)> run;  // given the element dtype: dt, or float32 for the baseline
    };
    const Row rows[] = {
        {"to_float32", [&](DType d) { (void)(d == kFloat32 ? f.clone() : a.to(kFloat32)); }},
        {"from_float32", [&](DType d) { (void)(d == kFloat32 ? f.clone() : f.to(d)); }},
        {"from_float32_transposed", [&](DType d) { (void)(d == kFloat32 ? ft.contiguous() : ft.to(d)); }},
        {"add", [&](DType d) { (void)(d == kFloat32 ? add(f, g) : add(a, b)); }},
        {"mul", [&](DType d) { (void)(d == kFloat32 ? mul(f, g) : mul(a, b)); }},
        {"fill", [&](DType d) { (void)(d == kFloat32 ? f.fill_(0.5) : a.fill_(0.5)); }},
    };
    for (const Row& row : rows) {
      std::vector<double> t[3];  // float32, scalar, vector
      for (int round = 0; round < 5; ++round) {
        t[0].push_back(median_seconds([&] { row.run(kFloat32); }, 3, budget / 10));
        for (int l = 0; l < 2; ++l) {
          cpu::set_convert_level(levels[l]);
          t[1 + l].push_back(median_seconds([&] { row.run(dt); }, 3, budget / 10));
        }
        cpu::set_convert_level(best);
      }
      double m[3];
      for (int k = 0; k < 3; ++k) {
        std::sort(t[k].begin(), t[k].end());
        m[k] = t[k][t[k].size() / 2];
      }
      fmt::print(
          "RESULT elem16 impl=kiln op={} dtype={} numel={} threads={} float32_ms={:.3f} scalar_ms={:.3f} "
          "vector_ms={:.3f} vector_vs_scalar={:.2f} vector_vs_float32={:.2f}\n",
          row.op, dtype_name(dt), N, threads, m[0] * 1e3, m[1] * 1e3, m[2] * 1e3, m[2] / m[1], m[2] / m[0]);
    }
  }
}

// Random fills and dropout: the scalar Philox blocks (cpu::random_scalar, the code before the
// vector path) against the backend's vector path, and dropout as a draw + mul against the
// one-pass Backend::dropout; alternated in rounds, medians of the rounds, in ns per element.
void random_rows(int threads, double budget) {
  const std::int64_t N = std::int64_t{1} << 22;
  Backend& be = cpu::cpu_backend();
  for (DType dt : {kFloat32, kBFloat16}) {
    Tensor mask = empty({N}, dt), y = empty({N}, dt), x = randn({N}).to(dt);
    const RandomSpec uniform{RandomSpec::Uniform, 0.0, 1.0, 7, 0}, keep{RandomSpec::Bernoulli, 0.9, 1 / 0.9, 7, 0};
    struct Row {
      const char* op;
      std::function<void()> old_path, new_path;
    };
    const Row rows[] = {
        {"random_uniform", [&] { cpu::random_scalar(y, uniform); }, [&] { be.random(y, uniform); }},
        {"random_bernoulli", [&] { cpu::random_scalar(y, keep); }, [&] { be.random(y, keep); }},
        // old: the scalar mask draw, then binary Mul (4 tensor passes); new: one pass (3).
        {"dropout",
         [&] {
           cpu::random_scalar(mask, keep);
           be.binary(BinaryOp::Mul, x, mask, y);
         },
         [&] { be.dropout(x, mask, y, keep); }},
    };
    for (const Row& row : rows) {
      std::vector<double> t[2];
      for (int round = 0; round < 5; ++round) {
        t[0].push_back(median_seconds(row.old_path, 3, budget / 10));
        t[1].push_back(median_seconds(row.new_path, 3, budget / 10));
      }
      for (auto& v : t) std::sort(v.begin(), v.end());
      const double o = t[0][2], n = t[1][2];
      fmt::print(
          "RESULT random impl=kiln op={} dtype={} numel={} threads={} old_ns_per_elem={:.3f} new_ns_per_elem={:.3f} "
          "new_vs_old={:.2f}\n",
          row.op, dtype_name(dt), N, threads, o * 1e9 / N, n * 1e9 / N, n / o);
    }
  }
}

// rms_norm as the composite tensor-op chain it was (old) and as the fused op (new), forward in
// no-grad mode and forward + backward with a dense incoming gradient, float32 with a weight, at
// GPT-like activation sizes; alternating rounds, medians of the rounds.
void rms_norm_rows(int threads, double budget) {
  for (auto [R, C] : {std::pair<std::int64_t, std::int64_t>{2048, 512}, {8192, 128}}) {
    Tensor x = randn({R, C}).requires_grad_(), w = (randn({C}) + 1.0).detach().requires_grad_(), g = randn({R, C});
    auto old_rms = [&] { return x * rsqrt(mean(square(x), {-1}, true) + 1e-6) * w; };
    auto new_rms = [&] { return rms_norm(x, {C}, w, 1e-6); };
    for (const char* mode : {"fwd", "fwdbwd"}) {
      const bool bwd = mode[3] == 'b';
      auto run = [&](const std::function<Tensor()>& f) {
        return [&, f] {
          GradModeGuard gm(bwd);
          Tensor y = f();
          if (bwd) y.backward(g);
        };
      };
      std::function<void()> paths[2] = {run(old_rms), run(new_rms)};
      std::vector<double> t[2];
      for (int round = 0; round < 5; ++round)
        for (int p = 0; p < 2; ++p) t[p].push_back(median_seconds(paths[p], 3, budget / 5));
      for (auto& v : t) std::sort(v.begin(), v.end());
      fmt::print(
          "RESULT rms_norm impl=kiln mode={} rows={} cols={} threads={} old_ms={:.3f} new_ms={:.3f} "
          "new_vs_old={:.2f}\n",
          mode, R, C, threads, t[0][2] * 1e3, t[1][2] * 1e3, t[1][2] / t[0][2]);
    }
    x.set_grad(Tensor());
    w.set_grad(Tensor());
  }
}

// linear's backward in bfloat16 at GPT small's shapes (qkv, fc1, fc2, lm head): the two GEMMs
// as separate calls, each widening g to float32 (old, Backend's default), beside CpuBackend's one
// call sharing one widened g (new); alternating rounds, medians of the rounds. Where the bf16
// GEMM runs on oneDNN (bf16 dot products) both rows take the same path.
void linear_backward_rows(int threads, double budget) {
  fmt::print("# linear_backward bf16 widens g once: {}\n", cpu::gemm_lowp_widens(true) ? "yes" : "no (oneDNN)");
  for (auto [R, K, N] :
       {std::array<std::int64_t, 3>{2048, 128, 384}, {2048, 128, 512}, {2048, 512, 128}, {2048, 128, 65}}) {
    Tensor g = randn({R, N}).to(kBFloat16), x = randn({R, K}).to(kBFloat16), w = randn({N, K}).to(kBFloat16);
    Tensor gx = empty({R, K}, kBFloat16), gw = empty({N, K}, kBFloat16);
    auto& be = cpu::cpu_backend();
    std::function<void()> paths[2] = {[&] { be.Backend::linear_backward(g, x, w, gx, gw); },
                                      [&] { be.linear_backward(g, x, w, gx, gw); }};
    std::vector<double> t[2];
    for (int round = 0; round < 5; ++round)
      for (int p = 0; p < 2; ++p) t[p].push_back(median_seconds(paths[p], 3, budget / 5));
    for (auto& v : t) std::sort(v.begin(), v.end());
    fmt::print(
        "RESULT linear_backward impl=kiln dtype=bf16 rows={} in={} out={} threads={} old_ms={:.3f} new_ms={:.3f} "
        "new_vs_old={:.2f}\n",
        R, K, N, threads, t[0][2] * 1e3, t[1][2] * 1e3, t[1][2] / t[0][2]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
  }
  set_num_threads(threads);
  const double budget = quick ? 0.2 : 1.0;
  fmt::print("# kiln ops_bench threads={} blas={}\n", threads, cpu::blas_info());
  NoGradGuard ng;
  if (only == "rms_norm" || only == "linear_backward") {
    if (only == "rms_norm") rms_norm_rows(threads, budget);
    else linear_backward_rows(threads, budget);
    return 0;
  }

  // Peaks first, on a quiet machine they bound what the GEMMs below can reach.
  const bench::PeakIsa isa;
  const long iters = quick ? 5'000'000 : 50'000'000;
  double fp32_peak = 0, bf16_peak = 0;
  if (isa.avx512 || isa.avx2) {
    fp32_peak = isa.avx512 ? bench::peak_gflops(threads, 5, iters, bench::fma512_gflops)
                           : bench::peak_gflops(threads, 5, iters, bench::fma256_gflops);
    fmt::print("RESULT peak dtype=float32 isa={} threads={} gflops={:.1f}\n", isa.avx512 ? "avx512" : "avx2", threads,
               fp32_peak);
  }
  if (isa.bf16) {
    bf16_peak = bench::peak_gflops(threads, 5, iters, bench::dpbf16_gflops);
    fmt::print("RESULT peak dtype=bf16 isa=avx512_bf16 threads={} gflops={:.1f}\n", threads, bf16_peak);
  } else {
    fmt::print("# no AVX512-BF16 on this CPU: bf16 matmul runs on the float32 path\n");
  }
  double amx_peak = 0;
  if (cpu::amx_bf16_usable()) {
    amx_peak = bench::peak_gflops(threads, 5, iters / 100, bench::amx_bf16_gflops);
    fmt::print("RESULT peak dtype=bf16 isa=amx threads={} gflops={:.1f}\n", threads, amx_peak);
  }
  fmt::print("# bf16 gemm: {}\n", cpu::gemm_lowp_path(true));

  for (std::int64_t n : {256, 512, 1024, 2048}) {
    Tensor a = randn({n, n}), b = randn({n, n});
    double s = median_seconds([&] { (void)matmul(a, b); }, 5, budget);
    double gf = 2.0 * n * n * n / s / 1e9;
    fmt::print("RESULT matmul impl=kiln n={} threads={} median_ms={:.3f} gflops={:.1f} pct_of_peak={:.1f}\n", n,
               threads, s * 1e3, gf, fp32_peak > 0 ? 100 * gf / fp32_peak : 0.0);
  }
  // bf16 GEMM against the peak of the path it takes: bf16 dot products, or float32 FMA after
  // conversion (where vdpbf16ps is absent or measured slower than float32, core/cpu/bf16_dot.hpp).
  const std::string path = cpu::gemm_lowp_path(true);
  const bool dot = path.rfind("onednn", 0) == 0, amx = dot && path.find("amx") != std::string::npos;
  const double bf16_path_peak = amx ? amx_peak : dot ? bf16_peak : fp32_peak;
  for (std::int64_t n : {256, 512, 1024, 2048}) {
    Tensor a = randn({n, n}).to(kBFloat16), b = randn({n, n}).to(kBFloat16);
    double s = median_seconds([&] { (void)matmul(a, b); }, 5, budget);
    double gf = 2.0 * n * n * n / s / 1e9;
    fmt::print(
        "RESULT matmul impl=kiln dtype=bf16 path={} n={} threads={} median_ms={:.3f} gflops={:.1f} "
        "pct_of_peak={:.1f}\n",
        amx   ? "amx"
        : dot ? "bf16dot"
              : "fp32",
        n, threads, s * 1e3, gf, bf16_path_peak > 0 ? 100 * gf / bf16_path_peak : 0.0);
  }
  {
    const std::int64_t R = 4096, C = 1024;
    Tensor x = randn({R, C});
    double bytes = 2.0 * R * C * 4;  // read + write
    double s = median_seconds([&] { (void)softmax(x, -1); }, 5, budget);
    fmt::print("RESULT softmax impl=kiln rows={} cols={} threads={} median_ms={:.3f} gbps={:.1f}\n", R, C, threads,
               s * 1e3, bytes / s / 1e9);
    Tensor w = ones({C}), bias = zeros({C});
    s = median_seconds([&] { (void)layer_norm(x, {C}, w, bias); }, 5, budget);
    fmt::print("RESULT layer_norm impl=kiln rows={} cols={} threads={} median_ms={:.3f} gbps={:.1f}\n", R, C, threads,
               s * 1e3, bytes / s / 1e9);
  }
  // The fused backward kernels against the composite tensor-op chains they replaced (the same
  // formulas as before, in the same run), at GPT small's and shakespeare's activation sizes.
  for (auto [R, C] : {std::pair<std::int64_t, std::int64_t>{2048, 512}, {4096, 1536}}) {
    Tensor x = randn({R, C}), g = randn({R, C});
    const double k = 1.0 / std::sqrt(2 * 3.14159265358979323846);
    double old_s = median_seconds(
        [&] {
          Tensor cdf = erf(x * M_SQRT1_2);
          cdf.add_(scalar_tensor(1.0)).mul_(scalar_tensor(0.5));
          Tensor pdf = exp(x * x * -0.5);
          pdf.mul_(scalar_tensor(k)).mul_(x);
          (void)cdf.add_(pdf).mul_(g);
        },
        5, budget);
    double new_s = median_seconds(
        [&] {
          Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
          cpu::cpu_backend().unary_backward(UnaryOp::GeluErf, g, x, gx);
        },
        5, budget);
    for (auto [path, t] : {std::pair<const char*, double>{"composite", old_s}, {"fused", new_s}})
      fmt::print("RESULT gelu_backward impl=kiln path={} rows={} cols={} threads={} median_ms={:.3f}\n", path, R, C,
                 threads, t * 1e3);
  }
  for (auto [R, C] : {std::pair<std::int64_t, std::int64_t>{2048, 128}, {4096, 384}}) {
    Tensor x = randn({R, C}), gy = randn({R, C}), w = randn({C}), b = randn({C});
    Tensor y = empty({R, C}), mu = empty({R}), rs = empty({R});
    cpu::cpu_backend().layer_norm(x, w, b, 1e-5, y, mu, rs);
    Tensor mu_k = mu.reshape({R, 1}), rs_k = rs.reshape({R, 1});
    double old_s = median_seconds(
        [&] {
          Tensor xhat = (x - mu_k) * rs_k, gxhat = gy * w;
          Tensor gx = rs_k * (gxhat - mean(gxhat, {-1}, true) - xhat * mean(gxhat * xhat, {-1}, true));
          Tensor gw = sum(gy * xhat, {0}), gb = sum(gy, {0});
        },
        5, budget);
    double new_s = median_seconds(
        [&] {
          Tensor gx = empty({R, C}), gw = empty({C}), gb = empty({C});
          cpu::cpu_backend().layer_norm_backward(x, w, mu, rs, gy, gx, gw, gb);
        },
        5, budget);
    for (auto [path, t] : {std::pair<const char*, double>{"composite", old_s}, {"fused", new_s}})
      fmt::print("RESULT layer_norm_backward impl=kiln path={} rows={} cols={} threads={} median_ms={:.3f}\n", path, R,
                 C, threads, t * 1e3);
  }
  {
    const std::int64_t N = std::int64_t{1} << 24;
    Tensor a = randn({N}), b = randn({N});
    double s = median_seconds([&] { (void)add(a, b); }, 5, budget);
    fmt::print("RESULT add impl=kiln numel={} threads={} median_ms={:.3f} gbps={:.1f}\n", N, threads, s * 1e3,
               3.0 * N * 4 / s / 1e9);
  }
  {
    // Sum over the leading rows of a contiguous (rows, cols) matrix: a bias gradient.
    const std::int64_t R = 2048, C = 512;
    Tensor g = randn({R, C});
    double s = median_seconds([&] { (void)sum(g, {0}); }, 5, budget);
    fmt::print("RESULT sum_rows impl=kiln rows={} cols={} threads={} median_ms={:.3f} gbps={:.1f}\n", R, C, threads,
               s * 1e3, R * C * 4.0 / s / 1e9);
  }
  {
    // linear at GPT small's fc shape: the composite (GEMM, then a broadcast bias add) beside the
    // fused node (bias folded into the GEMM), forward and forward+backward, in the same run.
    const std::int64_t R = 2048, K = 128, N = 512;
    GradModeGuard on(true);
    Tensor x = randn({R, K}).requires_grad_(), w = randn({N, K}).requires_grad_(), b = randn({N}).requires_grad_();
    auto composite = [&] { return add(matmul(x, transpose(w, 0, 1)), b); };
    auto fused = [&] { return linear(x, w, b); };
    for (auto [name, fn] : {std::pair{"composite", std::function<Tensor()>(composite)}, {"fused", fused}}) {
      double f = median_seconds([&] { (void)fn(); }, 5, budget);
      double fb = median_seconds([&] { sum(fn()).backward(); }, 5, budget);
      fmt::print("RESULT linear impl=kiln path={} rows={} in={} out={} threads={} fwd_ms={:.3f} fwdbwd_ms={:.3f}\n",
                 name, R, K, N, threads, f * 1e3, fb * 1e3);
    }
  }
  {
    Tensor a = randn({1}), b = randn({1});
    double s = median_seconds([&] { (void)add(a, b); }, 50, budget, 1000);
    fmt::print("RESULT overhead impl=kiln op=add numel=1 mode=fwd median_us={:.3f}\n", s * 1e6);
  }
  {
    GradModeGuard on(true);
    Tensor a = randn({1}).requires_grad_(), b = randn({1}).requires_grad_();
    double s = median_seconds([&] { (void)mul(a, b); }, 50, budget, 1000);
    fmt::print("RESULT overhead impl=kiln op=mul numel=1 mode=fwd_recorded median_us={:.3f}\n", s * 1e6);
    s = median_seconds(
        [&] {
          Tensor y = mul(a, b);
          y.backward();
        },
        50, budget, 200);
    a.set_grad(Tensor());
    b.set_grad(Tensor());
    fmt::print("RESULT overhead impl=kiln op=mul numel=1 mode=fwdbwd median_us={:.3f}\n", s * 1e6);
  }
  rms_norm_rows(threads, budget);
  linear_backward_rows(threads, budget);
  sixteen_bit_rows(threads, budget);
  random_rows(threads, budget);
  fmt::print("# peak_rss_mib={:.1f}\n", peak_rss_mib());
  return 0;
}
