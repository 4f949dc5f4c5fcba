// Shape ops: views, copies, conversions, cat/stack/split/chunk — values, gradients, errors.
#include "test_util.hpp"

using namespace kiln;

namespace {

Tensor f64(const std::vector<double>& v, const Shape& s) { return tensor(v, s); }

// 0, 1, 2, ... as float64 with shape s.
Tensor iota64(const Shape& s) { return arange(0, numel_of(s), 1, kFloat64).reshape(s); }

std::vector<double> iota_vals(std::int64_t n) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(i);
  return v;
}

// A weighted sum so every output element gets a distinct gradient.
Tensor weighted(const Tensor& y) {
  Tensor w = arange(1, y.numel() + 1, 1, kFloat64).reshape(y.shape());
  return (y * w).sum();
}

}  // namespace

TEST_CASE("view: -1 inference / sharing storage / errors") {
  Tensor x = iota64({2, 3, 4});
  Tensor v = x.view({6, -1});
  kt::expect_shape(v, {6, 4});
  kt::expect_values(v, iota_vals(24));
  kt::expect_shape(x.view({-1}), {24});
  kt::expect_shape(x.view({2, -1, 2}), {2, 6, 2});
  {
    NoGradGuard ng;
    v.select(0, 0).fill_(-1);
  }
  CHECK(x.select(0, 0).select(0, 0).to_vector<double>() == std::vector<double>{-1, -1, -1, -1});

  CHECK_KILN_ERROR(x.view({5, 5}), "[view] shape (5, 5) is invalid for an input of shape (2, 3, 4) (24 elements)");
  CHECK_KILN_ERROR(x.view({-1, -1}), "only one dimension can be -1");
  CHECK_KILN_ERROR(x.view({5, -1}), "[view] shape (5, -1) is invalid");
  CHECK_KILN_ERROR(x.view({-2, 12}), "invalid dimension -2");
  CHECK_KILN_ERROR(x.transpose(0, 2).view({24}), "use reshape()");
  // A view of a sliced tensor works when the strides allow it.
  Tensor s = x.slice(2, 0, 3);  // (2, 3, 3), strides (12, 4, 1)
  kt::expect_shape(s.view({6, 3}), {6, 3});
  kt::expect_values(s.view({6, 3}).select(0, 5), {20, 21, 22});
  CHECK_KILN_ERROR(s.view({18}), "without copying");
  // Every other element of a contiguous buffer is one uniform stride: viewable as 1-D.
  Tensor s2 = iota64({2, 3, 4}).slice(2, 0, 4, 2);
  kt::expect_values(s2.view({12}).slice(0, 0, 3), {0, 2, 4});
}

TEST_CASE("view/reshape gradcheck incl. non-contiguous / size-0 / 0-D") {
  auto x = kt::leaf({2, 3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].view({4, -1}) * in[0].view({4, 6}); }, {x});
  auto nc = kt::noncontig_leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].reshape({-1}); }, {nc});
  auto p = kt::leaf({3, 4}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].t().reshape({2, 6}); }, {p});
  auto s = kt::leaf({}, 3);
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].reshape({1, 1}) * 3.0; }, {s});
  auto e = kt::leaf({0, 3}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].reshape({3, 0}); }, {e});
  kt::expect_shape(e.reshape({-1, 3}), {0, 3});
  CHECK_KILN_ERROR(e.reshape({0, -1}), "[reshape] shape (0, -1) is invalid");
  // The reshape gradient has the input's shape even when reshape had to copy.
  Tensor pt = p.t();
  weighted(pt.reshape({12})).backward();
  kt::expect_shape(p.grad(), {3, 4});
  // p.t() flattened row-major: element k of the result is p[k % 3][k / 3], so p.grad[i][j] = 3 * j + i + 1.
  std::vector<double> expect;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) expect.push_back(3 * j + i + 1);
  kt::expect_values(p.grad(), expect);
}

