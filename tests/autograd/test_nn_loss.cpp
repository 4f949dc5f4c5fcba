// Losses: cross_entropy and mse_loss — values vs host references, gradients, errors.
#include "test_util.hpp"

#include <algorithm>
#include <limits>

using namespace kiln;

namespace {

using Vec = std::vector<double>;
using IVec = std::vector<std::int64_t>;

struct HostCE {
  Vec per;  // per target position (0 where ignored)
  double sum = 0;
  double count = 0;
  double mean() const { return sum / count; }
};

// Cross entropy on the host: logits (C), (N, C) or (N, C, d...) row-major; targets (N, d...).
HostCE host_ce(const Vec& L, const Shape& ls, const IVec& t, std::int64_t ignore = -100, double smooth = 0.0) {
  std::int64_t N = ls.size() == 1 ? 1 : ls[0], C = ls.size() == 1 ? ls[0] : ls[1], D = 1;
  for (std::size_t i = 2; i < ls.size(); ++i) D *= ls[i];
  HostCE r;
  r.per.assign(static_cast<std::size_t>(N * D), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t d = 0; d < D; ++d) {
      std::int64_t tg = t[static_cast<std::size_t>(n * D + d)];
      if (tg == ignore) continue;
      auto at = [&](std::int64_t c) { return L[static_cast<std::size_t>((n * C + c) * D + d)]; };
      double m = -std::numeric_limits<double>::infinity();
      for (std::int64_t c = 0; c < C; ++c) m = std::max(m, at(c));
      double s = 0;
      for (std::int64_t c = 0; c < C; ++c) s += std::exp(at(c) - m);
      double lse = m + std::log(s);
      double nll = lse - at(tg);
      double smooth_term = 0;
      for (std::int64_t c = 0; c < C; ++c) smooth_term += lse - at(c);
      smooth_term /= static_cast<double>(C);
      double l = (1 - smooth) * nll + smooth * smooth_term;
      r.per[static_cast<std::size_t>(n * D + d)] = l;
      r.sum += l;
      r.count += 1;
    }
  return r;
}

Tensor rnd(const Shape& s, std::uint64_t seed, DType dt = kFloat64, double scale = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, dt, &g);
  if (scale != 1.0) t = t * scale;
  return t;
}

Tensor targets(const IVec& v, const Shape& s) { return tensor(v, s); }

CrossEntropyOptions opts() { return CrossEntropyOptions(); }

}  // namespace

// ---------- cross_entropy ----------

TEST_CASE("cross_entropy (N / C) values: mean / sum / none") {
  Tensor L = rnd({4, 5}, 1, kFloat64, 2.0);
  IVec t = {0, 4, 2, 2};
  Tensor T = targets(t, {4});
  HostCE ref = host_ce(L.to_vector<double>(), {4, 5}, t);
  Tensor m = cross_entropy(L, T);
  kt::expect_shape(m, {});
  kt::expect_values(m, {ref.mean()}, 1e-12);
  kt::expect_values(cross_entropy(L, T, opts().reduction(Reduction::Sum)), {ref.sum}, 1e-12);
  Tensor none = cross_entropy(L, T, opts().reduction(Reduction::None));
  kt::expect_shape(none, {4});
  kt::expect_values(none, ref.per, 1e-12);
  // Hand-computed: uniform logits over 4 classes -> log 4.
  kt::expect_values(cross_entropy(zeros({2, 4}, kFloat64), targets({1, 3}, {2})), {std::log(4.0)}, 1e-12);
  // float32 logits
  Tensor m32 = cross_entropy(L.to(kFloat32), T);
  CHECK(m32.dtype() == kFloat32);
  kt::expect_values(m32, {ref.mean()}, 1e-5, 1e-5);
  // non-contiguous logits and targets
  Tensor Lt = rnd({5, 4}, 2).t();
  Tensor Tt = targets({9, 4, 9, 0, 9, 1, 9, 2}, {4, 2}).select(1, 1);  // stride 2
  CHECK_FALSE(Tt.is_contiguous());
  HostCE rt = host_ce(Lt.contiguous().to_vector<double>(), {4, 5}, {4, 0, 1, 2});
  kt::expect_values(cross_entropy(Lt, Tt, opts().reduction(Reduction::None)), rt.per, 1e-12);
}

