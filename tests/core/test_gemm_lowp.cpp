// The 16-bit GEMM (core/cpu/gemm_lowp.hpp) on both of its paths (oneDNN where this CPU has native
// bf16, and the float32 conversion) against a float64 product of the same rounded inputs.
#include <array>
#include <cmath>
#include <cstring>
#include <kiln/core/cpu/bf16_dot.hpp>
#include <kiln/core/cpu/cpu_backend.hpp>
#include <kiln/core/cpu/gemm_lowp.hpp>
#include <kiln/core/parallel.hpp>
#include <random>
#include <tuple>
#include <vector>

#include "test_util.hpp"

using namespace kiln;

namespace {

struct Case {
  std::int64_t batch, M, N, K;
  bool ta, tb;
  std::int64_t pad;  // extra elements per row (ld > cols)
  bool bcast_a;      // sa = 0: one A for every batch item
  float alpha, beta;
  bool bias = false;  // a float32 bias row added before the rounding (alpha 1, beta 0)
};

template <typename T>
std::vector<T> random_values(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<T> v(n);
  for (auto& x : v) x = T(dist(rng));
  return v;
}

// Runs one case with input type T and output O; checks every element against float64.
template <typename T, typename O>
void run_case(const Case& c, std::mt19937& rng) {
  cpu::GemmDims d;
  d.batch = c.batch, d.M = c.M, d.N = c.N, d.K = c.K, d.ta = c.ta, d.tb = c.tb, d.alpha = c.alpha, d.beta = c.beta;
  const std::int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  d.lda = ac + c.pad;
  d.ldb = bc + c.pad;
  d.ldc = c.N + c.pad;
  d.sa = c.bcast_a ? 0 : ar * d.lda;
  d.sb = br * d.ldb;
  d.sc = c.M * d.ldc;
  const auto a = random_values<T>(static_cast<std::size_t>((c.bcast_a ? 1 : c.batch) * ar * d.lda), rng);
  const auto b = random_values<T>(static_cast<std::size_t>(c.batch * br * d.ldb), rng);
  auto out = random_values<O>(static_cast<std::size_t>(c.batch * d.sc), rng);
  const auto bias = random_values<float>(static_cast<std::size_t>(c.N), rng);
  if (c.bias) d.bias = bias.data();
  if (c.beta == 0.0f) out[0] = O(NAN);  // beta 0 ignores the old contents, NaN included
  const auto old = out;
  cpu::gemm_lowp<T, O>(d, a.data(), b.data(), out.data());
  // float32 accumulation over K terms of magnitude ~1; a 16-bit output adds its own rounding.
  const double out_eps = std::is_same_v<O, float> ? 0.0 : (std::is_same_v<O, BFloat16> ? 1.0 / 256 : 1.0 / 2048);
  double worst = 0;
  for (std::int64_t i = 0; i < c.batch; ++i)
    for (std::int64_t m = 0; m < c.M; ++m)
      for (std::int64_t n = 0; n < c.N; ++n) {
        double ref = 0, mag = 0;
        for (std::int64_t k = 0; k < c.K; ++k) {
          const double x = float(a[(c.bcast_a ? 0 : i * d.sa) + (c.ta ? k * d.lda + m : m * d.lda + k)]);
          const double y = float(b[i * d.sb + (c.tb ? n * d.ldb + k : k * d.ldb + n)]);
          ref += x * y;
          mag += std::abs(x * y);
        }
        const std::size_t at = static_cast<std::size_t>(i * d.sc + m * d.ldc + n);
        const double prev = c.beta == 0.0f ? 0.0 : double(float(old[at]));
        const double b = c.bias ? double(bias[static_cast<std::size_t>(n)]) : 0.0;
        ref = c.alpha * ref + c.beta * prev + b;
        mag = std::abs(c.alpha) * mag + std::abs(c.beta * prev) + std::abs(b);
        const double got = float(out[at]);
        const double tol = 4 * c.K * 6e-8 * mag + out_eps * std::abs(ref) + 1e-30;
        worst = std::max(worst, std::abs(got - ref) / std::max(mag, 1e-30));
        if (!(std::abs(got - ref) <= tol)) {
          FAIL("item " << i << " (" << m << ", " << n << "): got " << got << " want " << ref << " tol " << tol);
        }
      }
  // Padding between rows of C is never written.
  for (std::int64_t i = 0; i < c.batch; ++i)
    for (std::int64_t m = 0; m < c.M; ++m)
      for (std::int64_t n = c.N; n < d.ldc; ++n) {
        const std::size_t at = static_cast<std::size_t>(i * d.sc + m * d.ldc + n);
        REQUIRE(std::memcmp(&out[at], &old[at], sizeof(O)) == 0);
      }
}

const std::vector<Case> kCases = {
    {1, 1, 1, 1, false, false, 0, false, 1, 0},
    {1, 7, 5, 3, false, false, 0, false, 1, 0},
    {1, 64, 48, 96, false, false, 0, false, 1, 0},
    {1, 33, 65, 17, true, false, 3, false, 1, 0},
    {1, 33, 65, 17, false, true, 3, false, 1, 0},
    {1, 40, 24, 130, true, true, 1, false, 1, 0},
    {3, 16, 32, 24, false, false, 0, false, 1, 0},
    {4, 9, 11, 13, false, true, 2, true, 1, 0},
    {2, 20, 12, 36, true, false, 0, false, 0.5f, 1},
    {2, 20, 12, 36, false, false, 5, false, -1.5f, 0.25f},
    {1, 130, 260, 300, false, true, 0, false, 1, 1},
    {5, 3, 2, 0, false, false, 0, false, 1, 0.5f},
    // M >= 4 N with op(A) larger than one panel: the float32 path goes panel by panel.
    {1, 300, 16, 1000, false, false, 3, false, 1, 0},
    {2, 300, 16, 1000, true, true, 1, true, 0.5f, 0.25f},
    // With a bias: plain, batched with B transposed, K = 0 (the bias alone), panel by panel.
    {1, 7, 5, 3, false, false, 0, false, 1, 0, true},
    {3, 16, 32, 24, false, true, 2, false, 1, 0, true},
    {5, 3, 2, 0, false, false, 0, false, 1, 0, true},
    {2, 300, 16, 1000, true, true, 1, true, 1, 0, true},
};

template <typename T>
void run_all(std::mt19937& rng) {
  for (const Case& c : kCases) {
    CAPTURE(c.batch);
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(c.K);
    CAPTURE(c.ta);
    CAPTURE(c.tb);
    CAPTURE(c.beta);
    CAPTURE(c.bias);
    run_case<T, T>(c, rng);
    run_case<T, float>(c, rng);
  }
}

}  // namespace

