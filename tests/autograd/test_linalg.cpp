// matmul (every rank combination, broadcasting, layouts, dtypes, size 0) and linear.
#include "test_util.hpp"

#include <algorithm>

using namespace kiln;

namespace {

using Vec = std::vector<double>;

// Host reference for NumPy matmul on >= 2-D operands given as row-major values.
Vec ref_matmul(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, Shape* out_shape = nullptr) {
  const std::int64_t M = as[as.size() - 2], K = as.back(), N = bs.back();
  Shape ba(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  std::size_t nb = std::max(ba.size(), bb.size());
  ba.insert(ba.begin(), nb - ba.size(), 1);
  bb.insert(bb.begin(), nb - bb.size(), 1);
  Shape batch(nb);
  for (std::size_t i = 0; i < nb; ++i) batch[i] = std::max(ba[i], bb[i]);
  std::int64_t B = numel_of(batch);
  Vec out(static_cast<std::size_t>(B * M * N), 0.0);
  for (std::int64_t t = 0; t < B; ++t) {
    // batch multi-index -> flat batch offsets in a and b (size-1 dims broadcast)
    std::int64_t rem = t, oa = 0, ob = 0, sa = 1, sb = 1;
    for (std::size_t i = nb; i-- > 0;) {
      std::int64_t k = rem % batch[i];
      rem /= batch[i];
      oa += (ba[i] == 1 ? 0 : k) * sa;
      ob += (bb[i] == 1 ? 0 : k) * sb;
      sa *= ba[i];
      sb *= bb[i];
    }
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (std::int64_t k = 0; k < K; ++k)
          acc +=
              a[static_cast<std::size_t>(oa * M * K + m * K + k)] * b[static_cast<std::size_t>(ob * K * N + k * N + n)];
        out[static_cast<std::size_t>(t * M * N + m * N + n)] = acc;
      }
  }
  if (out_shape) {
    *out_shape = batch;
    out_shape->push_back(M);
    out_shape->push_back(N);
  }
  return out;
}

// matmul(a, b) (both >= 2-D) equals the host reference.
void check_matmul(const Tensor& a, const Tensor& b, double atol = 1e-9, double rtol = 1e-9) {
  Shape s;
  Vec expect = ref_matmul(a.to_vector<double>(), a.shape(), b.to_vector<double>(), b.shape(), &s);
  Tensor y = matmul(a, b);
  kt::expect_shape(y, s);
  auto got = y.to_vector<double>();
  REQUIRE(got.size() == expect.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double err = std::abs(got[i] - expect[i]) - rtol * std::abs(expect[i]);
    if (err > worst) worst = err, at = i;
  }
  INFO("worst element " << at << ": got " << (got.empty() ? 0 : got[at]) << " expected "
                        << (expect.empty() ? 0 : expect[at]));
  CHECK(worst <= atol);
}

Tensor rnd(const Shape& s, std::uint64_t seed, DType dt = kFloat64) {
  Generator g(seed);
  return randn(s, dt, &g);
}

}  // namespace

