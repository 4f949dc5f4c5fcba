// Sizes that overflow 64 bits, or that no memory can hold, are kiln::Errors naming the op and
// the shape: never a segfault, a heap overflow, a tensor over too few bytes, std::bad_alloc or
// std::length_error (issue 11, item 1).
#include <limits>

#include "test_util.hpp"

using namespace kiln;

namespace {
constexpr std::int64_t k32 = std::int64_t{1} << 32;
constexpr std::int64_t k62 = std::int64_t{1} << 62;
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
}  // namespace

TEST_CASE("stress size overflow: factories check the element and byte counts") {
  // 2^62 float32 elements are 2^64 bytes (the count fits, the bytes do not).
  CHECK_KILN_ERROR(zeros({k62}), "[zeros] shape (4611686018427387904,) has too many elements");
  CHECK_KILN_ERROR(zeros({k62 + 16}), "[zeros] shape (4611686018427387920,)");
  // 2^64 elements wrap to 0 in unchecked arithmetic: the tensor got 0 bytes.
  CHECK_KILN_ERROR(zeros({k32, k32}), "[zeros] shape (4294967296, 4294967296) has too many elements");
  CHECK_KILN_ERROR(ones({k32, k32, 2}, kInt64), "[ones] shape (4294967296, 4294967296, 2)");
  CHECK_KILN_ERROR(full({3, kMax}, 1.0), "[full] shape (3, 9223372036854775807)");
  CHECK_KILN_ERROR(empty({k32, k32}), "[empty]");
  CHECK_KILN_ERROR(rand({k32, k32}), "[rand]");
  CHECK_KILN_ERROR(randint(0, 5, {k32, k32}), "[randint]");
  CHECK_KILN_ERROR(Tensor::empty({kMax, 2}, kFloat32, Device::cpu()), "[empty] shape (9223372036854775807, 2)");
  CHECK_KILN_ERROR(eye(k32, k32), "[eye] shape (4294967296, 4294967296)");
  // A 0-size dim gives 0 elements, but the strides of the other dims must still fit.
  CHECK_KILN_ERROR(zeros({0, k32, k32}), "[zeros] shape (0, 4294967296, 4294967296)");
  CHECK(zeros({0, k32}).numel() == 0);
  CHECK(zeros({0, k32}).stride(0) == k32);
}

TEST_CASE("stress size overflow: a valid size that no memory holds is a kiln::Error") {
  // 2^61 bytes: a valid size, far beyond any address space the allocator can obtain.
  // The factory that asked is named, not the allocator.
  CHECK_KILN_ERROR(zeros({std::int64_t{1} << 59}, kFloat32), "[zeros] cannot allocate 2305843009213693952 bytes");
  CHECK_KILN_ERROR(arange(0, 1e18), "[arange] cannot allocate");
  CHECK_KILN_ERROR(arange(std::int64_t{0}, std::int64_t{1} << 58),
                   "[arange] cannot allocate 2305843009213693952 bytes");
  CHECK_KILN_ERROR(linspace(0, 1, std::int64_t{1} << 58), "[linspace] cannot allocate 1152921504606846976 bytes");
  CHECK_KILN_ERROR(empty({std::int64_t{1} << 59}), "[empty] cannot allocate 2305843009213693952 bytes");
  CHECK_KILN_ERROR(arange(std::int64_t{0}, kMax), "[arange] shape (9223372036854775807,) has too many elements");
  CHECK_KILN_ERROR(linspace(0, 1, kMax), "[linspace] shape (9223372036854775807,) has too many elements");
  // Counts beyond int64.
  CHECK_KILN_ERROR(arange(-1e19, 1e19, 1.0), "[arange] start -1e+19, end 1e+19 and step 1 give");
  CHECK_KILN_ERROR(arange(std::numeric_limits<std::int64_t>::min(), kMax, std::int64_t{1}), "more than 2^63 - 1");
  // The allocator still works afterwards.
  kt::expect_values(arange(0, 4), {0, 1, 2, 3}, 0, 0);
  kt::expect_values(linspace(0, 1, 3), {0, 0.5, 1}, 0, 0);
}

TEST_CASE("stress size overflow: views, broadcasting, cat/stack, matmul and index ops") {
  Tensor s = ones({1, 1});
  CHECK_KILN_ERROR(s.expand({k32, k32}), "[expand] shape (4294967296, 4294967296) has too many elements");
  CHECK_KILN_ERROR(expand(ones({1}), {k32, k32, 1}), "[expand]");
  Tensor col = s.expand({k32, 1}), row = s.expand({1, k32});  // each valid (2^32 elements)
  CHECK(col.numel() == k32);
  CHECK_KILN_ERROR(col + row, "[add] shape (4294967296, 4294967296) has too many elements");
  CHECK_KILN_ERROR(col * row, "[mul]");
  CHECK_KILN_ERROR(where(s > 0, col, row), "[where]");
  CHECK_KILN_ERROR(matmul(col, row), "[matmul] shape (4294967296, 4294967296) has too many elements");
  CHECK_KILN_ERROR(reshape(ones({0}), {k32, k32, 0}), "[reshape] shape (4294967296, 4294967296, 0)");
  CHECK_KILN_ERROR(view(ones({0}), {-1, k32, k32}), "[view]");
  Tensor big = s.expand({k62, 1});
  CHECK_KILN_ERROR(cat({big, big, big}, 0), "[cat] the sizes in dim 0 overflow");
  CHECK_KILN_ERROR(stack({big, big}, 0), "[stack] shape (2, 4611686018427387904, 1) has too many elements");
  CHECK_KILN_ERROR(index_select(s.expand({std::int64_t{1} << 61, 2}), 1, zeros({4}, kInt64)),
                   "[index_select] shape (2305843009213693952, 4) has too many elements");
  // Reductions of a valid huge view: the select of the probe, on a real size.
  CHECK(s.expand({k32, 3}).select(0, 7).sum().item<float>() == 3.0f);
}
