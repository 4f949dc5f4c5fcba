// Index ops: index_select, index_add, gather, scatter_add, embedding — values, gradients, errors.
#include "test_util.hpp"

using namespace kiln;

namespace {

Tensor iota64(const Shape& s) { return arange(0, numel_of(s), 1, kFloat64).reshape(s); }
Tensor idx(const std::vector<std::int64_t>& v, const Shape& s) { return tensor(v, s); }
Tensor idx(const std::vector<std::int64_t>& v) { return tensor(v, Shape{static_cast<std::int64_t>(v.size())}); }

}  // namespace

TEST_CASE("index_select values") {
  Tensor x = iota64({3, 4});
  kt::expect_values(index_select(x, 0, idx({2, 0, 2})), {8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  Tensor c = index_select(x, -1, idx({3, 1}));
  kt::expect_shape(c, {3, 2});
  kt::expect_values(c, {3, 1, 7, 5, 11, 9});
  kt::expect_values(index_select(x.t(), 0, idx({1})), {1, 5, 9});
  kt::expect_values(index_select(x, 1, idx({1, 2}).slice(0, 0, 2, 1)), {1, 2, 5, 6, 9, 10});
  Tensor s = index_select(x, 0, scalar_tensor(1, kInt64));
  kt::expect_shape(s, {1, 4});
  kt::expect_shape(index_select(x, 0, idx({})), {0, 4});
  Tensor sc = index_select(scalar_tensor(5.0, kFloat64), 0, idx({0}));
  kt::expect_shape(sc, {});
  CHECK(sc.item<double>() == 5);
  CHECK(index_select(arange(4), 0, idx({3, 3})).to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 3});
}

TEST_CASE("index_select errors") {
  Tensor x = iota64({3, 4});
  CHECK_KILN_ERROR(index_select(x, 0, tensor({0.f, 1.f})), "[index_select] index must be an int64 tensor, got float32");
  CHECK_KILN_ERROR(index_select(x, 0, tensor({true})), "[index_select] index must be an int64 tensor, got bool");
  CHECK_KILN_ERROR(index_select(x, 0, idx({0, 3})), "[index_select] index 3 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(index_select(x, 1, idx({-1})), "[index_select] index -1 is out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(index_select(x, 0, idx({0, 1}, {1, 2})),
                   "[index_select] index must be 0-D or 1-D, got shape (1, 2)");
  CHECK_KILN_ERROR(index_select(x, 2, idx({0})), "[index_select] dim 2 out of range");
  // A 0-D input has one position: the index must name it exactly once.
  CHECK_KILN_ERROR(index_select(scalar_tensor(1.0), 0, idx({})),
                   "[index_select] index for a 0-D input must hold exactly one value, got 0");
  CHECK_KILN_ERROR(index_select(scalar_tensor(1.0), 0, idx({0, 0})),
                   "[index_select] index for a 0-D input must hold exactly one value, got 2");
  CHECK_KILN_ERROR(index_select(scalar_tensor(1.0), 0, idx({1})),
                   "[index_select] index 1 is out of range for dim 0 of size 1");
}

TEST_CASE("index_select gradients (duplicates accumulate)") {
  auto x = kt::leaf({4, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0], 0, idx({3, 0, 3, 1})); }, {x});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0], 1, idx({2, 2})); }, {x});
  auto nc = kt::noncontig_leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0].t(), 1, idx({0, 2, 0})); }, {nc});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0], 0, idx({})); }, {nc});
  auto e = kt::leaf({0, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0], 1, idx({2, 0})); }, {e});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_select(in[0], 0, idx({0})); }, {s});
  auto v = kt::leaf({3});
  (index_select(v, 0, idx({2, 2, 0, 2})) * tensor(std::vector<double>{1, 2, 3, 4})).sum().backward();
  kt::expect_values(v.grad(), {3, 0, 7});
}

