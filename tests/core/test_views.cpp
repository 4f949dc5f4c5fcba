// Geometry (shape, strides, offset, contiguity) and zero-copy views.
#include "test_util.hpp"

using namespace kiln;

namespace {
std::vector<std::int64_t> ivals(const Tensor& t) { return t.to_vector<std::int64_t>(); }
using IV = std::vector<std::int64_t>;
// x = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
Tensor grid() { return arange(12).reshape({3, 4}); }
}  // namespace

TEST_CASE("geometry: shape strides offset numel dim size() stride()") {
  auto x = zeros({2, 3, 4});
  CHECK(x.shape() == Shape{2, 3, 4});
  CHECK(x.sizes() == Shape{2, 3, 4});
  CHECK(x.strides() == Strides{12, 4, 1});
  CHECK(x.offset() == 0);
  CHECK(x.numel() == 24);
  CHECK(x.dim() == 3);
  CHECK(x.size(0) == 2);
  CHECK(x.size(-1) == 4);
  CHECK(x.stride(-3) == 12);
  CHECK(x.is_contiguous());
  CHECK_KILN_ERROR(x.size(3), "[size] dim 3 out of range for a 3-D tensor (expected -3 to 2)");
  CHECK_KILN_ERROR(x.stride(-4), "[stride] dim -4 out of range for a 3-D tensor");

  auto s = scalar_tensor(1.0);
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.strides().empty());
  CHECK(s.is_contiguous());
  CHECK_KILN_ERROR(s.size(0), "[size] a 0-D tensor has no dimensions (asked for dim 0)");
  CHECK_KILN_ERROR(s.stride(-1), "[stride] a 0-D tensor has no dimensions (asked for dim -1)");

  auto e = zeros({2, 0, 3});
  CHECK(e.numel() == 0);
  CHECK(e.strides() == Strides{3, 3, 1});
  CHECK(e.is_contiguous());  // a fresh tensor is contiguous even with a size-0 dim
  CHECK(arange(6).reshape({2, 3}).t().slice(0, 0, 0).is_contiguous());  // no elements: nothing misplaced
}

TEST_CASE("shape helpers") {
  CHECK(numel_of({}) == 1);
  CHECK(numel_of({2, 0}) == 0);
  CHECK(contiguous_strides({2, 3, 4}) == Strides{12, 4, 1});
  CHECK(contiguous_strides({}).empty());
  CHECK(shape_str({}) == "()");
  CHECK(shape_str({5}) == "(5,)");
  CHECK(shape_str({2, 3}) == "(2, 3)");
  CHECK(normalize_dim(-1, 3, "op") == 2);
  CHECK(normalize_dim(0, 0, "op") == 0);
  CHECK(normalize_dim(-1, 0, "op") == 0);
  CHECK_KILN_ERROR(normalize_dim(1, 0, "myop"), "[myop] dim 1 out of range for a 0-D tensor");
  CHECK(broadcast_shapes({3, 1}, {4}, "op") == Shape{3, 4});
  CHECK(broadcast_shapes({}, {2, 2}, "op") == Shape{2, 2});
  CHECK(broadcast_shapes({2, 1, 5}, {3, 1}, "op") == Shape{2, 3, 5});
  CHECK_KILN_ERROR(broadcast_shapes({2, 3}, {4}, "add"), "[add] shapes (2, 3) and (4,) cannot be broadcast: 3 != 4");
  CHECK(broadcast_strides({3, 1}, {1, 1}, {2, 3, 4}, "op") == Strides{0, 1, 0});
  CHECK(normalize_dims({-1, 0}, 3, "op") == std::vector<std::int64_t>{0, 2});
  CHECK(normalize_dims({}, 3, "op") == std::vector<std::int64_t>{0, 1, 2});
  CHECK_KILN_ERROR(normalize_dims({1, -2}, 3, "sum"), "[sum] dim 1 appears more than once");
}

