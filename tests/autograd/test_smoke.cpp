#include "test_util.hpp"

using namespace kiln;

TEST_CASE("matmul error names the op and the shapes") {
  CHECK_KILN_ERROR(matmul(randn({2, 3}), randn({4, 5})),
                   "[matmul] shapes (2, 3) and (4, 5) cannot be multiplied: 3 != 4");
}

TEST_CASE("softmax then log gradcheck") {
  auto x = kt::leaf({3, 4});
  kt::grad_ok([](const std::vector<Tensor>& in) { return log(softmax(in[0], 1)); }, {x});
}
