// Fused nn ops, random numbers and optimizer steps on the GPU against the CPU backend:
// softmax / log-softmax / layer norm / RMS norm / losses (values and gradients), bit-identical Philox
// draws and dropout masks, and every fused optimizer update.
#include "cuda/cuda_test_util.hpp"

using namespace kiln;
using kc::kGpu;
using kc::Pair;

namespace {
const std::vector<DType> kFloats = {kFloat32, kFloat64};
}

TEST_CASE("cuda nn: softmax and log_softmax values and gradients match the CPU along every dim") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (const auto& l : kc::layouts())
      for (const Shape& s : std::vector<Shape>{{7}, {4, 9}, {3, 5, 33}, {2, 3000}, {0, 4}}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(s));
        Pair x = kc::make_pair(l, s, dt, 1, -6, 6);
        for (std::int64_t dim = 0; dim < static_cast<std::int64_t>(s.size()); ++dim) {
          CAPTURE(dim);
          kc::check_op(
              "softmax", [dim](auto& v) { return softmax(v[0], dim); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
          kc::check_op(
              "log_softmax", [dim](auto& v) { return log_softmax(v[0], dim); }, {x}, kc::rtol_for(dt),
              kc::atol_for(dt));
          if (x.cpu.numel() == 0) continue;
          kc::check_grads(
              "softmax", [dim](auto& v) { return softmax(v[0], dim); }, {x}, kc::rtol_for(dt) * 10, kc::atol_for(dt));
          kc::check_grads(
              "log_softmax", [dim](auto& v) { return log_softmax(v[0], dim); }, {x}, kc::rtol_for(dt) * 10,
              kc::atol_for(dt));
        }
      }
  // -inf entries (masked logits) and a row that is all -inf.
  for (DType dt : kFloats) {
    const double inf = std::numeric_limits<double>::infinity();
    Tensor c =
        tensor({0.5, -inf, 2.0, -inf, -inf, -inf, -inf, -inf, 1.0, 1.0, 1.0, 1.0}, TensorOptions(dt)).reshape({3, 4});
    Pair x{c, c.to(kGpu)};
    kc::check_op(
        "softmax -inf", [](auto& v) { return softmax(v[0], -1); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
    kc::check_op(
        "log_softmax -inf", [](auto& v) { return log_softmax(v[0], -1); }, {x}, kc::rtol_for(dt), kc::atol_for(dt));
  }
}

TEST_CASE("cuda nn: layer_norm matches the CPU with and without affine parameters") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (const auto& l : kc::layouts())
      for (const Shape& s : std::vector<Shape>{{4, 9}, {3, 5, 64}, {2, 2, 4097}}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(s));
        Pair x = kc::make_pair(l, s, dt, 1, -3, 5);
        const Shape ns{s.back()};
        Pair w = kc::make_pair(kc::layouts()[0], ns, dt, 2), b = kc::make_pair(kc::layouts()[0], ns, dt, 3);
        kc::check_op(
            "layer_norm", [ns](auto& v) { return layer_norm(v[0], ns); }, {x}, kc::rtol_for(dt) * 10,
            kc::atol_for(dt) * 10);
        kc::check_grads(
            "layer_norm affine", [ns](auto& v) { return layer_norm(v[0], ns, v[1], v[2], 1e-5); }, {x, w, b},
            kc::rtol_for(dt) * 100, kc::atol_for(dt) * 10);
        const Shape ns2{s[s.size() - 2], s.back()};
        kc::check_op(
            "layer_norm 2 dims", [ns2](auto& v) { return layer_norm(v[0], ns2); }, {x}, kc::rtol_for(dt) * 10,
            kc::atol_for(dt) * 10);
      }
}

TEST_CASE("cuda nn: layer_norm gradients with weight or bias alone, and without rows") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (const Shape& s : std::vector<Shape>{{7, 33}, {0, 33}, {600, 40}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(shape_str(s));
      Pair x = kc::make_pair(kc::layouts()[0], s, dt, 1, -3, 5);
      const Shape ns{s.back()};
      Pair w = kc::make_pair(kc::layouts()[0], ns, dt, 2), b = kc::make_pair(kc::layouts()[0], ns, dt, 3);
      kc::check_grads(
          "layer_norm weight", [ns](auto& v) { return layer_norm(v[0], ns, v[1]); }, {x, w}, kc::rtol_for(dt) * 100,
          kc::atol_for(dt) * 10);
      kc::check_grads(
          "layer_norm bias", [ns](auto& v) { return layer_norm(v[0], ns, Tensor(), v[1]); }, {x, b},
          kc::rtol_for(dt) * 100, kc::atol_for(dt) * 10);
    }
}