TEST_CASE("view / reshape of expanded and size-1 layouts") {
  Tensor e = tensor(std::vector<double>{1, 2, 3}, {3, 1}).expand({3, 4});
  kt::expect_shape(e.view({3, 2, 2}), {3, 2, 2});
  kt::expect_values(e.view({3, 2, 2}), {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
  CHECK_KILN_ERROR(e.view({12}), "use reshape()");
  kt::expect_values(e.reshape({12}), {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
  kt::expect_values(e.reshape({4, 3}), {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
  Tensor r = iota64({1, 3}).t();  // (3, 1), strides (1, 3)
  kt::expect_values(r.view({3}), {0, 1, 2});
  kt::expect_values(r.view({1, 3, 1}), {0, 1, 2});
  Tensor u = iota64({2, 3}).t().unsqueeze(0).unsqueeze(-1);  // (1, 3, 2, 1)
  kt::expect_values(u.reshape({6}), {0, 3, 1, 4, 2, 5});
  kt::expect_values(u.reshape({3, 2}), {0, 3, 1, 4, 2, 5});
  auto a = kt::leaf({3, 1});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].expand({3, 4}).reshape({2, 6}); }, {a});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].expand({3, 4}).view({3, 2, 2}); }, {a});
}

TEST_CASE("reshape of a non-contiguous tensor copies and keeps values") {
  Tensor x = iota64({2, 3});
  Tensor y = x.t().reshape({6});
  kt::expect_values(y, {0, 3, 1, 4, 2, 5});
  kt::expect_values(x.reshape({3, 2}), {0, 1, 2, 3, 4, 5});
  CHECK_KILN_ERROR(x.reshape({4, 2}), "[reshape] shape (4, 2) is invalid for an input of shape (2, 3) (6 elements)");
}

TEST_CASE("flatten (autograd)") {
  Tensor x = iota64({2, 3, 4});
  kt::expect_shape(x.flatten(), {24});
  kt::expect_shape(x.flatten(1), {2, 12});
  kt::expect_shape(x.flatten(0, 1), {6, 4});
  kt::expect_shape(x.flatten(-2, -1), {2, 12});
  kt::expect_shape(scalar_tensor(3.0).flatten(), {1});
  kt::expect_values(x.permute({2, 0, 1}).flatten(1), [] {
    std::vector<double> v;
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) v.push_back(i * 12 + j * 4 + k);
    return v;
  }());
  CHECK_KILN_ERROR(x.flatten(2, 1), "[flatten] start_dim 2 must not come after end_dim 1");
  CHECK_KILN_ERROR(x.flatten(3), "[flatten] dim 3 out of range");
  auto nc = kt::noncontig_leaf({2, 3, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].flatten(1); }, {nc});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].flatten() * 2.0; }, {s});
}

TEST_CASE("permute and transpose") {
  Tensor x = iota64({2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  kt::expect_shape(p, {4, 2, 3});
  CHECK(p.select(0, 1).select(0, 1).select(0, 2).item<double>() == 12 + 8 + 1);
  kt::expect_shape(x.permute({-1, -3, -2}), {4, 2, 3});
  kt::expect_shape(x.transpose(0, -1), {4, 3, 2});
  kt::expect_values(iota64({2, 3}).transpose(0, 1), {0, 3, 1, 4, 2, 5});
  kt::expect_values(iota64({2, 3}).t(), {0, 3, 1, 4, 2, 5});
  CHECK(p.storage() == x.storage());
  CHECK_KILN_ERROR(x.permute({0, 1}), "[permute] got 2 dims (0, 1) for a 3-D tensor of shape (2, 3, 4)");
  CHECK_KILN_ERROR(x.permute({0, 1, 1}), "[permute] dim 1 repeated in (0, 1, 1)");
  CHECK_KILN_ERROR(x.permute({0, 1, 3}), "dim 3 out of range");
  CHECK_KILN_ERROR(x.transpose(0, 3), "[transpose] dim 3 out of range");

  auto a = kt::leaf({2, 3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].permute({1, 2, 0}) * in[0].permute({1, 2, 0}); }, {a});
  auto nc = kt::noncontig_leaf({3, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].transpose(0, 1); }, {nc});
  auto e = kt::leaf({0, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].t(); }, {e});
  // Gradient arrives in the input's layout.
  auto b = kt::leaf({2, 3});
  weighted(b.t()).backward();
  kt::expect_values(b.grad(), {1, 3, 5, 2, 4, 6});
}

