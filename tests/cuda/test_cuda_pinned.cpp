// Page-locked host memory on a GPU: pin_memory / is_pinned, asynchronous copies from pinned
// tensors, the page-locked allocator's reuse (never of a block a queued copy still reads), and
// DataLoader(pin_memory). On the emulator (tests/cuda_emu/run.sh) the stream can be held, so
// copies really complete after the call that queued them.
#include <kiln/data/data.hpp>

#include "cuda/cuda_test_util.hpp"
#if __has_include(<emu_core.hpp>)  // compiled by tests/cuda_emu/run.sh: the emulator's runtime
#define KILN_CUDA_EMU 1
#include <cuda_runtime_api.h>
#endif

using namespace kiln;
using kc::kGpu;

TEST_CASE("cuda pinned: pin_memory copies into page-locked memory, views stay pinned, op results do not") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16, kInt64, kBool}) {
    CAPTURE(dtype_name(dt));
    Tensor x = (randn({5, 7}) * 3).to(dt);
    Tensor p = x.t().pin_memory();  // a strided source: the pinned copy is contiguous
    CHECK(p.is_pinned());
    CHECK_FALSE(x.is_pinned());
    CHECK(p.is_contiguous());
    CHECK(p.device().is_cpu());
    CHECK(p.dtype() == dt);
    CHECK(p.shape() == Shape{7, 5});
    CHECK(p.to_vector<double>() == x.t().contiguous().to_vector<double>());
    CHECK(p.pin_memory().is_same(p));  // already pinned: itself
    CHECK(p.narrow(0, 1, 3).is_pinned());
    CHECK_FALSE(p.clone().is_pinned());
  }
  CHECK_KILN_ERROR(randn({2}).to(kGpu).pin_memory(),
                   "[pin_memory] only CPU tensors can be pinned, got a tensor on cuda:0");
  // Differentiable: the gradient passes through unchanged.
  Tensor w = randn({3}).requires_grad_();
  (w.pin_memory() * 2).sum().backward();
  CHECK(w.grad().to_vector<float>() == std::vector<float>{2, 2, 2});
}

TEST_CASE("cuda pinned: non_blocking copies from pinned tensors land exactly, every dtype and layout") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kInt64, kBool}) {
    CAPTURE(dtype_name(dt));
    Tensor x = (randn({6, 9}) * 4).to(dt);
    Tensor p = x.pin_memory();
    Tensor y = p.to(kGpu, /*non_blocking=*/true);
    CHECK(y.device() == kGpu);
    CHECK(y.to_vector<double>() == x.to_vector<double>());
    // A contiguous view at an offset, and a strided view (staged as without the flag).
    CHECK(p.narrow(0, 2, 3).to(kGpu, true).to_vector<double>() == x.narrow(0, 2, 3).to_vector<double>());
    CHECK(p.t().to(kGpu, true).to_vector<double>() == x.t().contiguous().to_vector<double>());
    // Pageable sources ignore the flag.
    CHECK(x.to(kGpu, true).to_vector<double>() == x.to_vector<double>());
  }
}

TEST_CASE("cuda pinned: the page-locked allocator reuses freed blocks") {
  KILN_CUDA_OR_SKIP();
  cuda::host_empty_cache();
  { Tensor warm = randn({1000}).pin_memory(); }
  const AllocatorStats before = cuda::host_allocator_stats();
  CHECK(before.cached_bytes > 0);
  for (int step = 0; step < 5; ++step) {
    Tensor p = randn({1000}).pin_memory();
    Tensor y = p.to(kGpu, true);
    CHECK(y.sum().item<double>() == doctest::Approx(p.sum().item<double>()).epsilon(1e-5));
  }
  cuda::synchronize();
  const AllocatorStats after = cuda::host_allocator_stats();
  CHECK(after.os_allocs == before.os_allocs);
  CHECK(after.cache_hits >= before.cache_hits + 5);
  CHECK(after.in_use_bytes == 0);
  cuda::host_empty_cache();
  CHECK(cuda::host_allocator_stats().cached_bytes == 0);
}

#ifdef KILN_CUDA_EMU
TEST_CASE("cuda pinned (emulator): a block a queued copy reads is not handed out until the copy ran") {
  KILN_CUDA_OR_SKIP();
  cuda::host_empty_cache();
  Tensor x = arange(0, 4096, 1, kFloat32);
  Tensor y;
  void* old_block = nullptr;
  emu_rt::hold() = true;  // copies queue up and their events stay pending
  {
    Tensor p = x.pin_memory();
    old_block = p.storage()->data;
    y = p.to(kGpu, true);
  }                                                      // p is freed while its copy still waits
  CHECK(cuda::host_allocator_stats().in_use_bytes > 0);  // counted in use until the copy ran
  Tensor q = full({4096}, -1.0f).pin_memory();           // same size: must get another block
  CHECK(q.storage()->data != old_block);
  const auto allocs = cuda::host_allocator_stats().os_allocs;
  emu_rt::hold() = false;
  cuda::synchronize();  // the queued copy runs now, reading the old block
  CHECK(y.to_vector<float>() == x.to_vector<float>());
  q = Tensor();
  Tensor r1 = zeros({4096}).pin_memory(), r2 = zeros({4096}).pin_memory();  // both blocks free again: reused
  CHECK(cuda::host_allocator_stats().os_allocs == allocs);
  CHECK((r1.storage()->data == old_block || r2.storage()->data == old_block));
}
#endif

TEST_CASE("cuda pinned: DataLoader(pin_memory) batches are pinned, equal to unpinned ones, any workers") {
  KILN_CUDA_OR_SKIP();
  const std::int64_t n = 37;
  auto ds = std::make_shared<data::TensorDataset>(
      std::vector<Tensor>{randn({n, 3, 4}), arange(0, n, 1, kInt64), rand({n}) < 0.5});
  for (int workers : {0, 1, 3}) {
    CAPTURE(workers);
    Generator g1(5), g2(5);
    auto opts = data::DataLoaderOptions().batch_size(8).shuffle(true).num_workers(workers);
    data::DataLoader plain(ds, data::DataLoaderOptions(opts).generator(&g1));
    data::DataLoader pinned(ds, data::DataLoaderOptions(opts).generator(&g2).pin_memory(true));
    std::vector<data::Batch> a, b;
    for (data::Batch& batch : plain) a.push_back(batch);
    for (data::Batch& batch : pinned) b.push_back(batch);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      for (std::size_t f = 0; f < a[i].size(); ++f) {
        CHECK_FALSE(a[i][f].is_pinned());
        CHECK(b[i][f].is_pinned());
        Tensor on_gpu = b[i][f].to(kGpu, true);
        CHECK(on_gpu.to_vector<double>() == a[i][f].to_vector<double>());
      }
    }
  }
}