TEST_CASE("matmul: 1-D and 2-D combinations") {
  Tensor v = tensor(Vec{1, 2, 3}), w = tensor(Vec{4, 5, 6});
  Tensor d = matmul(v, w);
  kt::expect_shape(d, {});
  CHECK(d.item<double>() == 32);
  Tensor m = tensor(Vec{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor mv = matmul(m, v);
  kt::expect_shape(mv, {2});
  kt::expect_values(mv, {14, 32});
  Tensor vm = matmul(tensor(Vec{1, 2}), m);
  kt::expect_shape(vm, {3});
  kt::expect_values(vm, {9, 12, 15});
  Tensor mm = matmul(m, m.t());
  kt::expect_shape(mm, {2, 2});
  kt::expect_values(mm, {14, 32, 32, 77});
  kt::expect_values(m.matmul(tensor(Vec{1, 0, 0, 1, 1, 1}, {3, 2})), {4, 5, 10, 11});
  // 1-D with batched operands
  Tensor b3 = rnd({2, 3, 4}, 1);
  Tensor r = matmul(rnd({3}, 2), b3);
  kt::expect_shape(r, {2, 4});
  kt::expect_shape(matmul(b3, rnd({4}, 3)), {2, 3});
  check_matmul(b3, rnd({4, 1}, 3));
  Tensor vv = rnd({3}, 2);
  kt::expect_values(r, ref_matmul(vv.to_vector<double>(), {1, 3}, b3.to_vector<double>(), {2, 3, 4}), 1e-12);
}

TEST_CASE("matmul: batched 3-D and 4-D with batch broadcasting") {
  check_matmul(rnd({4, 2, 3}, 1), rnd({4, 3, 5}, 2));
  check_matmul(rnd({2, 1, 3, 4}, 3), rnd({5, 4, 6}, 4));  // -> (2, 5, 3, 6)
  kt::expect_shape(matmul(rnd({2, 1, 3, 4}, 3), rnd({5, 4, 6}, 4)), {2, 5, 3, 6});
  check_matmul(rnd({1, 3, 4}, 5), rnd({3, 2, 4, 2}, 6));
  check_matmul(rnd({3, 2, 4}, 7), rnd({4, 2}, 8));  // (B, T, C) @ (C, N)
  check_matmul(rnd({2, 3, 2, 4}, 9), rnd({4, 5}, 10));
  check_matmul(rnd({3, 4}, 11), rnd({2, 4, 3}, 12));  // 2-D @ 3-D broadcasts the left operand
  CHECK_KILN_ERROR(matmul(rnd({2, 3, 4}, 1), rnd({3, 4, 5}, 2)), "[matmul]");
  CHECK_KILN_ERROR(matmul(rnd({2, 3, 4}, 1), rnd({3, 4, 5}, 2)), "cannot be broadcast");
}

TEST_CASE("matmul: transposed / permuted / sliced and expanded operands") {
  Tensor a = rnd({5, 4}, 1), b = rnd({6, 5}, 2);
  check_matmul(a.t(), b.t());                                      // both transposed
  check_matmul(b, a);                                              // plain
  check_matmul(rnd({4, 8}, 3).slice(1, 0, 8, 2), rnd({4, 3}, 4));  // column stride 2
  check_matmul(rnd({9, 4}, 5).slice(0, 1, 9, 2), rnd({4, 3}, 6));  // row stride 2 -> (4, 4) @ (4, 3)
  Tensor p = rnd({3, 4, 2}, 7).permute({2, 0, 1});                 // (2, 3, 4), batch stride 1
  check_matmul(p, rnd({2, 4, 5}, 8));
  check_matmul(rnd({4, 2, 3}, 9).transpose(0, 1), rnd({2, 3, 2}, 10));  // non-collapsible batch
  check_matmul(rnd({3, 4}, 11).expand({2, 3, 4}), rnd({2, 4, 2}, 12));
  check_matmul(rnd({2, 1, 4}, 13).expand({2, 3, 4}), rnd({4, 2}, 14));  // stride-0 rows, fold path
  check_matmul(rnd({3, 1}, 15), rnd({1, 3}, 16));                       // outer product
  check_matmul(rnd({1, 5}, 17), rnd({5, 1}, 18));
  check_matmul(rnd({2, 3, 5}, 19, kFloat32).select(2, 1).unsqueeze(-1), rnd({1, 2}, 20, kFloat32), 1e-5, 1e-5);
  check_matmul(rnd({4, 6}, 21, kFloat32).t().slice(0, 1, 6, 2), rnd({4, 3}, 22, kFloat32).t().t(), 1e-5, 1e-5);
}

TEST_CASE("matmul: dtypes") {
  Tensor ai = arange(6).reshape({2, 3}), bi = arange(6).reshape({3, 2});
  Tensor ci = matmul(ai, bi);
  CHECK(ci.dtype() == kInt64);
  CHECK(ci.to_vector<std::int64_t>() == std::vector<std::int64_t>{10, 13, 28, 40});
  CHECK(matmul(ai.t(), ai).to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 12, 15, 12, 17, 22, 15, 22, 29});
  Tensor big = full({2, 2}, std::int64_t{1} << 40, kInt64);
  CHECK(matmul(big, eye(2, -1, kInt64)).to_vector<std::int64_t>()[0] == (std::int64_t{1} << 40));
  Tensor mixed = matmul(ai, bi.to(kFloat32));
  CHECK(mixed.dtype() == kFloat32);
  kt::expect_values(mixed, {10, 13, 28, 40});
  CHECK(matmul(ai.to(kFloat32), bi.to(kFloat64)).dtype() == kFloat64);
  // Gradients come back in each operand's dtype.
  Tensor a32 = tensor({1.f, 2.f, 3.f, 4.f}).reshape({2, 2});
  a32.requires_grad_();
  Tensor b64 = tensor(Vec{1, 0, 0, 1}, {2, 2}).requires_grad_();
  matmul(a32, b64).sum().backward();
  CHECK(a32.grad().dtype() == kFloat32);
  CHECK(b64.grad().dtype() == kFloat64);
  kt::expect_values(a32.grad(), {1, 1, 1, 1});
  kt::expect_values(b64.grad(), {4, 4, 6, 6});
}

TEST_CASE("matmul: size-0 operands") {
  Tensor k0 = matmul(ones({2, 0}), ones({0, 3}));
  kt::expect_shape(k0, {2, 3});
  kt::expect_values(k0, std::vector<double>(6, 0.0));
  kt::expect_values(matmul(ones({0}), ones({0})), {0});
  kt::expect_values(matmul(ones({2, 4, 0}, kFloat64), ones({0, 3}, kFloat64)), std::vector<double>(24, 0.0));
  kt::expect_values(matmul(ones({2, 0}, kInt64), ones({0, 2}, kInt64)), {0, 0, 0, 0});
  // A K = 0 product must write zeros even into recycled memory.
  for (int i = 0; i < 3; ++i) {
    Tensor junk = full({64, 64}, 7.0);
    junk = Tensor();
    kt::expect_values(matmul(ones({8, 0}), ones({0, 8})), std::vector<double>(64, 0.0));
  }
  kt::expect_shape(matmul(ones({0, 3}), ones({3, 4})), {0, 4});
  kt::expect_shape(matmul(ones({3, 4}), ones({4, 0})), {3, 0});
  kt::expect_shape(matmul(ones({0, 2, 3}), ones({3, 4})), {0, 2, 4});
  kt::expect_shape(matmul(ones({0, 2, 3}), ones({1, 3, 4})), {0, 2, 4});
  kt::expect_shape(matmul(ones({0}), ones({0, 5})), {5});

  auto a = kt::leaf({2, 0}, 1), b = kt::leaf({0, 3}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b});
  matmul(a, b).sum().backward();
  kt::expect_shape(a.grad(), {2, 0});
  kt::expect_shape(b.grad(), {0, 3});
  auto c = kt::leaf({0, 3}, 3), d = kt::leaf({3, 2}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {c, d});
  matmul(c, d).sum().backward();
  kt::expect_values(d.grad(), std::vector<double>(6, 0.0));
}