TEST_CASE("narrow (autograd)") {
  Tensor x = iota64({3, 4});
  kt::expect_values(x.narrow(1, 1, 2), {1, 2, 5, 6, 9, 10});
  kt::expect_values(x.narrow(0, -1, 1), {8, 9, 10, 11});
  kt::expect_shape(x.narrow(1, 4, 0), {3, 0});
  CHECK_KILN_ERROR(x.narrow(1, 3, 2), "[narrow] start 3 and length 2 are out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(x.narrow(0, 0, -1), "[narrow] start 0 and length -1 are out of range");
  CHECK_KILN_ERROR(scalar_tensor(1.0).narrow(0, 0, 1), "[narrow] cannot narrow a 0-D tensor");
  auto a = kt::leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].narrow(1, 1, 2); }, {a});
  auto nc = kt::noncontig_leaf({4, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].narrow(0, 1, 3) * 2.0; }, {nc});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].narrow(0, 1, 0); }, {nc});
  weighted(a.narrow(1, 1, 2)).backward();
  kt::expect_values(a.grad(), {0, 1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 0});
}

TEST_CASE("slice: steps / negative bounds / clamping") {
  Tensor x = iota64({10});
  kt::expect_values(x.slice(0, 1, 8, 3), {1, 4, 7});
  kt::expect_values(x.slice(0, -3, 10), {7, 8, 9});
  kt::expect_values(x.slice(0, -4, -1, 2), {6, 8});
  kt::expect_values(x.slice(0, 0, 100, 4), {0, 4, 8});
  kt::expect_values(x.slice(0, -100, 2), {0, 1});
  kt::expect_shape(x.slice(0, 5, 2), {0});
  kt::expect_shape(x.slice(0, 9, 10, 5), {1});
  Tensor m = iota64({3, 4});
  kt::expect_values(m.slice(-1, 1, 4, 2), {1, 3, 5, 7, 9, 11});
  kt::expect_values(m.slice(0, 1, 3).slice(1, 0, 4, 3), {4, 7, 8, 11});
  CHECK_KILN_ERROR(x.slice(0, 0, 5, 0), "[slice] step must be positive, got 0");
  CHECK_KILN_ERROR(x.slice(0, 0, 5, -1), "[slice] step must be positive, got -1");
  CHECK_KILN_ERROR(x.slice(1, 0, 5), "[slice] dim 1 out of range");
  CHECK_KILN_ERROR(scalar_tensor(1.0).slice(0, 0, 1), "[slice] cannot slice a 0-D tensor");

  auto a = kt::leaf({4, 7});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].slice(1, 1, 7, 2); }, {a});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].slice(0, -3, -1).slice(1, -5, 7, 3); }, {a});
  auto nc = kt::noncontig_leaf({5, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].slice(0, 0, 5, 2) * in[0].slice(0, 1, 5, 2).sum(); },
              {nc});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].slice(0, 3, 3); }, {nc});
  auto v = kt::leaf({6});
  weighted(v.slice(0, 1, 6, 2)).backward();
  kt::expect_values(v.grad(), {0, 1, 0, 2, 0, 3});
}

TEST_CASE("select (autograd)") {
  Tensor x = iota64({3, 4});
  kt::expect_values(x.select(0, 1), {4, 5, 6, 7});
  kt::expect_values(x.select(1, -1), {3, 7, 11});
  Tensor s = x.select(0, 2).select(0, 3);
  kt::expect_shape(s, {});
  CHECK(s.item<double>() == 11);
  CHECK_KILN_ERROR(x.select(0, 3), "[select] index 3 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(x.select(1, -5), "[select] index -5 is out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(scalar_tensor(1.0).select(0, 0), "[select] cannot select from a 0-D tensor");
  auto a = kt::leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].select(1, 2); }, {a});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].select(0, -1).select(0, 0); }, {a});
  auto nc = kt::noncontig_leaf({2, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].select(0, 1) * in[0].select(0, 0); }, {nc});
  auto e = kt::leaf({0, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].select(1, 1); }, {e});
  weighted(a.select(1, 2)).backward();
  kt::expect_values(a.grad(), {0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0});
}

