// Generator (Philox4x32-10) and the random factories.
#include <algorithm>
#include <cstring>
#include <set>
#include <thread>

#include "test_util.hpp"

using namespace kiln;

namespace {

// Restores the thread count when a test ends, however it ends.
struct ThreadsGuard {
  int saved = get_num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

template <typename T>
bool bitwise_equal(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector<T>(), vb = b.to_vector<T>();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(T)) == 0;
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}
double std_of(const std::vector<double>& v) {
  double m = mean_of(v), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

}  // namespace

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
  // kat_vectors: counter words c0..c3, key words k0 k1 -> 4 output words.
  auto a = philox4x32(0, 0, 0);
  CHECK(a == std::array<std::uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  auto b = philox4x32(~0ull, ~0ull, ~0ull);
  CHECK(b == std::array<std::uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  auto c = philox4x32(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull, 0x0370734413198a2eull);
  CHECK(c == std::array<std::uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("uint to unit float and double conversions stay below 1") {
  CHECK(uint_to_unit_float(0) == 0.0f);
  CHECK(uint_to_unit_float(0xffffffffu) < 1.0f);
  CHECK(uint_to_unit_float(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);
  CHECK(uint_to_unit_float(0x80000000u) == 0.5f);
  CHECK(uint_to_unit_double(0, 0) == 0.0);
  CHECK(uint_to_unit_double(0xffffffffu, 0xffffffffu) < 1.0);
  CHECK(uint_to_unit_double(0x80000000u, 0) == 0.5);
}

TEST_CASE("Generator state: seed and offset and reserve and set_state and copies") {
  Generator g(42);
  CHECK(g.seed() == 42);
  CHECK(g.offset() == 0);
  CHECK(g.reserve(10) == 0);
  CHECK(g.offset() == 10);
  CHECK(g.reserve(5) == 10);
  CHECK(g.offset() == 15);
  g.set_state(7, 100);
  CHECK(g.seed() == 7);
  CHECK(g.offset() == 100);
  g.manual_seed(9);
  CHECK(g.seed() == 9);
  CHECK(g.offset() == 0);
  Generator h = g;
  h.reserve(3);
  CHECK(g.offset() == 0);  // copies are independent
  CHECK(h.offset() == 3);
  Generator d;
  CHECK(d.seed() == 0x5eed);
}

TEST_CASE("Generator::reserve is thread-safe: concurrent draws get disjoint counters") {
  Generator g(1);
  std::vector<std::vector<std::uint64_t>> starts(4);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) starts[t].push_back(g.reserve(3));
    });
  for (auto& t : ts) t.join();
  CHECK(g.offset() == 4 * 2000 * 3);
  std::set<std::uint64_t> all;
  for (auto& v : starts) all.insert(v.begin(), v.end());
  CHECK(all.size() == 8000);
  for (auto s : all) CHECK(s % 3 == 0);
}

TEST_CASE("same seed gives the same numbers and different seeds differ") {
  Generator g1(123), g2(123), g3(124);
  auto a = rand({1000}, {}, &g1);
  auto b = rand({1000}, {}, &g2);
  auto c = rand({1000}, {}, &g3);
  CHECK(bitwise_equal<float>(a, b));
  CHECK_FALSE(bitwise_equal<float>(a, c));
  CHECK(equal(randn({3, 5}, kFloat64, &g1), randn({3, 5}, kFloat64, &g2)));
  CHECK(equal(randint(0, 100, {50}, kInt64, &g1), randint(0, 100, {50}, kInt64, &g2)));
  // The values are a function of (seed, offset) only: a fresh generator at the same state agrees.
  Generator g4(123);
  g4.set_state(123, g1.offset());
  CHECK(equal(rand({7}, {}, &g1), rand({7}, {}, &g4)));
}

TEST_CASE("a draw advances the offset so consecutive draws differ") {
  Generator g(5);
  auto a = rand({100}, {}, &g);
  CHECK(g.offset() == 100);
  auto b = rand({100}, {}, &g);
  CHECK(g.offset() == 200);
  CHECK_FALSE(bitwise_equal<float>(a, b));
  auto n = randn({3, 4}, kFloat64, &g);
  CHECK(g.offset() == 212);
  randint(0, 5, {0}, kInt64, &g);
  CHECK(g.offset() == 212);
  // No two draws share a value position: 1000 single-value draws are (almost surely) all distinct.
  std::set<double> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(rand({1}, kFloat64, &g).item<double>());
  CHECK(seen.size() == 1000);
  // Odd sizes: draws of 1, 3 and 5 floats never repeat one another's values.
  Generator h(6);
  auto x1 = rand({1}, {}, &h).to_vector<float>();
  auto x3 = rand({3}, {}, &h).to_vector<float>();
  auto x5 = rand({5}, {}, &h).to_vector<float>();
  std::set<float> all;
  for (auto* v : {&x1, &x3, &x5}) all.insert(v->begin(), v->end());
  CHECK(all.size() == 9);
}

TEST_CASE("set_state restores a draw") {
  Generator g(77);
  rand({13}, {}, &g);
  const auto seed = g.seed();
  const auto off = g.offset();
  auto a = randn({257}, {}, &g);
  auto a2 = rand({31}, kFloat64, &g);
  g.set_state(seed, off);
  auto b = randn({257}, {}, &g);
  auto b2 = rand({31}, kFloat64, &g);
  CHECK(bitwise_equal<float>(a, b));
  CHECK(bitwise_equal<double>(a2, b2));
}

TEST_CASE("a prefix of a draw equals the shorter draw") {
  // Element i depends only on (seed, offset, i), not on the draw's size.
  Generator g1(3), g2(3);
  auto big = rand({1001}, {}, &g1).to_vector<float>();
  auto small = rand({10}, {}, &g2).to_vector<float>();
  CHECK(std::equal(small.begin(), small.end(), big.begin()));
  Generator g3(3), g4(3);
  auto bn = randn({99}, kFloat64, &g3).to_vector<double>();
  auto sn = randn({5}, kFloat64, &g4).to_vector<double>();
  CHECK(std::equal(sn.begin(), sn.end(), bn.begin()));
}

TEST_CASE("results do not depend on the thread count") {
  ThreadsGuard guard;
  const Shape big{1 << 20};  // large enough that the fills are split across threads
  auto draw = [&](int threads) {
    set_num_threads(threads);
    Generator g(2024);
    std::vector<Tensor> out;
    out.push_back(rand(big, {}, &g));
    out.push_back(rand(big, kFloat64, &g));
    out.push_back(randn(big, {}, &g));
    out.push_back(randn(big, kFloat64, &g));
    out.push_back(randint(-1000, 1000, big, kInt64, &g));
    out.push_back(dropout(ones(big), 0.1, true, &g));
    out.push_back(dropout(ones(big, kFloat64), 0.5, true, &g));
    return out;
  };
  auto one = draw(1);
  auto two = draw(2);
  auto four = draw(4);
  REQUIRE(one.size() == two.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    INFO("draw " << i);
    if (one[i].dtype() == kFloat32) {
      CHECK(bitwise_equal<float>(one[i], two[i]));
      CHECK(bitwise_equal<float>(one[i], four[i]));
    } else if (one[i].dtype() == kFloat64) {
      CHECK(bitwise_equal<double>(one[i], two[i]));
      CHECK(bitwise_equal<double>(one[i], four[i]));
    } else {
      CHECK(bitwise_equal<std::int64_t>(one[i], two[i]));
      CHECK(bitwise_equal<std::int64_t>(one[i], four[i]));
    }
  }
}

TEST_CASE("rand is uniform in the half-open unit interval") {
  Generator g(11);
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    auto v = rand({100000}, dt, &g).to_vector<double>();
    double lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
    CHECK(lo >= 0.0);
    CHECK(hi < 1.0);
    CHECK(lo < 1e-3);
    CHECK(hi > 1.0 - 1e-3);
    CHECK(mean_of(v) == doctest::Approx(0.5).epsilon(0.01));
    CHECK(std_of(v) == doctest::Approx(std::sqrt(1.0 / 12.0)).epsilon(0.01));
    // Each tenth of [0, 1) gets about a tenth of the draws.
    std::vector<int> bins(10, 0);
    for (double x : v) bins[static_cast<int>(x * 10)]++;
    for (int b : bins) CHECK(std::abs(b - 10000) < 500);
  }
  CHECK_KILN_ERROR(rand({2}, kInt64), "[rand] dtype must be floating point, got int64");
  CHECK_KILN_ERROR(randn({2}, kBool), "[randn] dtype must be floating point, got bool");
}

TEST_CASE("randint covers low to high-1 and nothing else") {
  Generator g(12);
  auto v = randint(-3, 4, {20000}, kInt64, &g).to_vector<std::int64_t>();
  std::vector<int> counts(7, 0);
  for (auto x : v) {
    REQUIRE((x >= -3 && x < 4));
    counts[x + 3]++;
  }
  for (int c : counts) CHECK(std::abs(c - 20000 / 7) < 300);
  // A range of one value.
  CHECK(randint(5, 6, {10}, kInt64, &g).to_vector<std::int64_t>() == std::vector<std::int64_t>(10, 5));
  // Float dtype holds integers.
  auto f = randint(0, 10, {1000}, kFloat32, &g).to_vector<float>();
  std::set<float> distinct(f.begin(), f.end());
  CHECK(distinct.size() == 10);
  for (float x : f) CHECK(x == std::floor(x));
  CHECK(*distinct.begin() == 0.0f);
  CHECK(*distinct.rbegin() == 9.0f);
  // Wide ranges are not limited to a coarse grid.
  auto w = randint(0, std::int64_t{1} << 40, {64}, kInt64, &g).to_vector<std::int64_t>();
  int odd = 0;
  for (auto x : w) {
    CHECK((x >= 0 && x < (std::int64_t{1} << 40)));
    odd += x & 1;
  }
  CHECK(odd > 10);
  CHECK(odd < 54);
  // Bounds that a double cannot hold exactly are rejected rather than rounded.
  const std::int64_t p53 = std::int64_t{1} << 53;
  auto edge = randint(p53 - 2, p53, {100}, kInt64, &g).to_vector<std::int64_t>();
  for (auto x : edge) CHECK((x == p53 - 2 || x == p53 - 1));
  auto nedge = randint(-p53, -p53 + 1, {4}, kInt64, &g).to_vector<std::int64_t>();
  CHECK(nedge == std::vector<std::int64_t>(4, -p53));
  CHECK_KILN_ERROR(randint(std::int64_t{1} << 60, (std::int64_t{1} << 60) + 3, {2}),
                   "[randint] low (1152921504606846976) and high (1152921504606846979) must lie within [-2^53, 2^53]");
  CHECK_KILN_ERROR(randint(-p53 - 1, 0, {2}), "must lie within [-2^53, 2^53]");
  CHECK_KILN_ERROR(randint(5, 5, {2}), "[randint] low (5) must be less than high (5)");
  CHECK_KILN_ERROR(randint(0, 2, {2}, kBool), "[randint] dtype bool is not supported");
}

TEST_CASE("randn has mean ~0 and std ~1") {
  Generator g(13);
  for (DType dt : {kFloat32, kFloat64}) {
    INFO(dtype_name(dt));
    auto v = randn({100000}, dt, &g).to_vector<double>();
    CHECK(std::abs(mean_of(v)) < 0.02);
    CHECK(std::abs(std_of(v) - 1.0) < 0.02);
    for (double x : v) REQUIRE(std::isfinite(x));
    // About 68.3% within one sigma, 95.4% within two.
    double in1 = 0, in2 = 0;
    for (double x : v) {
      in1 += std::abs(x) < 1;
      in2 += std::abs(x) < 2;
    }
    CHECK(in1 / v.size() == doctest::Approx(0.6827).epsilon(0.02));
    CHECK(in2 / v.size() == doctest::Approx(0.9545).epsilon(0.01));
  }
}

TEST_CASE("dropout masks with the generator: kept values scaled by 1/(1-p)") {
  Generator g(14);
  auto y = dropout(ones({100000}), 0.25, true, &g).to_vector<float>();
  int zeros_n = 0;
  for (float v : y) {
    if (v == 0.0f) zeros_n++;
    else REQUIRE(v == doctest::Approx(1.0 / 0.75));
  }
  CHECK(zeros_n == doctest::Approx(25000).epsilon(0.04));
  Generator g1(15), g2(15);
  CHECK(equal(dropout(ones({64}), 0.5, true, &g1), dropout(ones({64}), 0.5, true, &g2)));
}

TEST_CASE("manual_seed on the default generator") {
  manual_seed(7);
  CHECK(default_generator().seed() == 7);
  CHECK(default_generator().offset() == 0);
  auto a = rand({16});
  CHECK(default_generator().offset() == 16);
  auto a2 = randn({4});
  manual_seed(7);
  auto b = rand({16});
  auto b2 = randn({4});
  CHECK(equal(a, b));
  CHECK(equal(a2, b2));
  manual_seed(8);
  CHECK_FALSE(equal(rand({16}), a));
  // The default generator and an explicit one with the same state agree.
  manual_seed(7);
  Generator g(7);
  CHECK(equal(rand({16}), rand({16}, {}, &g)));
}