TEST_CASE("cross_entropy (N / C / d...) values") {
  Tensor L = rnd({2, 3, 4}, 3);
  IVec t = {0, 1, 2, 1, 2, 2, 0, 0};
  HostCE ref = host_ce(L.to_vector<double>(), {2, 3, 4}, t);
  Tensor none = cross_entropy(L, targets(t, {2, 4}), opts().reduction(Reduction::None));
  kt::expect_shape(none, {2, 4});
  kt::expect_values(none, ref.per, 1e-12);
  kt::expect_values(cross_entropy(L, targets(t, {2, 4})), {ref.mean()}, 1e-12);

  Tensor L4 = rnd({2, 3, 2, 3}, 4);
  IVec t4 = {0, 1, 2, 2, 1, 0, 1, 1, 1, 2, 0, 2};
  HostCE r4 = host_ce(L4.to_vector<double>(), {2, 3, 2, 3}, t4);
  Tensor n4 = cross_entropy(L4, targets(t4, {2, 2, 3}), opts().reduction(Reduction::None));
  kt::expect_shape(n4, {2, 2, 3});
  kt::expect_values(n4, r4.per, 1e-12);
  kt::expect_values(cross_entropy(L4, targets(t4, {2, 2, 3}), opts().reduction(Reduction::Sum)), {r4.sum}, 1e-12);
  // d = 1 and size-1 dims keep their places
  Tensor L1 = rnd({3, 4, 1}, 5);
  HostCE r1 = host_ce(L1.to_vector<double>(), {3, 4, 1}, {3, 0, 1});
  kt::expect_values(cross_entropy(L1, targets({3, 0, 1}, {3, 1}), opts().reduction(Reduction::None)), r1.per, 1e-12);
}

TEST_CASE("cross_entropy with 1-D logits and a 0-D target") {
  Tensor L = tensor(Vec{1.0, 2.0, 0.5});
  Tensor T = scalar_tensor(1, kInt64);
  HostCE ref = host_ce(L.to_vector<double>(), {3}, {1});
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    Tensor l = cross_entropy(L, T, opts().reduction(r));
    kt::expect_shape(l, {});
    kt::expect_values(l, {ref.sum}, 1e-12);
  }
  CHECK_KILN_ERROR(cross_entropy(L, targets({1}, {1})),
                   "[cross_entropy] target shape (1,) does not match logits shape (3,)");
}

TEST_CASE("cross_entropy ignore_index") {
  Tensor L = rnd({5, 3}, 6);
  IVec t = {0, -100, 2, -100, 1};
  HostCE ref = host_ce(L.to_vector<double>(), {5, 3}, t);
  CHECK(ref.count == 3);
  kt::expect_values(cross_entropy(L, targets(t, {5})), {ref.mean()}, 1e-12);
  kt::expect_values(cross_entropy(L, targets(t, {5}), opts().reduction(Reduction::Sum)), {ref.sum}, 1e-12);
  kt::expect_values(cross_entropy(L, targets(t, {5}), opts().reduction(Reduction::None)), ref.per, 1e-12);
  // A custom ignore_index that is also a valid class.
  IVec t2 = {0, 2, 2, 1, 1};
  HostCE r2 = host_ce(L.to_vector<double>(), {5, 3}, t2, 2);
  kt::expect_values(cross_entropy(L, targets(t2, {5}), opts().ignore_index(2)), {r2.mean()}, 1e-12);
  // (N, C, d) with ignored positions
  Tensor L3 = rnd({2, 4, 3}, 7);
  IVec t3 = {3, -1, 0, -1, -1, 2};
  HostCE r3 = host_ce(L3.to_vector<double>(), {2, 4, 3}, t3, -1);
  kt::expect_values(cross_entropy(L3, targets(t3, {2, 3}), opts().ignore_index(-1)), {r3.mean()}, 1e-12);
  // Ignored rows get zero gradient; the mean divides by the 3 counted rows.
  Tensor Lg = L.clone().requires_grad_();
  cross_entropy(Lg, targets(t, {5})).backward();
  auto g = Lg.grad().to_vector<double>();
  for (int c = 0; c < 3; ++c) {
    CHECK(g[1 * 3 + c] == 0);
    CHECK(g[3 * 3 + c] == 0);
  }
  double row0 = g[0] + g[1] + g[2];
  CHECK(row0 == doctest::Approx(0.0).epsilon(1e-12));
  Tensor p0 = softmax(L.select(0, 0), 0);
  CHECK(g[0] == doctest::Approx((p0.to_vector<double>()[0] - 1) / 3));
  // Every target ignored: the mean is 0 / 0 (NaN, as PyTorch), the sum 0.
  Tensor all = targets({-100, -100}, {2});
  CHECK(std::isnan(cross_entropy(rnd({2, 3}, 8), all).item<double>()));
  kt::expect_values(cross_entropy(rnd({2, 3}, 8), all, opts().reduction(Reduction::Sum)), {0});
}