TEST_CASE("matmul: float32 300x200 @ 200x100 against a float64 loop") {
  Tensor a = rnd({300, 200}, 1, kFloat32), b = rnd({200, 100}, 2, kFloat32);
  check_matmul(a, b, 2e-4, 1e-5);
  check_matmul(rnd({200, 300}, 3, kFloat32).t(), b, 2e-4, 1e-5);
  check_matmul(a, rnd({100, 200}, 4, kFloat32).t(), 2e-4, 1e-5);
  check_matmul(rnd({300, 400}, 5, kFloat32).slice(1, 0, 400, 2), b, 2e-4, 1e-5);
  check_matmul(rnd({3, 70, 200}, 6, kFloat32), b, 2e-4, 1e-5);
  check_matmul(rnd({3, 70, 200}, 7), rnd({3, 200, 90}, 8), 1e-10, 1e-12);
}

TEST_CASE("matmul errors") {
  CHECK_KILN_ERROR(matmul(ones({2, 3}), ones({4, 5})),
                   "[matmul] shapes (2, 3) and (4, 5) cannot be multiplied: 3 != 4");
  CHECK_KILN_ERROR(matmul(ones({3}), ones({4})), "[matmul] shapes (3,) and (4,) cannot be multiplied: 3 != 4");
  CHECK_KILN_ERROR(matmul(ones({2, 3}), ones({2})), "[matmul] shapes (2, 3) and (2,) cannot be multiplied: 3 != 2");
  CHECK_KILN_ERROR(matmul(ones({4}), ones({2, 3, 5})),
                   "[matmul] shapes (4,) and (2, 3, 5) cannot be multiplied: 4 != 3");
  CHECK_KILN_ERROR(matmul(ones({2, 2, 3}), ones({3, 3, 1})), "[matmul] shapes (2, 2, 3) and (3, 3, 1)");
  CHECK_KILN_ERROR(matmul(ones({2, 2}, kBool), ones({2, 2})),
                   "[matmul] bool tensors are not supported (got bool and float32)");
  CHECK_KILN_ERROR(matmul(ones({2}), ones({2}, kBool)), "[matmul] bool tensors are not supported");
  CHECK_KILN_ERROR(matmul(scalar_tensor(2.0), ones({3})),
                   "[matmul] both arguments must be at least 1-D, got shapes () and (3,)");
  CHECK_KILN_ERROR(matmul(ones({3, 3}), scalar_tensor(2.0)), "[matmul] both arguments must be at least 1-D");
  CHECK_KILN_ERROR(matmul(Tensor(), ones({3})), "[matmul] input tensor is undefined");
}

