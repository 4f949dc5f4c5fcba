// Tensor basics: dtypes, promotion, Scalar result types, conversions, host access, clone, devices.
#include <limits>

#include "test_util.hpp"

using namespace kiln;

TEST_CASE("dtype basics: itemsize and names and categories") {
  CHECK(itemsize(kBool) == 1);
  CHECK(itemsize(kInt64) == 8);
  CHECK(itemsize(kFloat32) == 4);
  CHECK(itemsize(kFloat64) == 8);
  CHECK(dtype_name(kBool) == "bool");
  CHECK(dtype_name(kInt64) == "int64");
  CHECK(dtype_name(kFloat32) == "float32");
  CHECK(dtype_name(kFloat64) == "float64");
  CHECK(is_floating(kFloat32));
  CHECK(is_floating(kFloat64));
  CHECK_FALSE(is_floating(kInt64));
  CHECK_FALSE(is_floating(kBool));
  CHECK(is_integral(kInt64));
  CHECK(is_integral(kBool));
  CHECK_FALSE(is_integral(kBool, /*include_bool=*/false));
  CHECK_FALSE(is_integral(kFloat32));
  CHECK(dtype_of<float>::value == kFloat32);
  CHECK(dtype_of<double>::value == kFloat64);
  CHECK(dtype_of<std::int64_t>::value == kInt64);
  CHECK(dtype_of<bool>::value == kBool);
  CHECK(zeros({2, 3}, kFloat64).nbytes() == 48);
  CHECK(zeros({5}, kBool).nbytes() == 5);
}

TEST_CASE("promote_types follows bool < int64 < float32 < float64") {
  const DType all[] = {kBool, kInt64, kFloat32, kFloat64};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      INFO(dtype_name(all[i]) << " x " << dtype_name(all[j]));
      CHECK(promote_types(all[i], all[j]) == all[std::max(i, j)]);
    }
  // Tensor-tensor arithmetic uses the same rule.
  auto i = tensor({1, 2});
  auto f = tensor({0.5f, 0.25f});
  auto d = tensor(std::vector<double>{1.0, 2.0});
  auto b = tensor({true, false});
  CHECK((i + f).dtype() == kFloat32);
  kt::expect_values(i + f, {1.5, 2.25});
  CHECK((f + d).dtype() == kFloat64);
  CHECK((b + i).dtype() == kInt64);
  kt::expect_values(b + i, {2, 2});
  CHECK((b * b).dtype() == kBool);
}

TEST_CASE("Scalar remembers the kind of literal") {
  CHECK(Scalar(2).kind() == kInt64);
  CHECK(Scalar(std::int64_t{-7}).kind() == kInt64);
  CHECK(Scalar(2u).kind() == kInt64);
  CHECK(Scalar(2.0).kind() == kFloat64);
  CHECK(Scalar(2.0f).kind() == kFloat64);
  CHECK(Scalar(true).kind() == kBool);
  CHECK(Scalar(2.5).is_floating());
  CHECK_FALSE(Scalar(2).is_floating());
  CHECK(Scalar(-2.7).to<std::int64_t>() == -2);  // truncation toward zero
  CHECK(Scalar(2.7).to<std::int64_t>() == 2);
  // Out of int64's range: saturated, NaN 0 (a plain cast is UB: tests/fuzz/checkpoint_fuzz found
  // it through x * 1e30; on x86 it gave INT64_MIN for all of them).
  CHECK(Scalar(1e30).to<std::int64_t>() == INT64_MAX);
  CHECK(Scalar(-std::numeric_limits<double>::infinity()).to_int() == INT64_MIN);
  CHECK(Scalar(std::nan("")).to<std::int64_t>() == 0);
  CHECK(Scalar(std::nan("")).to_double() != Scalar(std::nan("")).to_double());
  // Tensors convert the same way, from every floating dtype (a plain cast was UB; x86 gave
  // INT64_MIN for all three).
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16}) {
    const double big = dt == kFloat16 ? INFINITY : 1e30;
    Tensor x = tensor({big, -big, std::nan(""), 2.75, -2.75}).to(dt);
    CHECK(x.to(kInt64).to_vector<std::int64_t>() == std::vector<std::int64_t>{INT64_MAX, INT64_MIN, 0, 2, -2});
  }
  CHECK(Scalar(0.0).to<bool>() == false);
  CHECK(Scalar(0.25).to<bool>() == true);
  CHECK(Scalar(3).to<double>() == 3.0);
  CHECK(Scalar(true).to<float>() == 1.0f);
  // Large integers are kept exactly (not routed through double).
  const std::int64_t big = (std::int64_t{1} << 53) + 1;
  CHECK(Scalar(big).to<std::int64_t>() == big);
}