TEST_CASE("cuda nn: rms_norm values and gradients match the CPU, with and without weight") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats) {
    for (const auto& l : kc::layouts())
      for (const Shape& s : std::vector<Shape>{{4, 9}, {3, 5, 64}, {2, 2, 4097}}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(l.name);
        CAPTURE(shape_str(s));
        Pair x = kc::make_pair(l, s, dt, 1, -3, 5);
        const Shape ns{s.back()}, ns2{s[s.size() - 2], s.back()};
        Pair w = kc::make_pair(kc::layouts()[0], ns, dt, 2);
        kc::check_op(
            "rms_norm", [ns](auto& v) { return rms_norm(v[0], ns); }, {x}, kc::rtol_for(dt) * 10,
            kc::atol_for(dt) * 10);
        kc::check_grads(
            "rms_norm weight", [ns](auto& v) { return rms_norm(v[0], ns, v[1], 1e-5); }, {x, w}, kc::rtol_for(dt) * 100,
            kc::atol_for(dt) * 10);
        kc::check_grads(
            "rms_norm 2 dims", [ns2](auto& v) { return rms_norm(v[0], ns2); }, {x}, kc::rtol_for(dt) * 100,
            kc::atol_for(dt) * 10);
      }
    // Without rows (the weight's gradient is 0), and enough rows for several column chunks.
    for (const Shape& s : std::vector<Shape>{{0, 33}, {600, 40}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(shape_str(s));
      Pair x = kc::make_pair(kc::layouts()[0], s, dt, 1, -3, 5);
      Pair w = kc::make_pair(kc::layouts()[0], {s.back()}, dt, 2);
      kc::check_grads(
          "rms_norm weight", [](auto& v) { return rms_norm(v[0], {v[0].size(-1)}, v[1]); }, {x, w},
          kc::rtol_for(dt) * 100, kc::atol_for(dt) * 10);
    }
  }
}

TEST_CASE("cuda nn: fused backward kernels in bfloat16/float16 match the CPU's") {
  KILN_CUDA_OR_SKIP();
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"gelu", [](auto& v) { return gelu(v[0]); }},
      {"gelu_tanh", [](auto& v) { return gelu(v[0], "tanh"); }},
      {"silu", [](auto& v) { return silu(v[0]); }},
      {"sigmoid", [](auto& v) { return sigmoid(v[0]); }},
      {"tanh", [](auto& v) { return kiln::tanh(v[0]); }},
      {"relu", [](auto& v) { return relu(v[0]); }},
      {"layer_norm", [](auto& v) { return layer_norm(v[0], {v[0].size(-1)}, v[1], v[2]); }},
      {"rms_norm", [](auto& v) { return rms_norm(v[0], {v[0].size(-1)}, v[1]); }},
  };
  for (DType dt : {kBFloat16, kFloat16})
    for (const auto& l : kc::layouts()) {
      CAPTURE(dtype_name(dt));
      CAPTURE(l.name);
      // Both compute in float32 and round once: at most an ulp apart (different math libraries).
      const double eps = dt == kBFloat16 ? 0.0078125 : 0.0009765625;
      Pair x = kc::make_pair(l, {6, 40}, dt, 4);
      Pair w = kc::make_pair(kc::layouts()[0], {40}, dt, 5), b = kc::make_pair(kc::layouts()[0], {40}, dt, 6);
      for (const auto& [name, fn] : ops) kc::check_grads(name, fn, {x, w, b}, eps, eps);
    }
}

TEST_CASE("cuda nn: cross_entropy and mse_loss values and gradients match the CPU") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats) {
    CAPTURE(dtype_name(dt));
    Pair logits = kc::make_pair(kc::layouts()[1], {6, 5}, dt, 1, -4, 4);
    Tensor t = tensor({0, 4, -100, 2, 2, 1}, TensorOptions(kInt64));
    Pair tgt{t, t.to(kGpu)};
    for (double ls : {0.0, 0.1})
      for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
        CAPTURE(ls);
        CrossEntropyOptions o = CrossEntropyOptions().label_smoothing(ls).reduction(r);
        kc::check_grads(
            "cross_entropy", [o](auto& v) { return cross_entropy(v[0], v[1], o); }, {logits, tgt},
            kc::rtol_for(dt) * 10, kc::atol_for(dt));
        kc::check_op(
            "cross_entropy", [o](auto& v) { return cross_entropy(v[0], v[1], o); }, {logits, tgt},
            kc::rtol_for(dt) * 10, kc::atol_for(dt));
      }
    Pair l3 = kc::make_pair(kc::layouts()[0], {2, 5, 3}, dt, 2);
    Generator g(1);
    Tensor t3 = randint(0, 5, {2, 3}, kInt64, &g);
    Pair tgt3{t3, t3.to(kGpu)};
    kc::check_grads(
        "cross_entropy (N, C, d)", [](auto& v) { return cross_entropy(v[0], v[1]); }, {l3, tgt3}, kc::rtol_for(dt) * 10,
        kc::atol_for(dt));
    Pair a = kc::make_pair(kc::layouts()[2], {4, 7}, dt, 3), b = kc::make_pair(kc::layouts()[0], {4, 7}, dt, 4);
    kc::check_grads(
        "mse_loss", [](auto& v) { return mse_loss(v[0], v[1]); }, {a, b}, kc::rtol_for(dt), kc::atol_for(dt));
    CHECK_KILN_ERROR(cross_entropy(logits.gpu, tensor({0, 5, 1, 1, 1, 1}).to(kGpu)),
                     "[cross_entropy] target 5 is out of range for 5 classes");
  }
}