TEST_CASE("matmul gradcheck: every rank combination") {
  auto v3 = kt::leaf({3}, 1), w3 = kt::leaf({3}, 2);
  auto m23 = kt::leaf({2, 3}, 3), m34 = kt::leaf({3, 4}, 4);
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  kt::grad_ok(mm, {v3, w3});    // 1-D . 1-D -> 0-D
  kt::grad_ok(mm, {m23, v3});   // 2-D . 1-D
  kt::grad_ok(mm, {w3, m34});   // 1-D . 2-D
  kt::grad_ok(mm, {m23, m34});  // 2-D . 2-D
  auto b1 = kt::leaf({2, 2, 3}, 5), b2 = kt::leaf({2, 3, 2}, 6);
  kt::grad_ok(mm, {b1, b2});
  kt::grad_ok(mm, {b1, v3});                // 3-D . 1-D
  kt::grad_ok(mm, {kt::leaf({2}, 7), b1});  // 1-D . 3-D
  auto btc = kt::leaf({2, 3, 3}, 8), cn = kt::leaf({3, 2}, 9);
  kt::grad_ok(mm, {btc, cn});                       // (B, T, C) @ (C, N)
  kt::grad_ok(mm, {m23, kt::leaf({2, 3, 2}, 10)});  // 2-D left operand broadcast over the batch
}

TEST_CASE("matmul gradcheck: batch broadcasting / non-contiguous / 0-D-like") {
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  auto a = kt::leaf({2, 1, 2, 3}, 1), b = kt::leaf({3, 3, 2}, 2);  // -> (2, 3, 2, 2)
  kt::grad_ok(mm, {a, b});
  auto c = kt::leaf({1, 2, 3}, 3), d = kt::leaf({2, 1, 3, 2}, 4);
  kt::grad_ok(mm, {c, d});
  auto nc1 = kt::noncontig_leaf({3, 2}, 5), nc2 = kt::noncontig_leaf({2, 3, 4}, 6);
  kt::grad_ok([](const std::vector<Tensor>& in) { return matmul(in[0].t(), in[1]); }, {nc1, nc1});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return matmul(in[0].permute({1, 0, 2}), in[1].t());
      },
      {nc2, kt::leaf({5, 4}, 7)});
  kt::grad_ok([](const std::vector<Tensor>& in) { return matmul(in[0].slice(1, 0, 4, 2), in[1].slice(0, 1, 3)); },
              {kt::leaf({3, 4}, 8), kt::leaf({3, 3}, 9)});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return matmul(in[0].expand({2, 2, 3}), in[1]);
      },
      {kt::leaf({2, 3}, 10), kt::leaf({2, 3, 2}, 11)});
  // Scalar results of 1-D . 1-D feed further math.
  kt::grad_ok([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]) * in[0]; },
              {kt::leaf({3}, 12), kt::leaf({3}, 13)});
}