TEST_CASE("result_type_with_scalar: a C++ number never widens the tensor's category") {
  CHECK(result_type_with_scalar(kFloat32, kFloat64) == kFloat32);
  CHECK(result_type_with_scalar(kFloat32, kInt64) == kFloat32);
  CHECK(result_type_with_scalar(kFloat64, kInt64) == kFloat64);
  CHECK(result_type_with_scalar(kInt64, kFloat64) == kFloat32);
  CHECK(result_type_with_scalar(kInt64, kInt64) == kInt64);
  CHECK(result_type_with_scalar(kInt64, kBool) == kInt64);
  CHECK(result_type_with_scalar(kBool, kInt64) == kInt64);
  CHECK(result_type_with_scalar(kBool, kFloat64) == kFloat32);
  CHECK(result_type_with_scalar(kBool, kBool) == kBool);
}

TEST_CASE("tensor-scalar arithmetic result types and values") {
  auto f = tensor({1.0f, 2.0f, 3.0f});
  auto f2 = f * 2.0;
  CHECK(f2.dtype() == kFloat32);
  kt::expect_values(f2, {2, 4, 6});

  auto i = tensor({1, 2, 3});
  REQUIRE(i.dtype() == kInt64);
  auto i25 = i * 2.5;
  CHECK(i25.dtype() == kFloat32);
  kt::expect_values(i25, {2.5, 5.0, 7.5});

  auto ip = i + 4;
  CHECK(ip.dtype() == kInt64);
  CHECK(ip.to_vector<std::int64_t>() == std::vector<std::int64_t>{5, 6, 7});

  auto rs = 10 - i;
  CHECK(rs.dtype() == kInt64);
  CHECK(rs.to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 8, 7});

  auto d = tensor(std::vector<double>{1.0, 2.0}) * 3;
  CHECK(d.dtype() == kFloat64);
  kt::expect_values(d, {3, 6});

  // True division of integers gives float32.
  auto q = i / 2;
  CHECK(q.dtype() == kFloat32);
  kt::expect_values(q, {0.5, 1.0, 1.5});

  auto b = tensor({true, false});
  CHECK((b + 1).dtype() == kInt64);
  kt::expect_values(b + 1, {2, 1});
  CHECK((b * 1.5).dtype() == kFloat32);
  kt::expect_values(b * 1.5, {1.5, 0});

  // Comparisons with scalars give bool.
  auto c = i > 1;
  CHECK(c.dtype() == kBool);
  CHECK(c.to_vector<bool>() == std::vector<bool>{false, true, true});
  auto c2 = i < 2.5;  // int tensor compared with a float scalar compares as float
  CHECK(c2.to_vector<bool>() == std::vector<bool>{true, true, false});
}

TEST_CASE("to(dtype) conversions") {
  auto f = tensor({1.7f, -1.7f, 2.5f, -0.5f, 0.0f});
  SUBCASE("float -> int64 truncates toward zero") {
    auto i = f.to(kInt64);
    CHECK(i.dtype() == kInt64);
    CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -1, 2, 0, 0});
  }
  SUBCASE("float -> bool is 'nonzero'") {
    auto b = f.to(kBool);
    CHECK(b.dtype() == kBool);
    CHECK(b.to_vector<bool>() == std::vector<bool>{true, true, true, true, false});
  }
  SUBCASE("int64 -> bool and bool -> float") {
    auto b = tensor({0, 3, -2}).to(kBool);
    CHECK(b.to_vector<bool>() == std::vector<bool>{false, true, true});
    auto bf = b.to(kFloat32);
    CHECK(bf.dtype() == kFloat32);
    kt::expect_values(bf, {0, 1, 1});
  }
  SUBCASE("float32 <-> float64 and int64 -> float") {
    auto d = f.to(kFloat64);
    CHECK(d.dtype() == kFloat64);
    CHECK(d.to_vector<double>()[0] == static_cast<double>(1.7f));
    auto back = d.to(kFloat32);
    CHECK(back.to_vector<float>() == f.to_vector<float>());
    auto i = tensor({-3, 0, 5}).to(kFloat64);
    kt::expect_values(i, {-3, 0, 5}, 0, 0);
  }
  SUBCASE("to the same dtype is a no-op returning the same tensor") {
    auto same = f.to(kFloat32);
    CHECK(same.is_same(f));
  }
  SUBCASE("conversion of a non-contiguous view") {
    auto m = tensor({1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f}).reshape({2, 3}).t();  // (3, 2)
    auto i = m.to(kInt64);
    CHECK(i.shape() == Shape{3, 2});
    CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 4, 2, 5, 3, 6});
  }
}

