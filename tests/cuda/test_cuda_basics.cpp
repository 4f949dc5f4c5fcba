// The CUDA backend's plumbing: availability reporting (checked in every build), host <-> device
// copies, factories, the caching allocators, modules and optimizers on the GPU.
#include "cuda/cuda_test_util.hpp"

using namespace kiln;
using kc::kGpu;

TEST_CASE("cuda: availability queries agree and an unavailable device is a clear error") {
  CHECK(cuda::is_available() == (cuda::device_count() > 0));
  CHECK(cuda_is_available() == cuda::is_available());
  if (!cuda::is_built()) {
    CHECK(cuda::device_count() == 0);
    CHECK(cuda::unavailable_reason().find("kiln was built without CUDA") != std::string::npos);
    CHECK_KILN_ERROR(cuda::allocator_stats(), "[cuda.allocator_stats] kiln was built without CUDA");
    CHECK_KILN_ERROR(cuda::synchronize(), "[cuda.synchronize] kiln was built without CUDA");
    // A setting, so portable programs may set it anyway.
    cuda::set_allow_tf32(true);
    CHECK(cuda::allow_tf32());
    cuda::set_allow_tf32(false);
  }
  if (!cuda::is_available()) {
    const std::string why = cuda::unavailable_reason();
    CHECK(!why.empty());
    CHECK_KILN_ERROR(randn({2, 3}).to(kGpu), ("[to] device cuda:0 is not available: " + why).c_str());
    CHECK_KILN_ERROR(zeros({2}, kGpu), ("[zeros] device cuda:0 is not available: " + why).c_str());
    CHECK_KILN_ERROR(nn::Linear(2, 3)->to(kGpu), "device cuda:0 is not available");
    kc::cuda_ready();  // the one skip line of this process
    return;
  }
  CHECK(cuda::unavailable_reason().empty());
  CHECK(!cuda::device_name().empty());
  const int n = cuda::device_count();
  const std::string msg = fmt::format("[zeros] device cuda:{} is not available: {} CUDA device", n, n);
  CHECK_KILN_ERROR(zeros({2}, Device::cuda(n)), msg.c_str());
  MESSAGE("CUDA device: " << cuda::device_name());
}

TEST_CASE("cuda: every dtype round-trips host -> device -> host exactly in every layout") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kBool, kInt64, kFloat32, kFloat64})
    for (const auto& l : kc::layouts())
      for (const Shape& s : kc::table_shapes()) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(s));
        kc::Pair p = kc::make_pair(l, s, dt, 11);
        Tensor back = p.gpu.to(Device::cpu());
        CHECK(back.device().is_cpu());
        CHECK(equal(back, p.cpu));
        Tensor moved = p.cpu.to(kGpu);  // a strided host view goes up as a contiguous tensor
        CHECK(moved.device() == kGpu);
        CHECK(moved.is_contiguous());
        kc::expect_match(moved, p.cpu.contiguous(), 0, 0, "to(cuda)");
        kc::expect_match(p.gpu.clone(), p.cpu.contiguous(), 0, 0, "clone on cuda");
      }
}

TEST_CASE("cuda: large copies go through several pinned chunks and keep every byte") {
  KILN_CUDA_OR_SKIP();
  const std::int64_t n = (std::int64_t{20} << 20) / 8 + 12345;  // ~20 MiB of float64: three staging chunks
  Tensor h = arange(0, n, 1, TensorOptions(kFloat64));
  Tensor d = h.to(kGpu);
  CHECK(sum(d).item<double>() == static_cast<double>(n) * static_cast<double>(n - 1) / 2);
  CHECK(equal(d.to(Device::cpu()), h));
  // Back-to-back uploads reuse staging blocks only after their copies finished.
  std::vector<Tensor> ups;
  for (int i = 0; i < 4; ++i) ups.push_back((h + double(i)).to(kGpu));
  for (int i = 0; i < 4; ++i) CHECK(equal(ups[static_cast<std::size_t>(i)].to(Device::cpu()), h + double(i)));
}

TEST_CASE("cuda: copy_ converts dtype and broadcasts and crosses devices") {
  KILN_CUDA_OR_SKIP();
  Tensor src = arange(0, 12, 1, TensorOptions(kFloat64)).reshape({3, 4});
  Tensor d = zeros({2, 3, 4}, TensorOptions(kFloat32).device(kGpu));
  d.copy_(src);  // host float64 -> device float32, broadcast over dim 0
  CHECK(equal(d.to(Device::cpu()), src.to(kFloat32).expand({2, 3, 4}).contiguous()));
  Tensor h = zeros({4, 3}, kInt64);
  h.copy_(d.select(0, 1).t());  // device strided view -> host int64
  CHECK(equal(h, src.t().to(kInt64).contiguous()));
  Tensor dv = zeros({3, 4}, TensorOptions(kFloat64).device(kGpu));
  dv.slice(1, 0, 4, 2).copy_(src.slice(1, 1, 4, 2).to(kGpu));  // strided device -> strided device
  Tensor want = zeros({3, 4}, kFloat64);
  want.slice(1, 0, 4, 2).copy_(src.slice(1, 1, 4, 2));
  kc::expect_match(dv, want, 0, 0, "strided copy_");
  CHECK(d.select(0, 1).select(0, 2).select(0, 3).item<float>() == 11.0f);
  CHECK(d.sum().item<double>() == 2 * 66.0);
}