TEST_CASE("cross_entropy label_smoothing") {
  Tensor L = rnd({4, 5}, 9, kFloat64, 2.0);
  IVec t = {1, 0, 4, -100};
  for (double ls : {0.1, 0.3, 1.0}) {
    INFO("label_smoothing " << ls);
    HostCE ref = host_ce(L.to_vector<double>(), {4, 5}, t, -100, ls);
    kt::expect_values(cross_entropy(L, targets(t, {4}), opts().label_smoothing(ls)), {ref.mean()}, 1e-12);
    kt::expect_values(cross_entropy(L, targets(t, {4}), opts().label_smoothing(ls).reduction(Reduction::None)), ref.per,
                      1e-12);
  }
  // Uniform logits: every term is log C.
  kt::expect_values(cross_entropy(zeros({2, 4}, kFloat64), targets({0, 3}, {2}), opts().label_smoothing(0.2)),
                    {std::log(4.0)}, 1e-12);
  Tensor L3 = rnd({2, 3, 2}, 10);
  IVec t3 = {0, 2, 1, 1};
  HostCE r3 = host_ce(L3.to_vector<double>(), {2, 3, 2}, t3, -100, 0.25);
  kt::expect_values(cross_entropy(L3, targets(t3, {2, 2}), opts().label_smoothing(0.25).reduction(Reduction::Sum)),
                    {r3.sum}, 1e-12);
}

TEST_CASE("cross_entropy with large logits stays finite") {
  Tensor L = tensor(Vec{1000, 0, -1000, 1000, 1001, 999}, {2, 3});
  Tensor T = targets({2, 1}, {2});
  HostCE ref = host_ce(L.to_vector<double>(), {2, 3}, {2, 1});
  kt::expect_values(cross_entropy(L, T, opts().reduction(Reduction::None)), ref.per, 1e-9, 1e-12);
  Tensor l32 = cross_entropy(L.to(kFloat32), T, opts().reduction(Reduction::None));
  kt::expect_values(l32, ref.per, 1e-3, 1e-6);
  Tensor Lg = L.to(kFloat32).requires_grad_();
  cross_entropy(Lg, T).backward();
  for (double g : Lg.grad().to_vector<double>()) CHECK(std::isfinite(g));
}

TEST_CASE("cross_entropy errors") {
  Tensor L = zeros({2, 3});
  CHECK_KILN_ERROR(cross_entropy(L, targets({0, 5}, {2})),
                   "[cross_entropy] target 5 is out of range for 3 classes (ignore_index is -100)");
  CHECK_KILN_ERROR(cross_entropy(L, targets({-1, 0}, {2})), "[cross_entropy] target -1 is out of range for 3 classes");
  CHECK_KILN_ERROR(cross_entropy(L, targets({3, 2}, {2}), opts().ignore_index(2)),
                   "[cross_entropy] target 3 is out of range for 3 classes (ignore_index is 2)");
  CHECK_KILN_ERROR(cross_entropy(L, tensor({0.f, 1.f})),
                   "[cross_entropy] target must hold int64 class indices, got float32");
  CHECK_KILN_ERROR(cross_entropy(L, tensor({true, false})),
                   "[cross_entropy] target must hold int64 class indices, got bool");
  CHECK_KILN_ERROR(cross_entropy(L, targets({0, 1, 2}, {3})),
                   "[cross_entropy] target shape (3,) does not match logits shape (2, 3): expected (2,)");
  CHECK_KILN_ERROR(cross_entropy(L, targets({0, 1}, {2, 1})), "[cross_entropy] target shape (2, 1) does not match");
  CHECK_KILN_ERROR(cross_entropy(zeros({2, 3, 4}), targets({0, 1}, {2})),
                   "[cross_entropy] target shape (2,) does not match logits shape (2, 3, 4): expected (2, 4)");
  CHECK_KILN_ERROR(cross_entropy(arange(6).reshape({2, 3}), targets({0, 1}, {2})),
                   "[cross_entropy] expected a floating point tensor, got int64");
  CHECK_KILN_ERROR(cross_entropy(scalar_tensor(1.0), scalar_tensor(0, kInt64)),
                   "[cross_entropy] logits must be at least 1-D");
  CHECK_KILN_ERROR(cross_entropy(L, targets({0, 1}, {2}), opts().label_smoothing(1.5)),
                   "[cross_entropy] label_smoothing must be in [0, 1], got 1.5");
  CHECK_KILN_ERROR(cross_entropy(L, Tensor()), "[cross_entropy] target tensor is undefined");
}