TEST_CASE("item<T>() converts the single value") {
  auto s = scalar_tensor(2.75);
  CHECK(s.dim() == 0);
  CHECK(s.item<float>() == 2.75f);
  CHECK(s.item<double>() == 2.75);
  CHECK(s.item<std::int64_t>() == 2);
  CHECK(s.item<bool>() == true);
  CHECK(tensor({42}).item<std::int64_t>() == 42);
  CHECK(tensor({42}).item<double>() == 42.0);
  CHECK(tensor({false}).item<bool>() == false);
  CHECK(ones({1, 1, 1}, kFloat64).item<double>() == 1.0);
  // item of one element of a view.
  auto x = arange(6).reshape({2, 3});
  CHECK(x.select(0, 1).select(0, 2).item<std::int64_t>() == 5);
  CHECK_KILN_ERROR(zeros({2}).item<float>(),
                   "[item] a tensor with 2 elements (shape (2,)) cannot be converted to a scalar");
  CHECK_KILN_ERROR(zeros({0}).item<float>(), "[item] a tensor with 0 elements (shape (0,))");
}

TEST_CASE("to_vector<T>() returns row-major values of any layout") {
  auto x = arange(6).reshape({2, 3});
  CHECK(x.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(x.t().to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 3, 1, 4, 2, 5});
  CHECK(x.to_vector<double>() == std::vector<double>{0, 1, 2, 3, 4, 5});
  CHECK(x.to_vector<bool>() == std::vector<bool>{false, true, true, true, true, true});
  CHECK(x.slice(1, 0, 3, 2).to_vector<float>() == std::vector<float>{0, 2, 3, 5});
  CHECK(zeros({0, 4}).to_vector<float>().empty());
  CHECK(scalar_tensor(5, kInt64).to_vector<std::int64_t>() == std::vector<std::int64_t>{5});
  // Expanded (stride 0) views are materialized.
  CHECK(tensor({7, 8}).expand({2, 2}).to_vector<std::int64_t>() == std::vector<std::int64_t>{7, 8, 7, 8});
}

TEST_CASE("data_ptr<T> checks the dtype") {
  auto x = tensor({1.0f, 2.0f});
  CHECK(x.data_ptr<float>()[1] == 2.0f);
  CHECK_KILN_ERROR(x.data_ptr<double>(), "[data_ptr] requested float64 data from a float32 tensor");
  auto v = arange(5).slice(0, 2, 5);
  CHECK(*v.data_ptr<std::int64_t>() == 2);  // points at the view's first element
}

TEST_CASE("clone has independent contiguous storage") {
  auto x = tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  auto c = x.clone();
  CHECK(c.storage() != x.storage());
  CHECK(c.shape() == x.shape());
  CHECK(c.dtype() == x.dtype());
  c.fill_(9);
  kt::expect_values(x, {1, 2, 3, 4});
  kt::expect_values(c, {9, 9, 9, 9});
  x.fill_(0);
  kt::expect_values(c, {9, 9, 9, 9});

  auto t = tensor({1, 2, 3, 4, 5, 6}).reshape({2, 3}).t();
  REQUIRE_FALSE(t.is_contiguous());
  auto tc = t.clone();
  CHECK(tc.is_contiguous());
  CHECK(tc.shape() == Shape{3, 2});
  CHECK(tc.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("Device: parse and str and equality") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:1") == Device::cuda(1));
  CHECK(Device::parse("cuda:12").index == 12);
  CHECK(Device::parse("cuda:1").is_cuda());
  CHECK(Device::parse("cpu").is_cpu());
  CHECK(Device::cuda(3).str() == "cuda:3");
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(0) != Device::cuda(1));
  CHECK(Device::cuda(0) != Device::cpu());
  CHECK_KILN_ERROR(Device::parse("gpu"), "[device] cannot parse device 'gpu'");
  CHECK_KILN_ERROR(Device::parse(""), "[device] cannot parse device ''");
  CHECK_KILN_ERROR(Device::parse("cuda:"), "cannot parse device 'cuda:'");
  CHECK_KILN_ERROR(Device::parse("cuda:-1"), "cannot parse device 'cuda:-1'");
  CHECK_KILN_ERROR(Device::parse("cuda:1x"), "cannot parse device 'cuda:1x'");
  CHECK_KILN_ERROR(Device::parse("CPU"), "cannot parse device 'CPU'");
  CHECK_KILN_ERROR(Device::parse("cuda: 1"), "cannot parse device 'cuda: 1'");
  CHECK_KILN_ERROR(Device::parse("cuda:+1"), "cannot parse device 'cuda:+1'");
  CHECK_KILN_ERROR(Device::parse("cuda:99999999999"), "cannot parse device 'cuda:99999999999'");
}