TEST_CASE("expand / broadcast_to") {
  Tensor c = f64({1, 2, 3}, {3, 1});
  Tensor e = c.expand({2, 3, 4});
  kt::expect_shape(e, {2, 3, 4});
  CHECK(e.stride(0) == 0);
  CHECK(e.stride(2) == 0);
  kt::expect_values(e.select(0, 1).select(1, 3), {1, 2, 3});
  kt::expect_shape(c.expand({-1, 5}), {3, 5});
  kt::expect_shape(broadcast_to(c, {3, 3}), {3, 3});
  kt::expect_shape(c.broadcast_to({2, 3, 2}), {2, 3, 2});
  kt::expect_values(scalar_tensor(7.0).expand({2, 2}), {7, 7, 7, 7});
  kt::expect_shape(zeros({0, 1}).expand({0, 4}), {0, 4});
  kt::expect_shape(zeros({1, 2}).expand({0, 2}), {0, 2});
  CHECK_KILN_ERROR(c.expand({3, 4, 2}), "[expand] cannot expand shape (3, 1) to (3, 4, 2): dim 1 has size 3");
  CHECK_KILN_ERROR(c.expand({2}), "[expand] cannot expand shape (3, 1) to fewer dims (2,)");
  CHECK_KILN_ERROR(c.expand({-1, 3, 2}), "[expand] -1 is not allowed for the new leading dim 0");

  auto a = kt::leaf({3, 1});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].expand({2, 3, 4}); }, {a});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].expand({2, 3}); }, {s});
  auto nc = kt::noncontig_leaf({1, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return broadcast_to(in[0], {4, 3}) * 1.5; }, {nc});
  auto z = kt::leaf({1, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].expand({0, 2}); }, {z});
  // Gradient of an expand to size 0 is zero.
  auto z2 = kt::leaf({1, 2}, 5);
  z2.expand({0, 2}).sum().backward();
  kt::expect_values(z2.grad(), {0, 0});
  a.expand({2, 3, 4}).sum().backward();
  kt::expect_values(a.grad(), {8, 8, 8});
}

TEST_CASE("squeeze / unsqueeze (autograd)") {
  Tensor x = zeros({2, 1, 3, 1});
  kt::expect_shape(x.squeeze(), {2, 3});
  kt::expect_shape(x.squeeze(1), {2, 3, 1});
  kt::expect_shape(x.squeeze(-1), {2, 1, 3});
  kt::expect_shape(x.squeeze(0), {2, 1, 3, 1});  // size 2: unchanged
  kt::expect_shape(squeeze(x, std::nullopt), {2, 3});
  kt::expect_shape(scalar_tensor(1.0).squeeze(), {});
  kt::expect_shape(zeros({1}).squeeze(), {});
  kt::expect_shape(x.unsqueeze(0), {1, 2, 1, 3, 1});
  kt::expect_shape(x.unsqueeze(-1), {2, 1, 3, 1, 1});
  kt::expect_shape(x.unsqueeze(4), {2, 1, 3, 1, 1});
  kt::expect_shape(scalar_tensor(1.0).unsqueeze(0), {1});
  kt::expect_shape(zeros({0, 3}).unsqueeze(1), {0, 1, 3});
  CHECK_KILN_ERROR(x.unsqueeze(5), "[unsqueeze] dim 5 out of range");
  CHECK_KILN_ERROR(x.squeeze(4), "[squeeze] dim 4 out of range");
  kt::expect_values(iota64({2, 3}).unsqueeze(1).select(2, 1), {1, 4});
  // unsqueeze of a transposed view keeps it a view with the right values.
  Tensor t = iota64({2, 3}).t().unsqueeze(1);
  kt::expect_values(t, {0, 3, 1, 4, 2, 5});

  auto a = kt::leaf({2, 1, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].squeeze() * in[0].squeeze(1); }, {a});
  auto nc = kt::noncontig_leaf({3, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].t().unsqueeze(1).unsqueeze(-1); }, {nc});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].unsqueeze(0).expand({3}); }, {s});
}

TEST_CASE("contiguous and clone") {
  Tensor x = iota64({2, 3});
  CHECK(x.contiguous().is_same(x));
  Tensor t = x.t();
  CHECK_FALSE(t.is_contiguous());
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.storage() != x.storage());
  kt::expect_values(c, {0, 3, 1, 4, 2, 5});
  Tensor k = x.clone();
  CHECK(k.storage() != x.storage());
  {
    NoGradGuard ng;
    k.fill_(5);
  }
  kt::expect_values(x, {0, 1, 2, 3, 4, 5});
  kt::expect_values(t.clone(), {0, 3, 1, 4, 2, 5});
  kt::expect_values(clone(arange(3)), {0, 1, 2});
  CHECK(clone(arange(3)).dtype() == kInt64);

  auto nc = kt::noncontig_leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return in[0].contiguous() * in[0].clone(); }, {nc});
  auto p = kt::leaf({2, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return contiguous(in[0].t()); }, {p});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return clone(in[0]); }, {s});
  auto e = kt::leaf({0});
  kt::grad_ok([](const std::vector<Tensor>& in) { return clone(in[0]); }, {e});
  Tensor y = clone(p);
  CHECK(y.requires_grad());
  CHECK(y.grad_fn() != nullptr);
}

