// x.index / index_put_ / index_put on the GPU against the CPU: they are compositions of the
// backend's ops (views, index_select, index_add, where, copy), so the GPU path needs no kernel
// of its own, but the index tensors and masks cross devices.
#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::indexing;

namespace {
Tensor ints(const std::vector<std::int64_t>& v, const Shape& shape) { return kiln::tensor(v, shape); }
}  // namespace

TEST_CASE("cuda indexing: index and index_put_ match the CPU, with CPU index tensors and device masks") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kInt64, kFloat32, kFloat64}) {
    CAPTURE(dtype_name(dt));
    kc::Pair a = kc::make_pair(kc::layouts()[1], {4, 5, 6}, dt, 1);
    const Tensor rows = ints({3, 0, -1}, {3}), cols = ints({1, 5, 5}, {3});
    kc::check_op(
        "basic",
        [](auto& v) {
          return v[0].index({Slice(1, None, 2), -1, None, Ellipsis}).contiguous();
        },
        {a}, 0, 0);
    kc::check_op(
        "adjacent",
        [&](auto& v) {
          return v[0].index({Slice(), rows.index({Slice(0, 2)}), cols.index({Slice(0, 2)})});
        },
        {a}, 0, 0);
    kc::check_op(
        "apart",
        [&](auto& v) {
          return v[0].index({rows, Slice(), cols});
        },
        {a}, 0, 0);
    kc::check_op(
        "mask", [](auto& v) { return v[0].index({v[0] > 0}); }, {a}, 0, 0);
    kc::check_op(
        "put",
        [&](auto& v) {
          Tensor y = v[0].clone();
          y.index_put_({rows, Slice(), cols}, full({5}, 3, TensorOptions(v[0].dtype()).device(v[0].device())));
          y.index_put_({y < 0}, 0);
          y.index_put_({Slice(), ints({0, 0}, {2})}, 1, true);
          return y;
        },
        {a}, 0, 0);
  }
  for (DType dt : {kFloat32, kFloat64}) {
    kc::Pair x = kc::make_pair(kc::layouts()[0], {4, 5}, dt, 2), v = kc::make_pair(kc::layouts()[0], {2, 5}, dt, 3);
    kc::check_grads(
        "index grad",
        [](auto& in) {
          return in[0].index({ints({1, 1, 3}, {3}), Slice(1, 4)});
        },
        {x}, kc::rtol_for(dt), kc::atol_for(dt));
    kc::check_grads(
        "index_put grad",
        [](auto& in) {
          return index_put(in[0], {ints({2, 0}, {2})}, in[1], true);
        },
        {x, v}, kc::rtol_for(dt), kc::atol_for(dt));
  }
}