TEST_CASE("cross_entropy gradcheck") {
  auto L = kt::leaf({4, 5}, 1);
  Tensor T = targets({0, 4, 2, 2}, {4});
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    kt::grad_ok([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], T, opts().reduction(r)); }, {L});
    kt::grad_ok(
        [&](const std::vector<Tensor>& in) {
          return cross_entropy(in[0], targets({1, -100, 3, 0}, {4}), opts().reduction(r).label_smoothing(0.2));
        },
        {L});
  }
  auto L3 = kt::leaf({2, 3, 4}, 2);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return cross_entropy(in[0], targets({0, 1, 2, 1, 2, 2, 7, 0}, {2, 4}), opts().ignore_index(7));
      },
      {L3});
  auto L4 = kt::leaf({2, 3, 2, 2}, 3);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return cross_entropy(in[0], targets({0, 1, 2, 2, 1, 0, 1, 1}, {2, 2, 2}), opts().reduction(Reduction::None));
      },
      {L4});
  auto v = kt::leaf({4}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return cross_entropy(in[0], scalar_tensor(2, kInt64)); }, {v});
  auto nc = kt::noncontig_leaf({5, 3}, 5);
  kt::grad_ok([](const std::vector<Tensor>& in) { return cross_entropy(in[0].t(), targets({4, 0, 3}, {3})); }, {nc});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        // (1, 3, 5): one example, 3 classes, 5 positions
        return cross_entropy(in[0].permute({1, 0}).unsqueeze(0), targets({2, 0, 1, 1, 0}, {1, 5}),
                             opts().label_smoothing(0.1));
      },
      {nc});
  auto e = kt::leaf({0, 3}, 6);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return cross_entropy(in[0], targets({}, {0}), opts().reduction(Reduction::Sum));
      },
      {e});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return cross_entropy(in[0], targets({}, {0}), opts().reduction(Reduction::None));
      },
      {e});
  kt::expect_shape(cross_entropy(e, targets({}, {0}), opts().reduction(Reduction::None)), {0});
}

// ---------- mse_loss ----------

TEST_CASE("mse_loss values and errors") {
  Tensor a = tensor(Vec{1, 2, 3, 4}, {2, 2}), b = tensor(Vec{0, 2, 5, 1}, {2, 2});
  kt::expect_values(mse_loss(a, b), {(1 + 0 + 4 + 9) / 4.0});
  kt::expect_values(mse_loss(a, b, Reduction::Sum), {14});
  Tensor n = mse_loss(a, b, Reduction::None);
  kt::expect_shape(n, {2, 2});
  kt::expect_values(n, {1, 0, 4, 9});
  kt::expect_values(mse_loss(a.t(), b.t(), Reduction::None), {1, 4, 0, 9});
  kt::expect_values(mse_loss(a.to(kFloat32), b.to(kFloat32)), {3.5});
  CHECK(mse_loss(a.to(kFloat32), b.to(kFloat32)).dtype() == kFloat32);
  kt::expect_values(mse_loss(scalar_tensor(3.0), scalar_tensor(1.0)), {4});
  kt::expect_values(mse_loss(zeros({0}), zeros({0}), Reduction::Sum), {0});
  CHECK_KILN_ERROR(mse_loss(a, tensor(Vec{1, 2})),
                   "[mse_loss] input shape (2, 2) and target shape (2,) differ (kiln does not broadcast losses)");
  CHECK_KILN_ERROR(mse_loss(a, b.t().reshape({4})), "[mse_loss] input shape (2, 2) and target shape (4,) differ");
  CHECK_KILN_ERROR(mse_loss(a, Tensor()), "[mse_loss] target tensor is undefined");
}

TEST_CASE("mse_loss gradcheck") {
  auto a = kt::leaf({3, 4}, 1), b = kt::leaf({3, 4}, 2);
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None})
    kt::grad_ok([r](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], r); }, {a, b});
  auto nc = kt::noncontig_leaf({4, 3}, 3);
  kt::grad_ok([](const std::vector<Tensor>& in) { return mse_loss(in[0].t(), in[1]); }, {nc, a});
  auto s = kt::leaf({}, 4), t = kt::leaf({}, 5);
  kt::grad_ok([](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1]); }, {s, t});
  auto e = kt::leaf({0, 2}, 6), f = kt::leaf({0, 2}, 7);
  kt::grad_ok([](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], Reduction::Sum); }, {e, f});
  // d/da mean((a - b)^2) = 2 (a - b) / n
  Tensor x = tensor(Vec{1, 2, 3, 4}).requires_grad_();
  mse_loss(x, tensor(Vec{0, 0, 0, 0})).backward();
  kt::expect_values(x.grad(), {0.5, 1, 1.5, 2});
}