TEST_CASE("matmul double backward (create_graph)") {
  // d/da of sum((a @ b)^2) is 2 (a b) b^T; gradcheck that gradient w.r.t. a and b.
  auto grad_fn = [](const std::vector<Tensor>& in) {
    Tensor y = matmul(in[0], in[1]);
    Tensor s = (y * y).sum();
    auto gs = autograd::grad({s}, {in[0], in[1]}, {}, false, /*create_graph=*/true);
    return cat({gs[0].flatten(), gs[1].flatten()});
  };
  auto a = kt::leaf({2, 3}, 1), b = kt::leaf({3, 2}, 2);
  kt::grad_ok(grad_fn, {a, b});
  auto ba = kt::leaf({2, 1, 2, 3}, 3), bb = kt::leaf({2, 3, 2}, 4);
  kt::grad_ok(grad_fn, {ba, bb});
  auto v = kt::leaf({3}, 5), m = kt::noncontig_leaf({3, 2}, 6);
  kt::grad_ok(grad_fn, {v, m});
  // Closed form check of the second derivative: d2/da2 of sum(a @ b) is zero, of sum((a b)^2) is 2 b b^T per row.
  Tensor x = tensor(Vec{1, 2}, {1, 2}).requires_grad_();
  Tensor w = tensor(Vec{1, 3, 2, 4}, {2, 2});
  Tensor y = matmul(x, w);
  Tensor gx = autograd::grad({(y * y).sum()}, {x}, {}, false, true)[0];
  kt::expect_values(gx, {2 * (5 * 1 + 11 * 3), 2 * (5 * 2 + 11 * 4)});
  Tensor h0 = autograd::grad({gx.select(1, 0)}, {x}, {}, true, false)[0];
  kt::expect_values(h0, {2 * (1 * 1 + 3 * 3), 2 * (1 * 2 + 3 * 4)});
}

TEST_CASE("linear with and without bias") {
  Tensor x = tensor(Vec{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor w = tensor(Vec{1, 0, -1, 2, 1, 0}, {2, 3});
  Tensor b = tensor(Vec{10, 20});
  kt::expect_values(linear(x, w), {-2, 4, -2, 13});
  kt::expect_values(linear(x, w, b), {8, 24, 8, 33});
  kt::expect_shape(linear(tensor(Vec{1, 2, 3}), w, b), {2});
  kt::expect_values(linear(tensor(Vec{1, 2, 3}), w, b), {8, 24});
  kt::expect_shape(linear(ones({4, 5, 3}, kFloat64), w, b), {4, 5, 2});
  kt::expect_shape(linear(ones({0, 3}, kFloat64), w, b), {0, 2});
  CHECK_KILN_ERROR(linear(x, w, tensor(Vec{1, 2, 3})), "[linear] bias must have shape (2,), got (3,)");
  CHECK_KILN_ERROR(linear(x, w, tensor(Vec{1, 2}, {1, 2})), "[linear] bias must have shape (2,), got (1, 2)");
  CHECK_KILN_ERROR(linear(ones({2, 4}, kFloat64), w),
                   "[linear] input shape (2, 4) does not match weight shape (2, 3): last dim 4 != in_features 3");
  CHECK_KILN_ERROR(linear(x, tensor(Vec{1, 2, 3})),
                   "[linear] weight must be 2-D (out_features, in_features), got shape (3,)");
  CHECK_KILN_ERROR(linear(scalar_tensor(1.0), w), "[linear] input shape () does not match weight shape (2, 3)");

  auto lx = kt::leaf({2, 4, 3}, 1), lw = kt::leaf({2, 3}, 2), lb = kt::leaf({2}, 3);
  kt::grad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {lx, lw, lb});
  kt::grad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1]); }, {lx, lw});
  auto nx = kt::noncontig_leaf({3, 3}, 4), nw = kt::noncontig_leaf({3, 2}, 5);
  kt::grad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1].t(), in[2]); }, {nx, nw, lb});
  kt::grad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {kt::leaf({3}, 6), lw, lb});
  kt::grad_ok([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {kt::leaf({0, 3}, 7), lw, lb});
  // Bias gradient sums over every leading dim.
  linear(lx, lw, lb).sum().backward();
  kt::expect_values(lb.grad(), {8, 8});
}