TEST_CASE("tensors on an unavailable CUDA device give an error naming the op") {
  if (cuda_is_available()) {
    MESSAGE("CUDA is available: skipping the no-CUDA error checks");
    return;
  }
  CHECK_KILN_ERROR(zeros({2}, Device::cuda()), "[zeros] device cuda:0 is not available");
  CHECK_KILN_ERROR(ones({2}, Device::cuda(1)), "[ones] device cuda:1 is not available");
  CHECK_KILN_ERROR(empty({2}, Device::cuda()), "[empty] device cuda:0 is not available");
  CHECK_KILN_ERROR(full({2}, 1.0, Device::cuda()), "[full] device cuda:0");
  CHECK_KILN_ERROR(arange(0, 4, 1, Device::cuda()), "[arange] device cuda:0");
  CHECK_KILN_ERROR(linspace(0, 1, 3, Device::cuda()), "[linspace] device cuda:0");
  CHECK_KILN_ERROR(eye(2, 2, Device::cuda()), "[eye] device cuda:0");
  CHECK_KILN_ERROR(tensor({1.0f, 2.0f}, Device::cuda()), "[tensor] device cuda:0");
  CHECK_KILN_ERROR(rand({2}, Device::cuda()), "[rand] device cuda:0");
  CHECK_KILN_ERROR(randn({2}, Device::cuda()), "[randn] device cuda:0");
  CHECK_KILN_ERROR(randint(0, 3, {2}, TensorOptions(kInt64).device(Device::cuda())), "[randint] device cuda:0");
  CHECK_KILN_ERROR(backend_for(Device::cuda(), "myop"), "[myop] device cuda:0 is not available");
  CHECK_KILN_ERROR(zeros({2}).to(Device::cuda()), "[to] device cuda:0 is not available");
  CHECK_KILN_ERROR(zeros({2}).to(Device::cuda(), kFloat64), "[to] device cuda:0 is not available");
}

TEST_CASE("to(Device::cpu()) on a cpu tensor is a no-op") {
  auto x = arange(3);
  CHECK(x.to(Device::cpu()).is_same(x));
  auto y = x.to(Device::cpu(), kFloat64);
  CHECK(y.dtype() == kFloat64);
  kt::expect_values(y, {0, 1, 2}, 0, 0);
}

TEST_CASE("TensorOptions chain and implicit conversions") {
  TensorOptions o = TensorOptions().dtype(kFloat64).requires_grad(true);
  CHECK(o.dtype() == kFloat64);
  CHECK(o.requires_grad());
  CHECK(o.device() == Device::cpu());
  TensorOptions from_dtype = kInt64;
  CHECK(from_dtype.dtype() == kInt64);
  TensorOptions from_device = Device::cpu();
  CHECK(from_device.dtype() == kFloat32);
  auto t = zeros({2}, o);
  CHECK(t.requires_grad());
  CHECK(t.is_leaf());
  CHECK(t.dtype() == kFloat64);
  CHECK_KILN_ERROR(zeros({2}, TensorOptions(kInt64).requires_grad(true)),
                   "[requires_grad_] only floating point tensors can require gradients, got int64");
}

TEST_CASE("undefined tensors") {
  Tensor u;
  CHECK_FALSE(u.defined());
  CHECK_KILN_ERROR(u.shape(), "[tensor] operation on an undefined tensor");
  CHECK_KILN_ERROR(zeros({2}).copy_(u), "[copy_] source tensor is undefined");
}