TEST_CASE("cuda nn: random draws are the CPU's numbers for the same generator state") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (std::int64_t n : {std::int64_t{1}, std::int64_t{7}, std::int64_t{4096 + 3}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(n);
      Generator gc(42), gg(42);
      kc::expect_match(rand({n}, TensorOptions(dt).device(kGpu), &gg), rand({n}, dt, &gc), 0, 0, "rand");
      // Box-Muller goes through log / cos / sin: CUDA's and libm's differ in the last bit at most.
      kc::expect_match(randn({n}, TensorOptions(dt).device(kGpu), &gg), randn({n}, dt, &gc),
                       dt == kFloat32 ? 1e-6 : 1e-14, dt == kFloat32 ? 1e-6 : 1e-14, "randn");
      kc::expect_match(randint(-5, 1000, {n}, TensorOptions(kInt64).device(kGpu), &gg),
                       randint(-5, 1000, {n}, kInt64, &gc), 0, 0, "randint");
      CHECK(gg.offset() == gc.offset());
    }
}

TEST_CASE("cuda nn: dropout keeps exactly the CPU's elements for the same seed") {
  KILN_CUDA_OR_SKIP();
  for (DType dt : kFloats)
    for (double p : {0.1, 0.5, 0.9}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(p);
      Generator gc(7), gg(7);
      Tensor xc = ones({3, 1001}, dt);
      Tensor dc = dropout(xc, p, true, &gc), dg = dropout(xc.to(kGpu), p, true, &gg);
      kc::expect_match(dg, dc, 0, 0, "dropout mask");
      const double kept = sum(dc != 0.0).item<double>() / double(xc.numel());
      CHECK(std::abs(kept - (1 - p)) < 0.05);
    }
}

TEST_CASE("cuda nn: every fused optimizer update matches the CPU step by step") {
  KILN_CUDA_OR_SKIP();
  using MakeOpt = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;
  const std::vector<std::pair<const char*, MakeOpt>> opts = {
      {"sgd momentum nesterov wd",
       [](auto p) {
         return std::make_unique<optim::SGD>(p, optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(1e-2));
       }},
      {"sgd dampening maximize",
       [](auto p) {
         return std::make_unique<optim::SGD>(p, optim::SGDOptions(0.1).momentum(0.5).dampening(0.3).maximize(true));
       }},
      {"adam amsgrad wd",
       [](auto p) {
         return std::make_unique<optim::Adam>(p, optim::AdamOptions(1e-2).amsgrad(true).weight_decay(0.1));
       }},
      {"adamw", [](auto p) { return std::make_unique<optim::AdamW>(p, optim::AdamWOptions(1e-2).weight_decay(0.1)); }},
      {"rmsprop centered momentum",
       [](auto p) {
         return std::make_unique<optim::RMSprop>(p, optim::RMSpropOptions(1e-2).momentum(0.5).centered(true));
       }},
      {"adagrad",
       [](auto p) { return std::make_unique<optim::Adagrad>(p, optim::AdagradOptions(1e-1).lr_decay(1e-2)); }},
      {"lion", [](auto p) { return std::make_unique<optim::Lion>(p, optim::LionOptions(1e-2).weight_decay(0.1)); }},
  };
  for (DType dt : kFloats)
    for (const auto& [name, make] : opts) {
      CAPTURE(dtype_name(dt));
      CAPTURE(name);
      Generator g(3);
      Tensor p0 = randn({37, 5}, dt, &g);
      Tensor pc = p0.clone().requires_grad_(), pg = p0.to(kGpu).requires_grad_();
      auto oc = make({pc}), og = make({pg});
      for (int step = 0; step < 4; ++step) {
        Tensor gr = randn({37, 5}, dt, &g);
        pc.set_grad(gr);
        pg.set_grad(gr.to(kGpu));
        oc->step();
        og->step();
      }
      kc::expect_match(pg, pc, dt == kFloat32 ? 1e-5 : 1e-12, dt == kFloat32 ? 1e-6 : 1e-13, name);
    }
}