TEST_CASE("view and reshape share storage when the layout allows") {
  auto x = arange(24);
  auto v = x.view({2, 3, 4});
  CHECK(v.shape() == Shape{2, 3, 4});
  CHECK(v.strides() == Strides{12, 4, 1});
  CHECK(v.storage() == x.storage());
  CHECK(ivals(v.select(0, 1).select(0, 2)) == IV{20, 21, 22, 23});

  auto r = x.reshape({4, -1});
  CHECK(r.shape() == Shape{4, 6});
  CHECK(r.storage() == x.storage());

  CHECK(x.view({-1, 2}).shape() == Shape{12, 2});
  CHECK(x.reshape({2, 3, 4}).reshape({24}).storage() == x.storage());

  // A permuted tensor whose merged dims stay contiguous can still be viewed.
  auto p = x.view({2, 3, 4}).permute({1, 0, 2});  // (3, 2, 4), strides (4, 12, 1)
  auto pv = p.view({3, 2, 2, 2});
  CHECK(pv.storage() == x.storage());
  CHECK(pv.strides() == Strides{4, 12, 2, 1});
  CHECK(ivals(pv.select(0, 1).select(0, 1).flatten()) == IV{16, 17, 18, 19});

  // Views of a slice keep the offset.
  auto sl = x.slice(0, 6, 18);
  auto slv = sl.view({3, 4});
  CHECK(slv.offset() == 6);
  CHECK(ivals(slv.select(0, 2)) == IV{14, 15, 16, 17});

  // 0-D <-> (1,) and size-0 tensors.
  auto s = scalar_tensor(3, kInt64);
  CHECK(s.view({1, 1}).shape() == Shape{1, 1});
  CHECK(s.view({1, 1}).item<std::int64_t>() == 3);
  CHECK(tensor({7}).view({}).dim() == 0);
  CHECK(zeros({0, 3}).view({3, 0}).shape() == Shape{3, 0});
  CHECK(zeros({0, 3}).reshape({-1}).shape() == Shape{0});
}

TEST_CASE("reshape copies when it cannot view") {
  auto x = arange(6).reshape({2, 3});
  auto t = x.t();  // (3, 2), strides (1, 3)
  CHECK(t.strides() == Strides{1, 3});
  CHECK_FALSE(t.is_contiguous());
  auto r = t.reshape({6});
  CHECK(r.storage() != x.storage());
  CHECK(r.is_contiguous());
  CHECK(ivals(r) == IV{0, 3, 1, 4, 2, 5});
  // The copy is independent of the base.
  x.fill_(0);
  CHECK(ivals(r) == IV{0, 3, 1, 4, 2, 5});
  // reshape to the same shape returns the same tensor.
  CHECK(x.reshape({2, 3}).is_same(x));
}