TEST_CASE("to(dtype): values and gradient flows back in the source dtype") {
  Tensor f = f64({1.5, -2.7, 3.0}, {3});
  Tensor i = f.to(kInt64);
  CHECK(i.dtype() == kInt64);
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -2, 3});
  CHECK(f.to(kFloat64).is_same(f));
  kt::expect_values(tensor({1, 0, 2}).to(kBool), {1, 0, 1});
  kt::expect_values(tensor({true, false}).to(kFloat32), {1, 0});

  auto x = kt::leaf({2, 3});
  Tensor y32 = x.to(kFloat32);
  CHECK(y32.dtype() == kFloat32);
  CHECK(y32.requires_grad());
  Tensor w = tensor({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}).reshape({2, 3});
  (y32 * w).sum().backward();
  REQUIRE(x.grad().defined());
  CHECK(x.grad().dtype() == kFloat64);
  kt::expect_values(x.grad(), {1, 2, 3, 4, 5, 6});

  // float32 leaf through float64 math: its gradient is float32.
  Tensor a = tensor({0.5f, 2.0f}).requires_grad_();
  (a.to(kFloat64).pow(2) * 3.0).sum().backward();
  CHECK(a.grad().dtype() == kFloat32);
  kt::expect_values(a.grad(), {3, 12});

  // Conversion to an integer type is not differentiable.
  Tensor xi = x.to(kInt64);
  CHECK_FALSE(xi.requires_grad());

  // Through float32 and back: a larger finite-difference step keeps float32 rounding out of the check.
  autograd::GradcheckOptions o;
  o.eps(1e-2);
  o.atol(1e-4);
  auto nc = kt::noncontig_leaf({3, 2});
  CHECK(autograd::gradcheck([](const std::vector<Tensor>& in) { return in[0].to(kFloat32).to(kFloat64); }, {nc}, o));
  auto s = kt::leaf({});
  CHECK(autograd::gradcheck([](const std::vector<Tensor>& in) { return (in[0].to(kFloat32) * 2.0).to(kFloat64); }, {s},
                            o));
}

TEST_CASE("cat: values / dim -1 / promotion") {
  Tensor a = iota64({2, 2}), b = iota64({2, 3}) + 10.0;
  Tensor c = cat({a, b}, -1);
  kt::expect_shape(c, {2, 5});
  kt::expect_values(c, {0, 1, 10, 11, 12, 2, 3, 13, 14, 15});
  kt::expect_values(cat({a, a.t()}, 0), {0, 1, 2, 3, 0, 2, 1, 3});
  Tensor m = cat({tensor({1, 2}), tensor({0.5f})});
  CHECK(m.dtype() == kFloat32);
  kt::expect_values(m, {1, 2, 0.5});
  CHECK(cat({tensor({1.f}), f64({2}, {1})}).dtype() == kFloat64);
  CHECK(cat({tensor({true}), tensor({3})}).dtype() == kInt64);
  kt::expect_shape(cat({zeros({0, 3}), ones({2, 3})}), {2, 3});
  kt::expect_shape(cat({iota64({3})}), {3});

  CHECK_KILN_ERROR(cat({a, iota64({3, 3})}, 0),
                   "[cat] sizes must match except in dim 0: tensor 1 has shape (3, 3), tensor 0 has shape (2, 2)");
  CHECK_KILN_ERROR(cat({a, a, iota64({2, 2, 1})}, 1),
                   "[cat] tensor 2 has 3 dims but tensor 0 has 2 (shapes (2, 2, 1) and (2, 2))");
  CHECK_KILN_ERROR(cat({}, 0), "[cat] expected a non-empty list of tensors");
  CHECK_KILN_ERROR(cat({scalar_tensor(1.0), scalar_tensor(2.0)}), "[cat] zero-dimensional tensor");
  CHECK_KILN_ERROR(cat({a, b}, 2), "[cat] dim 2 out of range");
}