TEST_CASE("gemm_lowp: bf16 against float64 on the chosen path and the float32 path") {
  MESSAGE("bf16 path: " << cpu::gemm_lowp_path(true));
  std::mt19937 rng(7);
  const int prev = cpu::set_bf16_dot(1);  // oneDNN where the CPU has bf16 dot products, fast or not
  MESSAGE("forced: " << cpu::gemm_lowp_path(true));
  run_all<BFloat16>(rng);
  cpu::set_bf16_dot(0);
  run_all<BFloat16>(rng);
  cpu::set_bf16_dot(prev);
}

TEST_CASE("gemm_lowp: fp16 against float64") {
  MESSAGE("fp16 path: " << cpu::gemm_lowp_path(false));
  std::mt19937 rng(8);
  run_all<Half>(rng);
}

TEST_CASE("gemm_lowp: cached kernels stay right across repeats and thread counts") {
  std::mt19937 rng(9);
  const int threads = get_num_threads();
  const Case c{2, 48, 40, 64, false, true, 0, false, 1, 0};
  const int prev = cpu::set_bf16_dot(1);
  for (int t : {threads, 1, threads}) {
    set_num_threads(t);
    run_case<BFloat16, BFloat16>(c, rng);
    run_case<BFloat16, BFloat16>(c, rng);
  }
  set_num_threads(threads);
  cpu::set_bf16_dot(prev);
}