TEST_CASE("reshape of broadcast (stride-0) views") {
  auto e = tensor({1, 2, 3}).expand({2, 3});
  auto r = e.reshape({6});  // cannot be a view: copies
  CHECK(r.storage() != e.storage());
  CHECK(ivals(r) == IV{1, 2, 3, 1, 2, 3});
  auto c = tensor({1, 2, 3}).view({3, 1}).expand({3, 4});
  auto v = c.reshape({3, 2, 2});  // splitting a stride-0 dim stays a view
  CHECK(v.storage() == c.storage());
  CHECK(v.strides() == Strides{1, 0, 0});
  CHECK(ivals(v) == IV{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
  auto m = c.reshape({12});
  CHECK(ivals(m) == IV{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
}

TEST_CASE("view of a non-viewable layout is an error mentioning reshape") {
  auto t = arange(6).reshape({2, 3}).t();
  CHECK_KILN_ERROR(
      t.view({6}),
      "[view] cannot view a tensor of shape (3, 2) and strides (1, 3) as (6,) without copying; use reshape()");
  auto p = arange(24).view({2, 3, 4}).permute({1, 0, 2});
  CHECK_KILN_ERROR(p.view({3, 8}), "use reshape()");
  auto st = arange(10).slice(0, 0, 10, 2).unsqueeze(0).expand({2, 5});
  CHECK_KILN_ERROR(st.view({10}), "use reshape()");
}

TEST_CASE("view / reshape shape errors") {
  auto x = arange(6);
  CHECK_KILN_ERROR(x.view({4, 2}), "[view] shape (4, 2) is invalid for an input of shape (6,) (6 elements)");
  CHECK_KILN_ERROR(x.reshape({-1, 4}), "[reshape] shape (-1, 4) is invalid for an input of shape (6,) (6 elements)");
  CHECK_KILN_ERROR(x.reshape({-1, -1}), "[reshape] only one dimension can be -1, got shape (-1, -1)");
  CHECK_KILN_ERROR(x.view({-2, 3}), "[view] invalid dimension -2 in shape (-2, 3)");
}

TEST_CASE("permute and transpose and t and mT") {
  auto x = arange(24).view({2, 3, 4});
  auto p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Strides{1, 12, 4});
  CHECK(p.storage() == x.storage());
  CHECK_FALSE(p.is_contiguous());
  // p[i][j][k] = x[j][k][i]
  CHECK(p.select(0, 3).select(0, 1).select(0, 2).item<std::int64_t>() == 1 * 12 + 2 * 4 + 3);
  CHECK(ivals(p.select(0, 1).select(0, 0)) == IV{1, 5, 9});
  CHECK(x.permute({-1, -3, -2}).shape() == Shape{4, 2, 3});

  auto tr = x.transpose(0, 2);
  CHECK(tr.shape() == Shape{4, 3, 2});
  CHECK(tr.strides() == Strides{1, 4, 12});
  auto mt = x.mT();
  CHECK(mt.shape() == Shape{2, 4, 3});
  CHECK(mt.strides() == Strides{12, 1, 4});
  CHECK(ivals(mt.select(0, 1).select(0, 0)) == IV{12, 16, 20});

  auto m = arange(6).view({2, 3});
  CHECK(ivals(m.t()) == IV{0, 3, 1, 4, 2, 5});
  CHECK(m.t().t().is_contiguous());
  CHECK(arange(3).t().shape() == Shape{3});  // 1-D: unchanged
  CHECK_KILN_ERROR(x.t(), "[t] expects a tensor with <= 2 dims, got shape (2, 3, 4)");
  CHECK_KILN_ERROR(x.permute({0, 1}), "[permute] got 2 dims (0, 1) for a 3-D tensor of shape (2, 3, 4)");
  CHECK_KILN_ERROR(x.permute({0, 1, 1}), "[permute] dim 1 repeated in (0, 1, 1)");
  CHECK_KILN_ERROR(x.transpose(0, 3), "[transpose] dim 3 out of range for a 3-D tensor");
}

TEST_CASE("slice: Python semantics with step and negative bounds") {
  auto x = arange(10);
  auto a = x.slice(0, 2, 8, 3);  // x[2:8:3]
  CHECK(ivals(a) == IV{2, 5});
  CHECK(a.shape() == Shape{2});
  CHECK(a.strides() == Strides{3});
  CHECK(a.offset() == 2);
  CHECK(a.storage() == x.storage());
  CHECK(ivals(x.slice(0, -3, 10)) == IV{7, 8, 9});    // x[-3:]
  CHECK(ivals(x.slice(0, 1, -6)) == IV{1, 2, 3});     // x[1:-6]
  CHECK(ivals(x.slice(0, -4, -1, 2)) == IV{6, 8});    // x[-4:-1:2]
  CHECK(ivals(x.slice(0, 0, 10, 4)) == IV{0, 4, 8});  // x[::4]
  CHECK(ivals(x.slice(0, -100, 3)) == IV{0, 1, 2});   // clamped
  CHECK(ivals(x.slice(0, 8, 100)) == IV{8, 9});       // clamped
  CHECK(x.slice(0, 6, 3).numel() == 0);               // empty, not negative
  CHECK(x.slice(0, 6, 3).shape() == Shape{0});
  CHECK(x.slice(0, 20, 30).numel() == 0);

  auto g = grid();
  auto c = g.slice(1, 1, 4, 2);  // columns 1 and 3
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.strides() == Strides{4, 2});
  CHECK(c.offset() == 1);
  CHECK(ivals(c) == IV{1, 3, 5, 7, 9, 11});
  auto cc = g.slice(-1, 1, 4, 2).slice(0, -2, 3);  // rows 1..2 of that
  CHECK(ivals(cc) == IV{5, 7, 9, 11});
  CHECK(cc.offset() == 5);

  CHECK_KILN_ERROR(x.slice(0, 0, 5, 0), "[slice] step must be positive, got 0");
  CHECK_KILN_ERROR(x.slice(0, 0, 5, -1), "[slice] step must be positive, got -1");
  CHECK_KILN_ERROR(x.slice(1, 0, 5), "[slice] dim 1 out of range for a 1-D tensor");
  CHECK_KILN_ERROR(scalar_tensor(1).slice(0, 0, 1), "[slice] cannot slice a 0-D tensor");
}

TEST_CASE("narrow (view geometry)") {
  auto g = grid();
  auto n = g.narrow(1, 1, 2);
  CHECK(n.shape() == Shape{3, 2});
  CHECK(n.storage() == g.storage());
  CHECK(ivals(n) == IV{1, 2, 5, 6, 9, 10});
  CHECK(ivals(g.narrow(0, -1, 1)) == IV{8, 9, 10, 11});
  CHECK(g.narrow(0, 3, 0).shape() == Shape{0, 4});
  CHECK_KILN_ERROR(g.narrow(0, 2, 5), "[narrow] start 2 and length 5 are out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(g.narrow(1, -5, 1), "[narrow] start -5 and length 1 are out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(g.narrow(1, 0, -1), "[narrow] start 0 and length -1 are out of range for dim 1 of size 4");
}

TEST_CASE("select (view geometry)") {
  auto g = grid();
  auto r = g.select(0, 1);
  CHECK(r.shape() == Shape{4});
  CHECK(r.offset() == 4);
  CHECK(r.storage() == g.storage());
  CHECK(ivals(r) == IV{4, 5, 6, 7});
  auto c = g.select(1, -1);
  CHECK(c.shape() == Shape{3});
  CHECK(c.strides() == Strides{4});
  CHECK(ivals(c) == IV{3, 7, 11});
  CHECK(ivals(g.select(-2, -3)) == IV{0, 1, 2, 3});
  auto e = g.select(0, 2).select(0, 1);
  CHECK(e.dim() == 0);
  CHECK(e.item<std::int64_t>() == 9);
  CHECK_KILN_ERROR(arange(3).select(0, 5), "[select] index 5 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(arange(3).select(0, -4), "[select] index -4 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(g.select(2, 0), "[select] dim 2 out of range for a 2-D tensor");
  CHECK_KILN_ERROR(scalar_tensor(1).select(0, 0), "[select] cannot select from a 0-D tensor");
}

TEST_CASE("expand / broadcast_to use stride 0") {
  auto col = tensor({1, 2, 3}).view({3, 1});
  auto e = col.expand({2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Strides{0, 1, 0});
  CHECK(e.storage() == col.storage());
  CHECK_FALSE(e.is_contiguous());
  CHECK(ivals(e.select(0, 1).select(0, 2)) == IV{3, 3, 3, 3});
  CHECK(col.expand({-1, 5}).shape() == Shape{3, 5});
  auto b = tensor({5, 6}).broadcast_to({3, 2});
  CHECK(b.strides() == Strides{0, 1});
  CHECK(ivals(b) == IV{5, 6, 5, 6, 5, 6});
  auto s = scalar_tensor(4, kInt64).expand({2, 2});
  CHECK(s.strides() == Strides{0, 0});
  CHECK(ivals(s) == IV{4, 4, 4, 4});
  CHECK(col.expand({3, 1}).is_same(col));
  CHECK_KILN_ERROR(tensor({1, 2, 3}).expand({4}),
                   "[expand] cannot expand shape (3,) to (4,): dim 0 has size 3, expected 1 or 4");
  CHECK_KILN_ERROR(tensor({1, 2, 3}).expand({3, 3}).expand({3}),
                   "[expand] cannot expand shape (3, 3) to fewer dims (3,)");
  CHECK_KILN_ERROR(tensor({1, 2}).expand({-1, 2}), "[expand] -1 is not allowed for the new leading dim 0 in (-1, 2)");
}

TEST_CASE("squeeze / unsqueeze (view geometry)") {
  auto x = zeros({1, 3, 1, 2});
  auto s = x.squeeze();
  CHECK(s.shape() == Shape{3, 2});
  CHECK(s.storage() == x.storage());
  CHECK(x.squeeze(2).shape() == Shape{1, 3, 2});
  CHECK(x.squeeze(-4).shape() == Shape{3, 1, 2});
  CHECK(x.squeeze(1).shape() == Shape{1, 3, 1, 2});  // size 3: unchanged
  CHECK(zeros({1, 1}).squeeze().dim() == 0);
  CHECK_KILN_ERROR(x.squeeze(4), "[squeeze] dim 4 out of range for a 4-D tensor");

  auto v = arange(6).view({2, 3});
  auto u0 = v.unsqueeze(0);
  CHECK(u0.shape() == Shape{1, 2, 3});
  CHECK(u0.is_contiguous());
  auto u1 = v.unsqueeze(1);
  CHECK(u1.shape() == Shape{2, 1, 3});
  CHECK(u1.is_contiguous());
  auto u2 = v.unsqueeze(-1);
  CHECK(u2.shape() == Shape{2, 3, 1});
  CHECK(u2.is_contiguous());
  CHECK(u2.storage() == v.storage());
  CHECK(ivals(u2.squeeze(-1)) == ivals(v));
  // unsqueeze of a transposed view keeps its values.
  auto tu = v.t().unsqueeze(1);
  CHECK(tu.shape() == Shape{3, 1, 2});
  CHECK(ivals(tu) == IV{0, 3, 1, 4, 2, 5});
  CHECK(scalar_tensor(2).unsqueeze(0).shape() == Shape{1});
  CHECK_KILN_ERROR(v.unsqueeze(3), "[unsqueeze] dim 3 out of range for a 3-D tensor");
}

TEST_CASE("flatten (view geometry)") {
  auto x = arange(24).view({2, 3, 4});
  CHECK(x.flatten().shape() == Shape{24});
  CHECK(x.flatten().storage() == x.storage());
  CHECK(x.flatten(1).shape() == Shape{2, 12});
  CHECK(x.flatten(0, 1).shape() == Shape{6, 4});
  CHECK(x.flatten(-2, -1).shape() == Shape{2, 12});
  CHECK(x.flatten(1, 1).shape() == Shape{2, 3, 4});
  CHECK(scalar_tensor(1).flatten().shape() == Shape{1});
  auto tf = x.transpose(1, 2).flatten(1);  // needs a copy
  CHECK(tf.shape() == Shape{2, 12});
  CHECK(ivals(tf.select(0, 0)) == IV{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK_KILN_ERROR(x.flatten(2, 1), "[flatten] start_dim 2 must not come after end_dim 1");
}

TEST_CASE("contiguous()") {
  auto x = arange(6).view({2, 3});
  CHECK(x.contiguous().is_same(x));
  auto t = x.t();
  auto c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.strides() == Strides{2, 1});
  CHECK(c.storage() != x.storage());
  CHECK(ivals(c) == IV{0, 3, 1, 4, 2, 5});
  // Size-1 dims do not affect contiguity.
  auto one = zeros({3, 1, 4}).select(1, 0).unsqueeze(1);
  CHECK(one.is_contiguous());
  auto odd = Tensor::make_view(zeros({4}), {2, 1}, {1, 77}, 0);
  CHECK(odd.is_contiguous());
  // A slice with step is not contiguous; a leading-row slice is.
  CHECK_FALSE(arange(8).slice(0, 0, 8, 2).is_contiguous());
  CHECK(grid().slice(0, 1, 3).is_contiguous());
  CHECK_FALSE(grid().slice(1, 1, 3).is_contiguous());
}

TEST_CASE("writes through views are visible in the base") {
  SUBCASE("fill_ on a stepped slice") {
    auto x = zeros({6}, kInt64);
    x.slice(0, 1, 6, 2).fill_(7);
    CHECK(ivals(x) == IV{0, 7, 0, 7, 0, 7});
  }
  SUBCASE("copy_ into a selected column") {
    auto g = grid();
    auto col = g.select(1, 2);
    CHECK(col.storage() == g.storage());
    col.copy_(tensor({-1, -2, -3}));
    CHECK(ivals(g) == IV{0, 1, -1, 3, 4, 5, -2, 7, 8, 9, -3, 11});
  }
  SUBCASE("add_ on a transposed view") {
    auto g = grid().to(kFloat32);
    auto t = g.t();                            // (4, 3)
    t.add_(tensor({100.0f, 200.0f, 300.0f}));  // t[i][j] += 100 * (j + 1), i.e. g[j][i] += 100 * (j + 1)
    kt::expect_values(g, {100, 101, 102, 103, 204, 205, 206, 207, 308, 309, 310, 311});
  }
  SUBCASE("mul_ / div_ on a narrowed block") {
    auto g = grid().to(kFloat64);
    g.narrow(0, 1, 2).narrow(1, 1, 2).mul_(10.0);
    g.select(0, 0).div_(2);
    kt::expect_values(g, {0, 0.5, 1, 1.5, 4, 50, 60, 7, 8, 90, 100, 11});
  }
  SUBCASE("writes through reshape-views and permuted views") {
    auto x = zeros({2, 3, 4}, kInt64);
    x.permute({2, 0, 1}).select(0, 3).fill_(1);  // x[:, :, 3] = 1
    auto flat = x.view({24});
    CHECK(flat.storage() == x.storage());
    IV expect(24, 0);
    for (int i = 3; i < 24; i += 4) expect[i] = 1;
    CHECK(ivals(flat) == expect);
    flat.slice(0, 0, 4).fill_(5);
    CHECK(ivals(x.select(0, 0).select(0, 0)) == IV{5, 5, 5, 5});
  }
  SUBCASE("a view sees later writes to the base") {
    auto x = zeros({4});
    auto v = x.slice(0, 2, 4);
    x.copy_(tensor({1.0f, 2.0f, 3.0f, 4.0f}));
    kt::expect_values(v, {3, 4});
  }
}

TEST_CASE("make_view and from_blob") {
  std::vector<float> buf = {1, 2, 3, 4, 5, 6};
  auto b = Tensor::from_blob(buf.data(), {2, 3}, kFloat32);
  CHECK(b.shape() == Shape{2, 3});
  CHECK(b.raw_data() == buf.data());
  kt::expect_values(b.t(), {1, 4, 2, 5, 3, 6});
  b.select(0, 1).fill_(0);
  CHECK(buf == std::vector<float>{1, 2, 3, 0, 0, 0});
  auto v = Tensor::make_view(b, {2}, {2}, 1);  // elements 1 and 3
  kt::expect_values(v, {2, 0});
  CHECK(v.storage() == b.storage());
}