TEST_CASE("cat gradients: mixed dtypes / non-contiguous / size-0 pieces") {
  auto a = kt::leaf({2, 2}, 1), b = kt::leaf({2, 3}, 2);
  auto nc = kt::noncontig_leaf({2, 1}, 3);
  kt::grad_ok([](const std::vector<Tensor>& in) { return cat({in[0], in[1], in[2]}, -1); }, {a, b, nc});
  kt::grad_ok([](const std::vector<Tensor>& in) { return cat({in[0].t(), in[1].t()}, 0) * 2.0; }, {a, b});
  auto e = kt::leaf({0, 2}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return cat({in[0], in[1]}, 0); }, {e, a});
  // Only some inputs require grad.
  Tensor constant = iota64({2, 2});
  kt::grad_ok([constant](const std::vector<Tensor>& in) { return cat({constant, in[0]}, 1); }, {a});

  // Mixed precision: each gradient comes back in its input's dtype.
  Tensor f = tensor({1.f, 2.f}).requires_grad_();
  Tensor d = tensor(std::vector<double>{3, 4, 5}).requires_grad_();
  Tensor y = cat({f, d});
  CHECK(y.dtype() == kFloat64);
  weighted(y).backward();
  CHECK(f.grad().dtype() == kFloat32);
  CHECK(d.grad().dtype() == kFloat64);
  kt::expect_values(f.grad(), {1, 2});
  kt::expect_values(d.grad(), {3, 4, 5});
}

TEST_CASE("stack") {
  Tensor a = iota64({2, 3}), b = iota64({2, 3}) + 6.0;
  kt::expect_shape(stack({a, b}), {2, 2, 3});
  kt::expect_values(stack({a, b}), iota_vals(12));
  Tensor s1 = stack({a, b}, 1);
  kt::expect_shape(s1, {2, 2, 3});
  kt::expect_values(s1, {0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11});
  Tensor sl = stack({a, b}, -1);
  kt::expect_shape(sl, {2, 3, 2});
  kt::expect_values(sl, {0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11});
  kt::expect_values(stack({scalar_tensor(1.0), scalar_tensor(2.0)}), {1, 2});
  CHECK_KILN_ERROR(stack({a, iota64({3, 2})}),
                   "[stack] all tensors must have the same shape: tensor 1 has (3, 2), tensor 0 has (2, 3)");
  CHECK_KILN_ERROR(stack({}), "[stack] expected a non-empty list");
  CHECK_KILN_ERROR(stack({a, b}, 3), "[stack] dim 3 out of range");

  auto x = kt::leaf({2, 3}, 1), y = kt::noncontig_leaf({2, 3}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return stack({in[0], in[1], in[0]}, 1); }, {x, y});
  auto s = kt::leaf({}, 3);
  kt::grad_ok([](const std::vector<Tensor>& in) { return stack({in[0], in[0] * 2.0}, 0); }, {s});
  auto e = kt::leaf({0, 2}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return stack({in[0], in[0]}, -1); }, {e});
}

TEST_CASE("split by size and by list of sizes") {
  Tensor x = iota64({5, 2});
  auto p = split(x, 2);
  REQUIRE(p.size() == 3);
  kt::expect_values(p[0], {0, 1, 2, 3});
  kt::expect_values(p[2], {8, 9});
  kt::expect_shape(p[2], {1, 2});
  auto q = split(x, 1, 1);
  REQUIRE(q.size() == 2);
  kt::expect_values(q[1], {1, 3, 5, 7, 9});
  CHECK(split(x, 7).size() == 1);
  auto r = split(x, std::vector<std::int64_t>{1, 3, 1});
  REQUIRE(r.size() == 3);
  kt::expect_shape(r[1], {3, 2});
  kt::expect_values(r[1], {2, 3, 4, 5, 6, 7});
  auto z = split(x, std::vector<std::int64_t>{0, 5, 0});
  REQUIRE(z.size() == 3);
  kt::expect_shape(z[0], {0, 2});
  auto neg = split(x, std::vector<std::int64_t>{1, 1}, -1);
  kt::expect_values(neg[0], {0, 2, 4, 6, 8});
  CHECK_KILN_ERROR(split(x, std::vector<std::int64_t>{1, 2}),
                   "[split] split sizes (1, 2) sum to 3 but dim 0 has size 5");
  CHECK_KILN_ERROR(split(x, std::vector<std::int64_t>{6, -1}), "[split] split sizes must be >= 0");
  CHECK_KILN_ERROR(split(x, 0), "[split] split_size must be positive, got 0");
  CHECK_KILN_ERROR(split(x, 2, 2), "[split] dim 2 out of range");

  auto a = kt::leaf({5, 3});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        auto ps = split(in[0], 2);
        return cat({ps[2] * 3.0, ps[0] * ps[1]}, 0);
      },
      {a});
  auto nc = kt::noncontig_leaf({3, 4});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        auto ps = split(in[0], std::vector<std::int64_t>{1, 2, 1}, 1);
        return ps[1] * ps[0] + ps[2];
      },
      {nc});
  // Unused pieces get zero gradient.
  auto b = kt::leaf({4});
  split(b, std::vector<std::int64_t>{1, 3})[1].sum().backward();
  kt::expect_values(b.grad(), {0, 1, 1, 1});
  // The pieces share one node; second order through it, with an empty piece between.
  auto c = kt::leaf({2, 5}, 4);
  auto pc = split(c, std::vector<std::int64_t>{2, 0, 3}, 1);
  CHECK(pc[0].grad_fn() == pc[2].grad_fn());
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        auto ps = split(in[0], std::vector<std::int64_t>{2, 0, 3}, 1);
        Tensor f = (ps[0] * ps[0]).sum() + (ps[2] * ps[2] * ps[2]).sum() + ps[1].sum();
        return autograd::grad({f}, {in[0]}, {}, true, true)[0];
      },
      {c});
}