TEST_CASE("gemm_lowp: bad layouts are errors") {
  cpu::GemmDims d;
  d.M = 2, d.N = 3, d.K = 4, d.lda = 4, d.ldb = 3, d.ldc = 2;  // ldc < N
  std::vector<BFloat16> a(8), b(12), c(6);
  CHECK_KILN_ERROR(cpu::gemm_lowp(d, a.data(), b.data(), c.data()), "[gemm_lowp] bad output layout");
  d.ldc = 3;
  d.M = -1;
  CHECK_KILN_ERROR(cpu::gemm_lowp(d, a.data(), b.data(), c.data()), "[gemm_lowp] negative size");
  d.M = 2;
  const std::vector<float> bias(3);
  d.bias = bias.data();
  d.beta = 1;
  CHECK_KILN_ERROR(cpu::gemm_lowp(d, a.data(), b.data(), c.data()), "[gemm_lowp] a bias needs alpha 1 and beta 0");
}

// x @ w^T = 1 + 3u/8 and b = u/2 (u: the spacing of the 16-bit type at 1). Rounded once, the sum
// 1 + 7u/8 gives 1 + u; rounding the product first gives 1, and then 1 + u/2 ties to even: 1.
TEST_CASE("linear bf16/fp16: the bias joins the float32 sum before the one rounding") {
  const int prev = cpu::set_bf16_dot(1);  // bf16 through oneDNN's bias too where the CPU has it
  for (int pass = 0; pass < 2; ++pass) {
    cpu::set_bf16_dot(pass == 0 ? 1 : 0);
    for (DType dt : {kBFloat16, kFloat16}) {
      CAPTURE(pass);
      CAPTURE(dtype_name(dt));
      const double u = dt == kBFloat16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
      Tensor x = tensor({1.0, 3 * u / 8}).reshape({1, 2}).to(dt);
      Tensor w = ones({1, 2}).to(dt), b = tensor({u / 2}).to(dt);
      Tensor y = linear(x.expand({5, 2}), w, b);
      REQUIRE(y.dtype() == dt);
      for (double v : y.to(kFloat64).to_vector<double>()) CHECK(v == 1 + u);
      // Larger, the fused result equals the float32 computation rounded once.
      Generator g(4);
      Tensor xs = randn({70, 33}, kFloat32, &g).to(dt), ws = randn({20, 33}, kFloat32, &g).to(dt),
             bs = randn({20}, kFloat32, &g).to(dt);
      Tensor want = linear(xs.to(kFloat32), ws.to(kFloat32), bs.to(kFloat32));
      Tensor got = linear(xs, ws, bs).to(kFloat32);
      const double out_eps = dt == kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
      auto gv = got.to_vector<float>(), wv = want.to_vector<float>();
      for (std::size_t i = 0; i < gv.size(); ++i)
        REQUIRE(std::abs(gv[i] - wv[i]) <= out_eps * std::abs(wv[i]) + 1e-5 * 33);
    }
  }
  cpu::set_bf16_dot(prev);
}

TEST_CASE("matmul bf16/fp16: views (transposed, sliced, broadcast batch) against float32 on the rounded inputs") {
  for (DType dt : {kBFloat16, kFloat16}) {
    CAPTURE(dtype_name(dt));
    Generator g(3);
    Tensor a = randn({3, 40, 72}, kFloat32, &g).to(dt), b = randn({3, 56, 72}, kFloat32, &g).to(dt);
    Tensor w = randn({72, 30}, kFloat32, &g).to(dt);
    const std::vector<std::pair<Tensor, Tensor>> cases = {
        {a, b.transpose(1, 2)},                                    // B read transposed
        {a.narrow(2, 8, 50), b.narrow(2, 8, 50).transpose(1, 2)},  // sliced rows (ld > cols)
        {b.transpose(1, 2).transpose(1, 2), w},                    // one weight for every batch item (broadcast)
        {a.transpose(1, 2).narrow(1, 0, 30).transpose(1, 2), w.narrow(0, 0, 30)},  // A read transposed
    };
    for (const auto& [x, y] : cases) {
      Tensor got = matmul(x, y);
      REQUIRE(got.dtype() == dt);
      Tensor want = matmul(x.to(kFloat32), y.to(kFloat32));
      const std::int64_t K = x.size(-1);
      // float32 accumulation, then one rounding to 16 bits; |x y| per term is O(1).
      const double out_eps = dt == kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
      auto gv = got.to(kFloat64).to_vector<double>(), wv = want.to(kFloat64).to_vector<double>();
      REQUIRE(gv.size() == wv.size());
      for (std::size_t i = 0; i < gv.size(); ++i)
        REQUIRE(std::abs(gv[i] - wv[i]) <= out_eps * std::abs(wv[i]) + 1e-5 * K);
    }
  }
}