TEST_CASE("index_add values / gradients / errors") {
  Tensor x = zeros({3, 2}, kFloat64);
  Tensor src = iota64({3, 2}) + 1.0;
  Tensor y = index_add(x, 0, idx({0, 2, 0}), src);
  kt::expect_values(y, {1 + 5, 2 + 6, 0, 0, 3, 4});
  kt::expect_values(x, {0, 0, 0, 0, 0, 0});  // out of place
  kt::expect_values(index_add(ones({2, 3}, kFloat64), 1, idx({1, 1}), ones({2, 2}, kFloat64)), {1, 3, 1, 1, 3, 1});
  kt::expect_values(index_add(ones({2, 2}, kFloat64), 0, idx({}), zeros({0, 2}, kFloat64)), {1, 1, 1, 1});

  CHECK_KILN_ERROR(index_add(x, 0, idx({0, 1}), src),
                   "[index_add] source shape (3, 2) must be (2, 2) (input shape (3, 2) with dim 0 = index length 2)");
  CHECK_KILN_ERROR(index_add(x, 0, idx({0, 1, 3}), src), "[index_add] index 3 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(index_add(x, 0, idx({0, -2, 1}), src), "[index_add] index -2 is out of range for dim 0 of size 3");
  CHECK_KILN_ERROR(index_add(x, 0, tensor({0.0, 1.0, 2.0}), src),
                   "[index_add] index must be an int64 tensor, got float32");
  CHECK_KILN_ERROR(index_add(scalar_tensor(1.0), 0, idx({0}), scalar_tensor(1.0)),
                   "[index_add] input must have at least one dim");

  auto a = kt::leaf({4, 3}, 1), b = kt::leaf({4, 2}, 2);
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_add(in[0], 1, idx({2, 2}), in[1]); }, {a, b});
  auto bn = kt::noncontig_leaf({3, 3}, 3);
  auto an = kt::noncontig_leaf({4, 3}, 8);
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_add(in[0], 0, idx({3, 0, 3}), in[1]); }, {an, bn});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_add(in[0].t(), 1, idx({0, 0, 2}), in[1]); }, {an, bn});
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_add(in[0], 0, idx({3, 0, 3}), in[1]); }, {a, bn});
  auto e = kt::leaf({0, 3}, 4);
  kt::grad_ok([](const std::vector<Tensor>& in) { return index_add(in[0], 0, idx({}), in[1]); }, {a, e});
  // Only the source requires grad.
  Tensor base = iota64({4, 3});
  kt::grad_ok([base](const std::vector<Tensor>& in) { return index_add(base, 0, idx({1, 1, 1}), in[0]); }, {bn});
}

TEST_CASE("index_add / scatter_add: gradient comes back in the source's dtype") {
  Tensor x = zeros({3}, kFloat64).requires_grad_();
  Tensor src = tensor({1.f, 2.f}).requires_grad_();
  Tensor y = index_add(x, 0, idx({2, 0}), src);
  CHECK(y.dtype() == kFloat64);
  (y * tensor(std::vector<double>{1, 2, 3})).sum().backward();
  REQUIRE(src.grad().defined());
  CHECK(src.grad().dtype() == kFloat32);
  kt::expect_values(src.grad(), {3, 1});
  CHECK(x.grad().dtype() == kFloat64);

  Tensor s2 = tensor({1.f, 2.f}).requires_grad_();
  Tensor z = scatter_add(zeros({3}, kFloat64), 0, idx({1, 1}), s2);
  kt::expect_values(z, {0, 3, 0});
  (z * tensor(std::vector<double>{1, 2, 3})).sum().backward();
  REQUIRE(s2.grad().defined());
  CHECK(s2.grad().dtype() == kFloat32);
  kt::expect_values(s2.grad(), {2, 2});
}

TEST_CASE("gather values") {
  Tensor x = iota64({3, 3});
  Tensor g = gather(x, 1, idx({0, 2, 1, 1, 2, 0}, {3, 2}));
  kt::expect_values(g, {0, 2, 4, 4, 8, 6});
  kt::expect_values(gather(x, 0, idx({2, 0, 1}, {1, 3})), {6, 1, 5});
  // index may be smaller than x along the other dims
  kt::expect_values(gather(x, 1, idx({2, 2}, {2, 1})), {2, 5});
  kt::expect_values(gather(x.t(), 1, idx({0, 1, 2}, {3, 1})), {0, 4, 8});
  kt::expect_values(gather(x, -1, idx({0, 1, 2, 2, 1, 0}, {3, 2}).slice(1, 1, 2)), {1, 5, 6});
  kt::expect_shape(gather(x, 1, idx({}, {3, 0})), {3, 0});
  kt::expect_shape(gather(x, 0, idx({}, {0, 3})), {0, 3});
  Tensor s = gather(scalar_tensor(4.0, kFloat64), 0, scalar_tensor(0, kInt64));
  kt::expect_shape(s, {});
  CHECK(s.item<double>() == 4);
  CHECK(gather(arange(6).reshape({2, 3}), 1, idx({2, 0}, {2, 1})).to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{2, 3});
}

