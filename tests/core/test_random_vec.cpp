// The CPU backend's vectorized Philox fills and its one-pass dropout against the scalar Philox
// blocks (core/math/random.hpp, the CUDA backend's code): the same bits for every kind, dtype,
// size, counter offset and thread count.
#include <cstring>
#include <kiln/core/cpu/cpu_backend.hpp>
#include <kiln/core/cpu/philox.hpp>
#include <kiln/core/cpu/random.hpp>
#include <kiln/core/math/random.hpp>
#include <limits>

#include "test_util.hpp"

using namespace kiln;

namespace {

struct ThreadsGuard {
  int saved = get_num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.numel() == 0) return true;  // no storage: memcmp must not see its null pointers
  Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.raw_data(), bc.raw_data(), static_cast<std::size_t>(ac.numel()) * itemsize(ac.dtype())) == 0;
}

// Counter offsets: 0, odd, just below a 32-bit carry, just below the 64-bit wrap.
const std::uint64_t kOffsets[] = {0, 7, 0xfffffff3ull, ~0ull - 40};
const std::int64_t kSizes[] = {0, 1, 3, 63, 64, 65, 127, 1000, 4099, 3 * 16384 + 5};

std::vector<RandomSpec> specs() {
  return {{RandomSpec::Uniform, 0.0, 1.0},
          {RandomSpec::Uniform, -3.5, 1.0 / 3.0},
          {RandomSpec::Uniform, 1.0, 1.0 + 1e-9},  // rounds onto the upper bound: stays below it
          {RandomSpec::Normal, 0.5, 2.0},
          {RandomSpec::Int, -1000.0, 1000.0},
          {RandomSpec::Int, 0.0, 3.0},
          {RandomSpec::Bernoulli, 0.3, 1.0 / 0.7},
          {RandomSpec::Bernoulli, 0.0, 2.0},
          {RandomSpec::Bernoulli, 1.0, 1.0},
          {RandomSpec::Bernoulli, 0.9, 0.0},
          // keep-test edges: a on the 2^-24 grid, just above it, tiny, above 1
          {RandomSpec::Bernoulli, 0.5, 3.0},
          {RandomSpec::Bernoulli, 0.5 + 0x1p-30, 1.0},
          {RandomSpec::Bernoulli, 1e-300, 1.0},
          {RandomSpec::Bernoulli, 1.5, 1.0}};
}

}  // namespace

TEST_CASE("philox16 gives philox4x32's words for 16 consecutive counters, carries included") {
  for (std::uint64_t key : {0ull, 0x299f31d0a4093822ull, ~0ull})
    for (std::uint64_t ctr : {0ull, 5ull, 0xfffffff8ull, ~0ull - 7, 0x123456789abcull}) {
      INFO("key " << key << " counter " << ctr);
      cpu::U32x16 w[4];
      cpu::philox16(key, ctr, w);
      alignas(64) std::uint32_t e[64];
      cpu::philox16_ordered(key, ctr, e);
      for (int i = 0; i < 16; ++i) {
        const auto ref = philox4x32(key, ctr + static_cast<std::uint64_t>(i));
        for (int k = 0; k < 4; ++k) {
          CHECK(w[k][i] == ref[k]);
          CHECK(e[4 * i + k] == ref[k]);
        }
      }
    }
}

TEST_CASE("CpuBackend::random equals the scalar Philox blocks for every kind, dtype, size and offset") {
  auto& be = cpu::cpu_backend();
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16, kInt64, kBool})
    for (RandomSpec spec : specs())
      for (std::uint64_t off : kOffsets)
        for (std::int64_t n : kSizes) {
          if (spec.kind == RandomSpec::Normal && !is_floating(dt)) continue;
          INFO(dtype_name(dt) << " kind " << int(spec.kind) << " a " << spec.a << " b " << spec.b << " offset " << off
                              << " n " << n);
          spec.seed = 0x5eed + static_cast<std::uint64_t>(n);
          spec.offset = off;
          Tensor fast = empty({n}, dt), ref = empty({n}, dt);
          be.random(fast, spec);
          cpu::random_scalar(ref, spec);
          REQUIRE(same_bytes(fast, ref));
        }
}

