// kiln picks OpenBLAS's kernel set itself and leaves the process environment alone.
#include <cstdlib>
#include <kiln/core/cpu/cpu_backend.hpp>

#include "test_util.hpp"

using namespace kiln;

TEST_CASE("OpenBLAS core type: AVX-512 kernels despite OPENBLAS_CORETYPE=Haswell / env restored") {
  // Under ctest each case is its own process, so this runs before OpenBLAS is loaded.
  const char* kiln_choice = std::getenv("KILN_OPENBLAS_CORETYPE");
  setenv("OPENBLAS_CORETYPE", "Haswell", 1);
  Tensor a = ones({64, 64}), b = ones({64, 64});
  kt::expect_values(matmul(a, b).select(0, 0).narrow(0, 0, 2), {64, 64});
  REQUIRE(std::getenv("OPENBLAS_CORETYPE") != nullptr);
  CHECK(std::string(std::getenv("OPENBLAS_CORETYPE")) == "Haswell");
  std::string info = cpu::blas_info();
  MESSAGE("blas: " << info);
  __builtin_cpu_init();
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (info.rfind("openblas", 0) == 0 && avx512 && !kiln_choice) CHECK(info.find("core SkylakeX") != std::string::npos);
}