TEST_CASE("bfloat16 matmul with a transposed right operand: every N from 1 to 130, batched and broadcast") {
  // oneDNN 2.6.3's AMX kernels summed wrongly for N in (48, 64) when B is stored (N, K), as a
  // linear weight is (errors of 10-100 against sums of size ~1); kiln hands them a dense copy.
  for (std::int64_t N = 1; N <= 130; N += 3) {
    for (const Shape& bs : {Shape{}, Shape{3}}) {
      Shape xs = bs, ws = bs;
      xs.insert(xs.end(), {21, 40});
      ws.insert(ws.end(), {N, 40});
      const Tensor x = rnd(xs, 100 + N).to(kBFloat16), w = rnd(ws, 200 + N).to(kBFloat16);
      const Tensor ref = matmul(x.to(kFloat64), w.to(kFloat64).mT());
      const Tensor y = matmul(x, w.mT());
      INFO("N = " << N << ", batch " << shape_str(bs));
      // Inputs are exact; float32 accumulation of 40 products, one bfloat16 rounding of the result.
      const double err = amax(abs(y.to(kFloat64) - ref) - 0x1p-8 * abs(ref)).item<double>();
      CHECK(err < 1e-3);
      if (!bs.empty()) {  // one (N, K) weight broadcast over the batch
        const Tensor w0 = w.select(0, 0);
        const Tensor ref0 = matmul(x.to(kFloat64), w0.to(kFloat64).mT());
        CHECK(amax(abs(matmul(x, w0.mT()).to(kFloat64) - ref0) - 0x1p-8 * abs(ref0)).item<double>() < 1e-3);
      }
    }
  }
}

TEST_CASE("linear's fused GEMM: float32, float64 and bfloat16 against a host reference, K = 0, mixed dtypes") {
  // in = 600 spans more than one BLAS block of the inner dim; rows from three leading dims.
  Tensor x = rnd({3, 7, 600}, 11), w = rnd({50, 600}, 12), b = rnd({50}, 13);
  Vec ref = ref_matmul(x.to_vector<double>(), x.shape(), w.t().contiguous().to_vector<double>(), {600, 50});
  auto bv = b.to_vector<double>();
  for (std::size_t i = 0; i < ref.size(); ++i) ref[i] += bv[i % 50];
  auto worst = [&](const Tensor& y) {
    REQUIRE(y.shape() == Shape{3, 7, 50});
    auto got = y.to_vector<double>();
    double m = 0;
    for (std::size_t i = 0; i < got.size(); ++i) m = std::max(m, std::abs(got[i] - ref[i]));
    return m;
  };
  CHECK(worst(linear(x, w, b)) < 1e-11);
  CHECK(worst(linear(x.to(kFloat32), w.to(kFloat32), b.to(kFloat32))) < 1e-4);
  CHECK(worst(linear(x.to(kBFloat16), w.to(kBFloat16), b.to(kBFloat16))) < 0.5);
  // A non-contiguous input and a strided bias give the same numbers.
  Tensor xt = x.transpose(0, 1).contiguous().transpose(0, 1);
  Tensor bs = stack({b, b}, 1).select(1, 0);
  CHECK(worst(linear(xt, w, bs)) < 1e-11);
  // Mixed dtypes promote as matmul does.
  CHECK(worst(linear(x.to(kFloat32), w, b)) < 1e-4);
  // K = 0: every row is the bias, and its gradient counts the rows.
  Tensor b0 = tensor(Vec{1, 2, 3}).requires_grad_();
  Tensor y0 = linear(zeros({4, 0}, kFloat64), zeros({3, 0}, kFloat64), b0);
  kt::expect_values(y0, {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3});
  y0.sum().backward();
  kt::expect_values(b0.grad(), {4, 4, 4});
  // Integer inputs take matmul's int64 GEMM.
  using I = std::vector<std::int64_t>;
  Tensor yi = linear(tensor(I{1, 2, 3}, {1, 3}), tensor(I{1, 0, -1, 2, 1, 0}, {2, 3}), tensor(I{10, 20}));
  CHECK(yi.dtype() == kInt64);
  kt::expect_values(yi, {8, 24});
  // Second order through the fused node: the weight gradient of sum((x W^T + b)^2), differentiated.
  auto lx = kt::leaf({2, 3, 4}, 8), lw = kt::leaf({5, 4}, 9), lb = kt::leaf({5}, 10);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        Tensor y = linear(in[0], in[1], in[2]);
        return autograd::grad({(y * y).sum()}, {in[0], in[1], in[2]}, {}, true, true)[1];
      },
      {lx, lw, lb});
}
