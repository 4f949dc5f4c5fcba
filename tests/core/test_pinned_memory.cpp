// Page-locked host memory where no GPU can use it (a build without CUDA, or none visible):
// pin_memory and DataLoader(pin_memory) are errors naming the op and why, nothing is pinned,
// and non_blocking copies behave as ordinary ones. tests/cuda/test_cuda_pinned.cpp covers the
// GPU side (run on the emulator by tests/cuda_emu/run.sh).
#include <kiln/core/cuda/cuda.hpp>
#include <kiln/data/data.hpp>

#include "test_util.hpp"

using namespace kiln;

TEST_CASE("pinned memory: ordinary tensors, views and op results are not pinned") {
  Tensor x = randn({4, 3});
  CHECK_FALSE(x.is_pinned());
  CHECK_FALSE(x.t().is_pinned());
  CHECK_FALSE((x + 1).is_pinned());
  CHECK_FALSE(x.to(kFloat64).is_pinned());
  float blob[4] = {1, 2, 3, 4};
  CHECK_FALSE(Tensor::from_blob(blob, {4}, kFloat32).is_pinned());
  // A non_blocking copy within the host is the tensor itself, as without the flag.
  CHECK(x.to(Device::cpu(), true).is_same(x));
}

TEST_CASE("pinned memory: without a usable GPU pin_memory and a pinning DataLoader are clear errors") {
  if (cuda::is_available()) {
    MESSAGE("a GPU is visible: the no-GPU errors are not reachable here");
    return;
  }
  const std::string why = "[pin_memory] page-locked memory needs a CUDA GPU: " + cuda::unavailable_reason();
  CHECK_KILN_ERROR(randn({2, 2}).pin_memory(), why.c_str());
  CHECK_KILN_ERROR(pin_memory(ones({0})), "[pin_memory] page-locked memory needs a CUDA GPU");
  if (!cuda::is_built()) CHECK_KILN_ERROR(cuda::host_allocator_stats(), "[cuda.host_allocator_stats]");
  CHECK_KILN_ERROR(pinned_allocator("mine"), "[mine] page-locked memory needs a CUDA GPU");
  auto ds = std::make_shared<data::TensorDataset>(std::vector<Tensor>{arange(0, 6, 1, kFloat32)});
  CHECK_KILN_ERROR(data::DataLoader(ds, data::DataLoaderOptions().pin_memory(true).num_workers(2)),
                   "[DataLoader] page-locked memory needs a CUDA GPU");
  // Without pinning the loader's batches are ordinary host tensors.
  data::DataLoader loader(ds, data::DataLoaderOptions().batch_size(4));
  for (data::Batch& b : loader) CHECK_FALSE(b[0].is_pinned());
}

TEST_CASE("pinned memory: pin_memory checks its input before the GPU") {
  CHECK_KILN_ERROR(pin_memory(Tensor()), "[pin_memory]");
}
