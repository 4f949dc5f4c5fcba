// CUDA backend benchmark: GEMM TFLOP/s (cuBLAS, float32 with and without TF32, float64),
// fused attention forward and forward+backward (float32, float64, bfloat16, float16 on tensor
// cores), and the bandwidth of a few memory-bound ops.
// tools/gpu_check.sh runs it beside PyTorch on the same GPU.
//   build/bench/cuda_bench                 every group
//   build/bench/cuda_bench matmul|mha|ops  one group
// One `RESULT ...` line per measurement (format in bench/README.md), e.g.
//   RESULT cuda_matmul impl=kiln dtype=float32 tf32=0 B=1 M=4096 N=4096 K=4096 median_ms=.. tflops=..
//   RESULT mha impl=kiln_cuda scope=core device=cuda B=8 T=1024 E=768 H=12 causal=1 mode=fwdbwd dtype=float32
//   median_ms=.. tflops=..
// Without a GPU it prints one `# cuda_bench skipped: <reason>` line and exits 0.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <kiln/kiln.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"

using namespace kiln;

namespace {

using kiln::bench::now_s;

// Median seconds per call: warm-up (>= 2 calls, 0.3 s), then repetitions of `inner` calls
// between device synchronizations until ~0.8 s or 15 repetitions.
double median_s(
    const std::function<void()>& fn, const std::function<void()>& setup = [] {}) {
  double w0 = now_s();
  for (int i = 0; i < 2 || now_s() - w0 < 0.3; ++i) {
    setup();
    fn();
  }
  cuda::synchronize();
  double t0 = now_s();
  setup();
  fn();
  cuda::synchronize();
  const double one = std::max(now_s() - t0, 1e-6);
  const int inner = static_cast<int>(std::clamp(0.02 / one, 1.0, 200.0));  // ~20 ms per repetition
  std::vector<double> t;
  double spent = 0;
  while (t.size() < 15 && (t.size() < 5 || spent < 0.8)) {
    double a = now_s(), setup_s = 0;
    for (int i = 0; i < inner; ++i) {
      double s0 = now_s();
      setup();
      setup_s += now_s() - s0;
      fn();
    }
    cuda::synchronize();
    const double dt = now_s() - a;
    t.push_back((dt - setup_s) / inner);
    spent += dt;
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void bench_matmul() {
  struct Row {
    DType dt;
    bool tf32;
    std::int64_t B, M, N, K;
  };
  std::vector<Row> rows;
  for (std::int64_t n : {1024, 2048, 4096, 8192})
    for (bool tf32 : {false, true}) rows.push_back({kFloat32, tf32, 1, n, n, n});
  rows.push_back({kFloat32, false, 64, 512, 512, 512});
  rows.push_back({kFloat32, true, 64, 512, 512, 512});
  for (std::int64_t n : {2048, 4096}) rows.push_back({kFloat64, false, 1, n, n, n});
  for (const Row& r : rows) {
    Generator g(1);
    const TensorOptions o = TensorOptions(r.dt).device(Device::cuda(0));
    Tensor a = r.B > 1 ? randn({r.B, r.M, r.K}, o, &g) : randn({r.M, r.K}, o, &g);
    Tensor b = r.B > 1 ? randn({r.B, r.K, r.N}, o, &g) : randn({r.K, r.N}, o, &g);
    cuda::set_allow_tf32(r.tf32);
    NoGradGuard ng;
    const double s = median_s([&] { (void)matmul(a, b); });
    cuda::set_allow_tf32(false);
    const double flop = 2.0 * r.B * r.M * r.N * r.K;
    std::printf("RESULT cuda_matmul impl=kiln dtype=%s tf32=%d B=%ld M=%ld N=%ld K=%ld median_ms=%.4f tflops=%.2f\n",
                std::string(dtype_name(r.dt)).c_str(), r.tf32 ? 1 : 0, static_cast<long>(r.B), static_cast<long>(r.M),
                static_cast<long>(r.N), static_cast<long>(r.K), s * 1e3, flop / s / 1e12);
    std::fflush(stdout);
  }
}

void bench_mha() {
  struct Row {
    std::int64_t B, T, E, H;
  };
  const std::vector<Row> rows = {
      {32, 64, 128, 4}, {8, 256, 256, 8}, {8, 1024, 768, 12}, {4, 2048, 1024, 16}, {1, 4096, 256, 8}};
  // bfloat16/float16: the tensor-core kernels of core/cuda/attention_tc.cu (float32 accumulation).
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16})
    for (const Row& r : rows)
      for (bool causal : {false, true})
        for (const char* mode : {"fwd", "fwdbwd"}) {
          if (dt == kFloat64 && r.T > 1024) continue;
          const std::int64_t D = r.E / r.H;
          Generator g(0);
          const TensorOptions o = TensorOptions(dt).device(Device::cuda(0));
          // (B, T, E) buffers viewed as (B, H, T, D): the head split of a MultiHeadAttention layer.
          auto heads = [&](const Tensor& x) { return x.reshape({r.B, r.T, r.H, D}).transpose(1, 2); };
          Tensor qb = randn({r.B, r.T, r.E}, o, &g), kb = randn({r.B, r.T, r.E}, o, &g),
                 vb = randn({r.B, r.T, r.E}, o, &g);
          Tensor gy = randn({r.B, r.H, r.T, D}, o, &g);
          const SdpaOptions opts = SdpaOptions().is_causal(causal);
          double s;
          if (std::string(mode) == "fwd") {
            NoGradGuard ng;
            Tensor q = heads(qb), k = heads(kb), v = heads(vb);
            s = median_s([&] { (void)scaled_dot_product_attention(q, k, v, opts); });
          } else {
            Tensor ql = qb.requires_grad_(), kl = kb.requires_grad_(), vl = vb.requires_grad_();
            s = median_s(
                [&] {
                  auto res = scaled_dot_product_attention(heads(ql), heads(kl), heads(vl), opts);
                  res.output.backward(gy);
                },
                [&] {
                  for (Tensor* x : {&ql, &kl, &vl}) x->set_grad(Tensor());
                });
          }
          // Attention-core FLOPs as in bench/mha_bench.cpp: q k^T and p v over the (causally
          // halved) logits; backward 2.5x.
          const double pairs = static_cast<double>(r.B * r.H * r.T) * static_cast<double>(r.T) * (causal ? 0.5 : 1.0);
          const double fwd_flop = 4.0 * pairs * static_cast<double>(D);
          const double flop = std::string(mode) == "fwd" ? fwd_flop : 3.5 * fwd_flop;
          std::printf(
              "RESULT mha impl=kiln_cuda scope=core device=cuda B=%ld T=%ld E=%ld H=%ld causal=%d mode=%s dtype=%s "
              "median_ms=%.4f tflops=%.2f\n",
              static_cast<long>(r.B), static_cast<long>(r.T), static_cast<long>(r.E), static_cast<long>(r.H),
              causal ? 1 : 0, mode, std::string(dtype_name(dt)).c_str(), s * 1e3, flop / s / 1e12);
          std::fflush(stdout);
        }
}

void bench_ops() {
  Generator g(2);
  const TensorOptions o = TensorOptions(kFloat32).device(Device::cuda(0));
  NoGradGuard ng;
  const std::int64_t n = std::int64_t{1} << 26;
  Tensor x = randn({n}, o, &g), y = randn({n}, o, &g);
  Tensor rows = randn({32768, 1024}, o, &g), w = randn({1024}, o, &g), b = randn({1024}, o, &g);
  Tensor bias = randn({1024}, o, &g);
  struct Op {
    const char* name;
    double bytes;
    std::function<void()> fn;
  };
  const double f = 4.0;
  const std::vector<Op> ops = {
      {"add", 3 * f * n, [&] { (void)(x + y); }},
      {"add_bias_broadcast", 3 * f * rows.numel(), [&] { (void)(rows + bias); }},
      {"gelu", 2 * f * n, [&] { (void)gelu(x); }},
      {"sum", f * n, [&] { (void)sum(x); }},
      {"sum_rows", f * rows.numel(), [&] { (void)sum(rows, {-1}); }},
      {"sum_cols", f * rows.numel(), [&] { (void)sum(rows, {0}); }},
      {"transpose_copy", 2 * f * rows.numel(), [&] { (void)rows.t().contiguous(); }},
      {"softmax", 2 * f * rows.numel(), [&] { (void)softmax(rows, -1); }},
      {"layer_norm", 2 * f * rows.numel(), [&] { (void)layer_norm(rows, {1024}, w, b); }},
      {"dropout", 3 * f * n, [&] { (void)dropout(x, 0.1, true, &g); }},
  };
  for (const Op& op : ops) {
    const double s = median_s(op.fn);
    std::printf("RESULT cuda_op impl=kiln op=%s dtype=float32 median_ms=%.4f gb_per_s=%.1f\n", op.name, s * 1e3,
                op.bytes / s / 1e9);
    std::fflush(stdout);
  }
  // Launch overhead: one tiny op, host-bound.
  Tensor s1 = randn({1}, o, &g);
  const double tiny = median_s([&] { (void)(s1 + s1); });
  std::printf("RESULT cuda_op impl=kiln op=tiny_add dtype=float32 median_us=%.2f\n", tiny * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda::is_available()) {
    std::printf("# cuda_bench skipped: %s\n", cuda::unavailable_reason().c_str());
    return 0;
  }
  const std::string what = argc > 1 ? argv[1] : "all";
  if (what != "all" && what != "matmul" && what != "mha" && what != "ops") {
    std::fprintf(stderr, "usage: %s [all|matmul|mha|ops]\n", argv[0]);
    return 2;
  }
  std::printf("# cuda_bench on %s\n", cuda::device_name().c_str());
  if (what == "all" || what == "matmul") bench_matmul();
  if (what == "all" || what == "mha") bench_mha();
  if (what == "all" || what == "ops") bench_ops();
  const AllocatorStats st = cuda::allocator_stats();
  std::printf("# allocator: cudaMalloc calls %lu, cache hits %lu, peak in use %.1f MiB\n",
              static_cast<unsigned long>(st.os_allocs), static_cast<unsigned long>(st.cache_hits),
              static_cast<double>(st.peak_in_use_bytes) / (1024.0 * 1024.0));
  return 0;
}