// CpuBackend::linear_backward converts g to float32 once for both GEMMs where 16-bit GEMMs run in
// float32; each gradient must keep the bits of the two separate GEMMs (Backend's default), and
// linear's backward must reach it (gradients of a 16-bit linear equal the default's bits).
TEST_CASE("linear backward bf16/fp16: one widened g gives the bits of two separate GEMMs") {
  const int prev = cpu::set_bf16_dot(0);
  for (int pass = 0; pass < 2; ++pass) {
    cpu::set_bf16_dot(pass == 0 ? 0 : 1);  // pass 1: oneDNN where the CPU has bf16 dot products
    for (DType dt : {kBFloat16, kFloat16}) {
      CAPTURE(pass);
      CAPTURE(dtype_name(dt));
      MESSAGE("widens: " << cpu::gemm_lowp_widens(dt == kBFloat16));
      Generator gen(11);
      // (R, N, K): panels of dX (R >= 4K), of dW (N >= 4K), one row, a tiny K.
      for (auto [R, N, K] :
           std::vector<std::array<std::int64_t, 3>>{{70, 33, 20}, {300, 40, 64}, {24, 300, 8}, {1, 5, 7}, {9, 6, 1}}) {
        CAPTURE(R);
        CAPTURE(N);
        CAPTURE(K);
        Tensor gc = randn({R, N}, kFloat32, &gen).to(dt), gt = randn({N, R}, kFloat32, &gen).to(dt).transpose(0, 1);
        Tensor xs = randn({R, K + 3}, kFloat32, &gen).to(dt).narrow(1, 2, K), w = randn({N, K}, kFloat32, &gen).to(dt);
        for (const Tensor& g : {gc, gt}) {
          Tensor gx = empty({R, K}, dt), gw = empty({N, K}, dt), rx = empty({R, K}, dt), rw = empty({N, K}, dt);
          cpu::cpu_backend().linear_backward(g, xs, w, gx, gw);
          cpu::cpu_backend().Backend::linear_backward(g, xs, w, rx, rw);
          CHECK(gx.to(kFloat32).to_vector<float>() == rx.to(kFloat32).to_vector<float>());
          CHECK(gw.to(kFloat32).to_vector<float>() == rw.to(kFloat32).to_vector<float>());
          // Against float32 products of the rounded values: float32 sums, one rounding.
          Tensor wx = matmul(g.to(kFloat32), w.to(kFloat32)), ww = matmul(g.to(kFloat32).t(), xs.to(kFloat32));
          const double out_eps = dt == kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
          for (auto [got, want, n] : {std::tuple{gx, wx, N}, std::tuple{gw, ww, R}}) {
            auto gv = got.to(kFloat32).to_vector<float>(), wv = want.to_vector<float>();
            for (std::size_t i = 0; i < gv.size(); ++i)
              REQUIRE(std::abs(gv[i] - wv[i]) <= out_eps * std::abs(wv[i]) + 1e-5 * n);
          }
          // Through linear's backward (x, w and g as above; g is the output gradient).
          Tensor x = xs.detach().requires_grad_(), wp = w.detach().requires_grad_();
          linear(x, wp).backward(g);
          CHECK(x.grad().to(kFloat32).to_vector<float>() == rx.to(kFloat32).to_vector<float>());
          CHECK(wp.grad().to(kFloat32).to_vector<float>() == rw.to(kFloat32).to_vector<float>());
        }
      }
    }
  }
  cpu::set_bf16_dot(prev);
}