TEST_CASE("cuda: factories build on the device with the CPU's values") {
  KILN_CUDA_OR_SKIP();
  const TensorOptions g = TensorOptions(kFloat64).device(kGpu), c = TensorOptions(kFloat64);
  kc::expect_match(zeros({3, 5}, g), zeros({3, 5}, c), 0, 0, "zeros");
  kc::expect_match(ones({0, 5}, g), ones({0, 5}, c), 0, 0, "ones");
  kc::expect_match(full({4}, 2.5, g), full({4}, 2.5, c), 0, 0, "full");
  kc::expect_match(arange(0, 7, 1, TensorOptions(kInt64).device(kGpu)), arange(0, 7, 1), 0, 0, "arange");
  kc::expect_match(linspace(-1, 1, 9, g), linspace(-1, 1, 9, c), 0, 0, "linspace");
  kc::expect_match(eye(3, 4, g), eye(3, 4, c), 0, 0, "eye");
  kc::expect_match(tensor({true, false, true}, TensorOptions(kBool).device(kGpu)), tensor({true, false, true}), 0, 0,
                   "tensor(bool)");
  Tensor f = zeros({4, 6}, g);
  f.slice(1, 1, 6, 2).fill_(3.0);  // strided fill
  Tensor fc = zeros({4, 6}, c);
  fc.slice(1, 1, 6, 2).fill_(3.0);
  kc::expect_match(f, fc, 0, 0, "strided fill_");
}

TEST_CASE("cuda: a steady-state training step makes no cudaMalloc calls") {
  KILN_CUDA_OR_SKIP();
  Generator gen(3);
  Tensor w = (randn({64, 32}, kFloat32, &gen) * 0.1).to(kGpu).requires_grad_();
  Tensor x = randn({16, 64}, kFloat32, &gen).to(kGpu);
  auto step = [&] {
    Tensor y = relu(matmul(x, w));
    Tensor loss = sum(log_softmax(y, -1) * y);
    w.set_grad(Tensor());
    loss.backward();
    NoGradGuard ng;
    w.sub_(w.grad() * 0.01);
    return loss.item<float>();
  };
  step();
  step();
  const AllocatorStats a = cuda::allocator_stats();
  for (int i = 0; i < 5; ++i) step();
  const AllocatorStats b = cuda::allocator_stats();
  CHECK(b.os_allocs == a.os_allocs);
  CHECK(b.cache_hits > a.cache_hits);
  CHECK(b.in_use_bytes == a.in_use_bytes);
  const AllocatorStats pa = cuda::pinned_stats();
  for (int i = 0; i < 5; ++i) step();
  CHECK(cuda::pinned_stats().os_allocs == pa.os_allocs);  // staging blocks are reused too
  cuda::empty_cache();
  CHECK(cuda::allocator_stats().cached_bytes == 0);
  CHECK(cuda::allocator_stats().in_use_bytes == b.in_use_bytes);
  CHECK(std::isfinite(step()));  // and it still works after the cache was emptied
}

TEST_CASE("cuda: a module moves to the GPU and its step matches the CPU (SGD and AdamW)") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dtype_name(dt));
    manual_seed(7);
    nn::Sequential cpu_net(nn::Linear(6, 16), nn::GELU(), nn::LayerNorm(16), nn::Linear(16, 3));
    cpu_net->to(dt);
    manual_seed(7);
    nn::Sequential gpu_net(nn::Linear(6, 16), nn::GELU(), nn::LayerNorm(16), nn::Linear(16, 3));
    gpu_net->to(kGpu, dt);
    for (const Tensor& p : gpu_net->parameters()) CHECK(p.device() == kGpu);
    optim::AdamW cpu_opt(cpu_net->parameters(), optim::AdamWOptions(1e-2).weight_decay(0.1));
    optim::AdamW gpu_opt(gpu_net->parameters(), optim::AdamWOptions(1e-2).weight_decay(0.1));
    Generator g(5);
    Tensor x = randn({10, 6}, dt, &g);
    Tensor t = randint(0, 3, {10}, kInt64, &g);
    for (int it = 0; it < 3; ++it) {
      Tensor lc = cross_entropy(cpu_net->forward(x), t);
      Tensor lg = cross_entropy(gpu_net->forward(x.to(kGpu)), t.to(kGpu));
      kc::expect_match(lg, lc, kc::rtol_for(dt) * 10, kc::atol_for(dt) * 10, "loss");
      cpu_opt.zero_grad();
      gpu_opt.zero_grad();
      lc.backward();
      lg.backward();
      cpu_opt.step();
      gpu_opt.step();
    }
    auto pc = cpu_net->parameters(), pg = gpu_net->parameters();
    REQUIRE(pc.size() == pg.size());
    for (std::size_t i = 0; i < pc.size(); ++i) kc::expect_match(pg[i], pc[i], 1e-4, 1e-5, "parameter after AdamW");
    gpu_net->to(Device::cpu());
    for (const Tensor& p : gpu_net->parameters()) CHECK(p.device().is_cpu());
  }
}