TEST_CASE("gather errors") {
  Tensor x = iota64({3, 3});
  CHECK_KILN_ERROR(gather(x, 1, idx({0, 7}, {1, 2})), "[gather] index 7 is out of range for dim 1 of size 3");
  CHECK_KILN_ERROR(gather(x, 1, idx({-1, 0}, {1, 2})), "[gather] index -1 is out of range for dim 1 of size 3");
  CHECK_KILN_ERROR(gather(x, 1, tensor({0.f, 1.f}).reshape({1, 2})),
                   "[gather] index must be an int64 tensor, got float32");
  CHECK_KILN_ERROR(gather(x, 1, idx({0, 1})), "[gather] index has 1 dims but input has 2 (shapes (2,) and (3, 3))");
  CHECK_KILN_ERROR(gather(x, 1, idx({0, 0, 0, 0}, {4, 1})),
                   "[gather] index shape (4, 1) is larger than input shape (3, 3) at dim 0");
  CHECK_KILN_ERROR(gather(x, 2, idx({0}, {1, 1})), "[gather] dim 2 out of range");
}

TEST_CASE("gather gradients (duplicate indices accumulate)") {
  auto x = kt::leaf({3, 4});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return gather(in[0], 1, idx({0, 0, 3, 1, 1, 1, 2, 3, 2}, {3, 3}));
      },
      {x});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return gather(in[0], 0, idx({2, 2, 2, 2, 0, 1, 0, 1}, {2, 4}));
      },
      {x});
  auto nc = kt::noncontig_leaf({4, 3});
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return gather(in[0].t(), 1, idx({3, 0, 1, 2, 2, 2}, {3, 2}));
      },
      {nc});
  auto e = kt::leaf({2, 0});
  kt::grad_ok([](const std::vector<Tensor>& in) { return gather(in[0], 0, idx({}, {0, 0})); }, {e});
  kt::grad_ok([](const std::vector<Tensor>& in) { return gather(in[0], 1, idx({}, {2, 0})); }, {x});
  auto s = kt::leaf({});
  kt::grad_ok([](const std::vector<Tensor>& in) { return gather(in[0], 0, scalar_tensor(0, kInt64)); }, {s});
  auto v = kt::leaf({3});
  gather(v, 0, idx({1, 1, 1, 2})).sum().backward();
  kt::expect_values(v.grad(), {0, 3, 1});
}

TEST_CASE("scatter_add values / gradients / errors") {
  Tensor x = zeros({2, 4}, kFloat64);
  Tensor src = iota64({2, 3}) + 1.0;
  Tensor y = scatter_add(x, 1, idx({0, 1, 0, 3, 3, 3}, {2, 3}), src);
  kt::expect_values(y, {1 + 3, 2, 0, 0, 0, 0, 0, 4 + 5 + 6});
  kt::expect_values(x, std::vector<double>(8, 0.0));
  kt::expect_values(scatter_add(ones({3, 2}, kFloat64), 0, idx({2, 2}, {1, 2}), ones({1, 2}, kFloat64)),
                    {1, 1, 1, 1, 2, 2});
  // Many duplicates into one slot.
  Tensor many = scatter_add(zeros({1}, kFloat64), 0, zeros({1000}, kInt64), ones({1000}, kFloat64));
  kt::expect_values(many, {1000});
  CHECK_KILN_ERROR(scatter_add(x, 1, idx({0, 1}, {1, 2}), src),
                   "[scatter_add] source shape (2, 3) must equal index shape (1, 2)");
  CHECK_KILN_ERROR(scatter_add(x, 1, idx({0, 4}, {1, 2}), ones({1, 2}, kFloat64)),
                   "[scatter_add] index 4 is out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(scatter_add(x, 1, idx({-3, 0}, {1, 2}), ones({1, 2}, kFloat64)),
                   "[scatter_add] index -3 is out of range for dim 1 of size 4");
  CHECK_KILN_ERROR(scatter_add(x, 1, idx({0, 1}), ones({2}, kFloat64)),
                   "[scatter_add] index has 1 dims but input has 2");
  CHECK_KILN_ERROR(scatter_add(x, 0, idx({0, 0, 0, 0, 0}, {1, 5}), ones({1, 5}, kFloat64)),
                   "[scatter_add] index shape (1, 5) is larger than input shape (2, 4) at dim 1");
  CHECK_KILN_ERROR(scatter_add(x, 0, tensor({true, false}).reshape({1, 2}), ones({1, 2}, kFloat64)),
                   "[scatter_add] index must be an int64 tensor, got bool");
  // Along the scatter dim the index may be longer than the input.
  kt::expect_values(scatter_add(zeros({2, 1}, kFloat64), 0, idx({1, 1, 1}, {3, 1}), ones({3, 1}, kFloat64)), {0, 3});
}