TEST_CASE("chunk") {
  Tensor x = iota64({5});
  auto c = chunk(x, 3);
  REQUIRE(c.size() == 3);
  kt::expect_values(c[0], {0, 1});
  kt::expect_values(c[1], {2, 3});
  kt::expect_values(c[2], {4});
  auto d = chunk(iota64({6}), 4);  // as torch: chunks of ceil(6/4) = 2 -> 3 chunks
  REQUIRE(d.size() == 3);
  kt::expect_values(d[2], {4, 5});
  auto e = chunk(iota64({2, 6}), 2, -1);
  REQUIRE(e.size() == 2);
  kt::expect_values(e[1], {3, 4, 5, 9, 10, 11});
  CHECK(chunk(iota64({2}), 5).size() == 2);
  CHECK_KILN_ERROR(chunk(x, 0), "[chunk] number of chunks must be positive, got 0");
  CHECK_KILN_ERROR(chunk(x, 2, 1), "[chunk] dim 1 out of range");
  auto a = kt::noncontig_leaf({4, 3});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        auto cs = chunk(in[0], 2, 0);
        return cs[0] - cs[1] * cs[1];
      },
      {a});
}

TEST_CASE("sum_to_shape undoes broadcasting") {
  Tensor g = ones({2, 3, 4});
  kt::expect_values(sum_to_shape(g, {3, 1}), {8, 8, 8});
  kt::expect_values(sum_to_shape(g, {2, 1, 4}), std::vector<double>(8, 3.0));
  kt::expect_values(sum_to_shape(g, {}), {24});
  kt::expect_shape(sum_to_shape(g, {1, 3, 4}), {1, 3, 4});
  CHECK_KILN_ERROR(sum_to_shape(g, {2, 4}), "[sum_to_shape] cannot sum shape (2, 3, 4) to (2, 4)");
}

TEST_CASE("shape ops: double backward (gradients of gradients)") {
  // g(x) = d/dx sum(f(x)^2) = f^T(2 f(x)) runs each op's backward under create_graph;
  // gradcheck of g differentiates that backward again.
  using Fn = std::function<Tensor(const Tensor&)>;
  auto second = [](Fn f) {
    return [f](const std::vector<Tensor>& in) {
      Tensor y = f(in[0]);
      return autograd::grad({(y * y).sum()}, {in[0]}, {}, false, /*create_graph=*/true)[0];
    };
  };
  auto x = kt::leaf({3, 4});
  kt::grad_ok(second([](const Tensor& t) { return t.slice(1, 0, 4, 2); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return t.select(0, 1); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return t.narrow(1, 1, 2).t(); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return t.unsqueeze(0).expand({2, 3, 4}); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return t.reshape({2, 6}).permute({1, 0}); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return cat({t, t.slice(0, 1, 3)}, 0); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return stack({t, t * 2.0}, 1); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return split(t, 3, 1)[1]; }), {x});
  autograd::GradcheckOptions o;  // through float32: a wide step keeps rounding out of the differences
  o.eps(1e-2);
  o.atol(1e-4);
  CHECK(autograd::gradcheck(second([](const Tensor& t) { return t.to(kFloat32).to(kFloat64); }), {x}, o));
}