TEST_CASE("the fills equal random_block compiled outside the library, without -march=native") {
  // random_block's multiply-adds are explicit fma, so this translation unit's flags cannot change
  // them: the library's vector paths must give the very bits of the shared scalar code.
  auto& be = cpu::cpu_backend();
  for (RandomSpec spec : specs()) {
    INFO("kind " << int(spec.kind) << " a " << spec.a << " b " << spec.b);
    spec.seed = 99;
    spec.offset = 0xfffffff3ull;
    const std::int64_t n = 1001;
    Tensor f32 = empty({n}, kFloat32), f64 = empty({n}, kFloat64);
    be.random(f32, spec);
    be.random(f64, spec);
    std::vector<float> r32(n);
    std::vector<double> r64(n);
    for (std::int64_t b = 0; b < math::random_blocks<float>(n); ++b) math::random_block<float>(spec, b, r32.data(), n);
    for (std::int64_t b = 0; b < math::random_blocks<double>(n); ++b)
      math::random_block<double>(spec, b, r64.data(), n);
    CHECK(std::memcmp(f32.raw_data(), r32.data(), sizeof(float) * n) == 0);
    CHECK(std::memcmp(f64.raw_data(), r64.data(), sizeof(double) * n) == 0);
  }
}

TEST_CASE("dropout's one pass gives the mask and output of a Bernoulli draw and a mul") {
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16})
    for (double p : {0.1, 0.5, 0.999})
      for (std::int64_t n : {1, 3, 64, 65, 4099, 3 * 16384 + 5}) {
        INFO(dtype_name(dt) << " p " << p << " n " << n);
        Tensor x = (randn({n}, kFloat64) * 3.0).to(dt);
        if (n > 3) {  // values whose product with a 0 mask shows the rounding path: inf * 0 is NaN
          x.index_put_({0}, inf);
          x.index_put_({2}, -0.0);
        }
        x.set_requires_grad(true);
        Generator g(1234 + static_cast<std::uint64_t>(n)), h = g;
        g.reserve(5);
        h.reserve(5);
        Tensor y = dropout(x, p, true, &g);
        // Reference: the scalar Bernoulli draw for the same counters, then binary Mul.
        RandomSpec spec{RandomSpec::Bernoulli, 1.0 - p, 1.0 / (1.0 - p)};
        spec.seed = h.seed();
        spec.offset = h.reserve(static_cast<std::uint64_t>(n));
        CHECK(g.offset() == h.offset());
        Tensor mask = empty({n}, dt);
        cpu::random_scalar(mask, spec);
        Tensor ref = mul(x.detach(), mask);
        CHECK(same_bytes(y, ref));
        // backward is g * mask: a gradient of ones gives the mask back, bit for bit.
        y.backward(ones({n}, dt));
        CHECK(same_bytes(x.grad(), mask));
      }
}

TEST_CASE("dropout of a strided view equals dropout of its contiguous copy") {
  Tensor base = randn({6, 37});
  Tensor xt = base.t();  // (37, 6), not contiguous: the draw + mul path
  REQUIRE_FALSE(xt.is_contiguous());
  for (DType dt : {kFloat32, kBFloat16}) {
    Tensor xs = base.to(dt).t();
    Generator g(5), h(5);
    CHECK(same_bytes(dropout(xs, 0.4, true, &g), dropout(xs.contiguous(), 0.4, true, &h)));
  }
}

TEST_CASE("the vectorized fills and the one-pass dropout do not depend on the thread count") {
  ThreadsGuard guard;
  const Shape big{(1 << 18) + 13};
  auto draw = [&](int threads) {
    set_num_threads(threads);
    Generator g(77);
    std::vector<Tensor> out;
    for (DType dt : {kFloat32, kBFloat16, kFloat16, kFloat64}) {
      out.push_back(rand(big, dt, &g));
      out.push_back(dropout(ones(big, dt), 0.2, true, &g));
    }
    out.push_back(randint(-5, 5, big, kInt64, &g));
    return out;
  };
  auto one = draw(1), two = draw(2), three = draw(3);
  for (std::size_t i = 0; i < one.size(); ++i) {
    INFO("draw " << i);
    CHECK(same_bytes(one[i], two[i]));
    CHECK(same_bytes(one[i], three[i]));
  }
}