TEST_CASE("scatter_add gradients") {
  auto x = kt::leaf({3, 4}, 1), s = kt::leaf({3, 2}, 2);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return scatter_add(in[0], 1, idx({0, 0, 3, 1, 2, 2}, {3, 2}), in[1]);
      },
      {x, s});
  auto snc = kt::noncontig_leaf({2, 4}, 3);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return scatter_add(in[0], 0, idx({2, 2, 2, 2, 0, 1, 0, 1}, {2, 4}), in[1]);
      },
      {x, snc});
  auto xnc = kt::noncontig_leaf({4, 3}, 4);
  kt::grad_ok(
      [](const std::vector<Tensor>& in) {
        return scatter_add(in[0].t(), 1, idx({3, 3, 0, 1, 2, 2}, {3, 2}), in[1]);
      },
      {xnc, s});
  auto e = kt::leaf({3, 0}, 5);
  kt::grad_ok([](const std::vector<Tensor>& in) { return scatter_add(in[0], 1, idx({}, {3, 0}), in[1]); }, {x, e});
  auto a0 = kt::leaf({}, 6), b0 = kt::leaf({}, 7);
  kt::grad_ok([](const std::vector<Tensor>& in) { return scatter_add(in[0], 0, scalar_tensor(0, kInt64), in[1]); },
              {a0, b0});
}

TEST_CASE("embedding: any index shape") {
  Tensor w = iota64({5, 3});
  Tensor e2 = embedding(idx({4, 0, 1, 4}, {2, 2}), w);
  kt::expect_shape(e2, {2, 2, 3});
  kt::expect_values(e2, {12, 13, 14, 0, 1, 2, 3, 4, 5, 12, 13, 14});
  Tensor e0 = embedding(scalar_tensor(2, kInt64), w);
  kt::expect_shape(e0, {3});
  kt::expect_values(e0, {6, 7, 8});
  kt::expect_shape(embedding(idx({1, 2, 3}), w), {3, 3});
  kt::expect_shape(embedding(idx({}, {2, 0}), w), {2, 0, 3});
  kt::expect_shape(embedding(idx({0, 1, 2, 3, 4, 0, 1, 2}, {2, 2, 2}), w), {2, 2, 2, 3});
  kt::expect_values(embedding(idx({0, 1, 2, 3}, {2, 2}).t(), w), {0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11});

  CHECK_KILN_ERROR(embedding(idx({5}), w), "[embedding] index 5 is out of range for dim 0 of size 5");
  CHECK_KILN_ERROR(embedding(idx({-1}), w), "[embedding] index -1 is out of range for dim 0 of size 5");
  CHECK_KILN_ERROR(embedding(tensor({1.f}), w), "[embedding] index must be an int64 tensor, got float32");
  CHECK_KILN_ERROR(embedding(idx({1}), iota64({5})),
                   "[embedding] weight must be 2-D (num_embeddings, dim), got shape (5,)");

  auto lw = kt::leaf({5, 3});
  kt::grad_ok([](const std::vector<Tensor>& in) { return embedding(idx({4, 0, 4, 4}, {2, 2}), in[0]); }, {lw});
  kt::grad_ok([](const std::vector<Tensor>& in) { return embedding(scalar_tensor(3, kInt64), in[0]); }, {lw});
  kt::grad_ok([](const std::vector<Tensor>& in) { return embedding(idx({}, {0}), in[0]); }, {lw});
  auto nw = kt::noncontig_leaf({4, 2});
  kt::grad_ok([](const std::vector<Tensor>& in) { return embedding(idx({1, 3, 1}), in[0]); }, {nw});
  // Repeated tokens: their rows' gradients add up.
  (embedding(idx({1, 1, 1, 3}, {2, 2}), lw).sum()).backward();
  kt::expect_values(lw.grad(), {0, 0, 0, 3, 3, 3, 0, 0, 0, 1, 1, 1, 0, 0, 0});
}

TEST_CASE("index ops: double backward (gradients of gradients)") {
  using Fn = std::function<Tensor(const Tensor&)>;
  auto second = [](Fn f) {
    return [f](const std::vector<Tensor>& in) {
      Tensor y = f(in[0]);
      return autograd::grad({(y * y * y).sum()}, {in[0]}, {}, false, /*create_graph=*/true)[0];
    };
  };
  auto x = kt::leaf({4, 3});
  kt::grad_ok(second([](const Tensor& t) { return index_select(t, 0, idx({3, 0, 3})); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return gather(t, 1, idx({0, 0, 2, 1, 1, 1, 2, 0}, {4, 2})); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return embedding(idx({1, 1, 3, 0}, {2, 2}), t); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return index_add(t, 1, idx({2, 2}), t.slice(1, 0, 2)); }), {x});
  kt::grad_ok(second([](const Tensor& t) { return scatter_add(t, 0, idx({3, 3, 0}, {1, 3}), t.slice(0, 1, 2)); }), {x});
}
