// kiln::autocast: which dtype each listed op runs in (values against the op on explicitly cast
// inputs), the weight-cast cache, nesting and enabled=false, NoGradGuard, thread locality,
// gradient dtypes, float16 with GradScaler, and the errors.
#include <optional>
#include <thread>

#include "test_util.hpp"

using namespace kiln;

namespace {

const DType kLow[] = {kBFloat16, kFloat16};

Tensor rnd(const Shape& s, std::uint64_t seed, bool grad = false) {
  Generator g(seed);
  Tensor t = randn(s, kFloat32, &g);
  return grad ? t.requires_grad_() : t;
}

// The same op run outside autocast on inputs already in `dtype` gives exactly autocast's result.
void same(const Tensor& got, const Tensor& want, DType dtype) {
  CHECK(got.dtype() == dtype);
  CHECK(want.dtype() == dtype);
  CHECK(equal(got, want));
}

// Identity whose backward records whether autocast was on while it ran.
struct Probe : autograd::Function<Probe> {
  static inline bool autocast_seen = true;
  static const char* name() { return "probe"; }
  static Tensor forward(autograd::Context&, const Tensor& x) { return x * 1.0; }
  static std::vector<Tensor> backward(autograd::Context&, const std::vector<Tensor>& g) {
    autocast_seen = is_autocast_enabled();
    return {g[0]};
  }
};

}  // namespace

TEST_CASE("autocast is off by default, thread-local, and leaves float32 ops alone when off") {
  CHECK_FALSE(is_autocast_enabled());
  CHECK_FALSE(is_autocast_enabled(DeviceType::CUDA));
  CHECK(matmul(rnd({2, 3}, 1), rnd({3, 4}, 2)).dtype() == kFloat32);
  auto mixed = autocast(kBFloat16);
  CHECK(is_autocast_enabled());
  CHECK(autocast_dtype() == kBFloat16);
  bool other_thread_on = true;
  DType other_dtype = kFloat32;
  std::thread t([&] {
    other_thread_on = is_autocast_enabled();
    other_dtype = matmul(rnd({2, 3}, 1), rnd({3, 4}, 2)).dtype();
  });
  t.join();
  CHECK_FALSE(other_thread_on);
  CHECK(other_dtype == kFloat32);
}

TEST_CASE("autocast runs matmul, linear and attention in the low-precision dtype") {
  for (DType low : kLow) {
    INFO("dtype " << dtype_name(low));
    Tensor a = rnd({2, 5, 8}, 1), b = rnd({8, 3}, 2), w = rnd({6, 8}, 3), bias = rnd({6}, 4);
    Tensor q = rnd({2, 2, 5, 4}, 5), k = rnd({2, 2, 7, 4}, 6), v = rnd({2, 2, 7, 4}, 7);
    Tensor mm, lin, att, att_ref, bmm;
    {
      auto mixed = autocast(low);
      mm = matmul(a, b);
      bmm = matmul(a, rnd({2, 8, 3}, 8));
      lin = linear(a, w, bias);
      att = scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true)).output;
      att_ref = scaled_dot_product_attention_reference(q, k, v, SdpaOptions().is_causal(true)).output;
    }
    same(mm, matmul(a.to(low), b.to(low)), low);
    same(bmm, matmul(a.to(low), rnd({2, 8, 3}, 8).to(low)), low);
    same(lin, linear(a.to(low), w.to(low), bias.to(low)), low);
    same(att, scaled_dot_product_attention(q.to(low), k.to(low), v.to(low), SdpaOptions().is_causal(true)).output, low);
    CHECK(att_ref.dtype() == low);
    // And close to float32 (inputs rounded to 8 or 11 significant bits, float32 accumulation).
    const double tol = low == kBFloat16 ? 0.05 : 0.01;
    CHECK(allclose(mm.to(kFloat32), matmul(a, b), tol, tol));
    CHECK(allclose(att.to(kFloat32), scaled_dot_product_attention(q, k, v, SdpaOptions().is_causal(true)).output, tol,
                   tol));
    // float64 is never lowered.
    auto mixed = autocast(low);
    CHECK(matmul(a.to(kFloat64), b.to(kFloat64)).dtype() == kFloat64);
  }
}

TEST_CASE("autocast runs MultiHeadAttention's projections in the low-precision dtype") {
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(16, 4));
  Tensor x = rnd({2, 5, 16}, 1);
  for (DType low : kLow) {
    auto mixed = autocast(low);
    Tensor y = mha(x);
    CHECK(y.dtype() == low);  // out_proj (a Linear) ran in `low`
    CHECK(mha->q_proj->weight.dtype() == kFloat32);
  }
}

TEST_CASE("autocast: MultiHeadAttention decodes with a KV cache made inside the region") {
  nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions(16, 4));
  Tensor x = rnd({2, 5, 16}, 1);
  nn::KVCache outside = mha->make_kv_cache(2, 5);
  auto mixed = autocast(kBFloat16);
  Tensor full = mha(x, nn::MhaForward().is_causal(true));
  nn::KVCache cache = mha->make_kv_cache(2, 5);
  CHECK(cache.dtype() == kBFloat16);  // what the projections produce
  std::vector<Tensor> steps;
  for (std::int64_t t = 0; t < 5; ++t)
    steps.push_back(mha(x.narrow(1, t, 1), nn::MhaForward().is_causal(true).cache(&cache)));
  Tensor decoded = cat(steps, 1);
  CHECK(decoded.dtype() == kBFloat16);
  CHECK(allclose(decoded.to(kFloat32), full.to(kFloat32), 0.02, 0.02));
  CHECK_KILN_ERROR(
      mha(x.narrow(1, 0, 1), nn::MhaForward().cache(&outside)),
      "the KV cache is float32 but the projected query is bfloat16 (under autocast: make the cache inside");
}

TEST_CASE("autocast runs softmax, norms, losses and reductions in float32") {
  for (DType low : kLow) {
    INFO("dtype " << dtype_name(low));
    Tensor x = rnd({4, 6}, 1).to(low), t = rnd({4, 6}, 2).to(low);
    Tensor wn = rnd({6}, 3).to(low), bn = rnd({6}, 4).to(low);
    Tensor target = tensor(std::vector<std::int64_t>{0, 5, 2, 3}, {4});
    const Tensor xf = x.to(kFloat32), tf = t.to(kFloat32), wf = wn.to(kFloat32), bf = bn.to(kFloat32);
    auto mixed = autocast(low);
    same(softmax(x, 1), softmax(xf, 1), kFloat32);
    same(log_softmax(x, 0), log_softmax(xf, 0), kFloat32);
    same(layer_norm(x, {6}, wn, bn), layer_norm(xf, {6}, wf, bf), kFloat32);
    same(nn::functional::rms_norm(x, {6}, wn), nn::functional::rms_norm(xf, {6}, wf), kFloat32);
    same(cross_entropy(x, target), cross_entropy(xf, target), kFloat32);
    same(mse_loss(x, t), mse_loss(xf, tf), kFloat32);
    same(sum(x), sum(xf), kFloat32);
    same(mean(x, {1}), mean(xf, {1}), kFloat32);
    same(var(x, {0}), var(xf, {0}), kFloat32);
    same(kiln::std(x), kiln::std(xf), kFloat32);
    same(logsumexp(x, {1}), logsumexp(xf, {1}), kFloat32);
    // Ops not on either list keep their inputs' dtype; mixed inputs promote.
    CHECK(relu(x).dtype() == low);
    CHECK(add(x, xf).dtype() == kFloat32);
    CHECK(sum(tensor(std::vector<std::int64_t>{1, 2}, {2})).dtype() == kInt64);
  }
}

TEST_CASE("autocast casts a weight once per region, reuses it, drops it at exit, and grads reach it") {
  Tensor w = rnd({4, 4}, 1, true), x = rnd({3, 4}, 2);
  Tensor loss;
  {
    auto mixed = autocast(kBFloat16);
    CHECK(autocast_cached_casts() == 0);
    Tensor c1 = autocast_input(w, AutocastPolicy::LowPrecision);
    Tensor c2 = autocast_input(w, AutocastPolicy::LowPrecision);
    CHECK(c1.is_same(c2));
    Tensor h = matmul(matmul(matmul(x, w), w), w);  // w used three times
    CHECK(autocast_cached_casts() == 1);
    CHECK(h.dtype() == kBFloat16);
    // Tensors that are not weights (x, h) are cast afresh every time: nothing more is cached.
    CHECK_FALSE(
        autocast_input(x, AutocastPolicy::LowPrecision).is_same(autocast_input(x, AutocastPolicy::LowPrecision)));
    CHECK(autocast_cached_casts() == 1);
    loss = sum(h);
  }
  CHECK(autocast_cached_casts() == 0);
  loss.backward();
  REQUIRE(w.grad().defined());
  CHECK(w.grad().dtype() == kFloat32);
  // The three uses' gradients accumulate through the one cast: compare with the same graph
  // built by hand from one explicit cast.
  Tensor w2 = w.detach().clone().requires_grad_();
  Tensor wl = w2.to(kBFloat16), xl = x.to(kBFloat16);
  sum(matmul(matmul(matmul(xl, wl), wl), wl)).backward();
  CHECK(equal(w.grad(), w2.grad()));
}

TEST_CASE("autocast's cache follows in-place updates and survives backward inside the region") {
  Tensor w = rnd({3, 3}, 1, true), x = rnd({2, 3}, 2);
  auto mixed = autocast(kBFloat16);
  Tensor c1 = autocast_input(w, AutocastPolicy::LowPrecision);
  {
    NoGradGuard ng;
    w.mul_(2.0);  // an optimizer step inside the region
  }
  Tensor c2 = autocast_input(w, AutocastPolicy::LowPrecision);
  CHECK_FALSE(c2.is_same(c1));
  CHECK(equal(c2, w.detach().to(kBFloat16)));
  // Two forward/backward rounds in one region (gradient accumulation): the second builds a fresh
  // cast because the first backward freed the old one's graph node.
  sum(matmul(x, w)).backward();
  Tensor g1 = w.grad().clone();
  sum(matmul(x, w)).backward();
  CHECK(equal(w.grad(), g1 * 2.0));
}

TEST_CASE("autocast nests, enabled=false turns it off inside, the outer setting returns") {
  Tensor a = rnd({2, 3}, 1), b = rnd({3, 2}, 2), w = rnd({3, 2}, 3, true);
  auto outer = autocast(kBFloat16);
  CHECK(matmul(a, b).dtype() == kBFloat16);
  autocast_input(w, AutocastPolicy::LowPrecision);
  {
    auto inner = autocast(kFloat16);
    CHECK(autocast_dtype() == kFloat16);
    CHECK(matmul(a, b).dtype() == kFloat16);
    {
      auto off = autocast(kBFloat16, false);
      CHECK_FALSE(is_autocast_enabled());
      CHECK(matmul(a, b).dtype() == kFloat32);
      CHECK(softmax(b.to(kBFloat16), 0).dtype() == kBFloat16);  // no float32 policy either
    }
    CHECK(matmul(a, b).dtype() == kFloat16);
  }
  CHECK(autocast_dtype() == kBFloat16);
  CHECK(matmul(a, b).dtype() == kBFloat16);
  CHECK(autocast_cached_casts() >= 1);  // inner guards ending keep the outer region's casts
}

TEST_CASE("autocast guards ended out of creation order leave the state of the guards still alive") {
  Tensor a = rnd({2, 3}, 1), b = rnd({3, 2}, 2);
  std::optional<AutocastGuard> outer, inner, off;
  outer.emplace(DeviceType::CPU, kBFloat16, true);
  inner.emplace(DeviceType::CPU, kFloat16, true);
  outer.reset();  // the older guard ends first: the newer one still decides
  CHECK(is_autocast_enabled());
  CHECK(autocast_dtype() == kFloat16);
  CHECK(matmul(a, b).dtype() == kFloat16);
  inner.reset();
  CHECK_FALSE(is_autocast_enabled());  // was left on when each guard restored what it had seen
  CHECK(matmul(a, b).dtype() == kFloat32);
  CHECK(autocast_cached_casts() == 0);
  outer.emplace(DeviceType::CPU, kBFloat16, true);
  off.emplace(DeviceType::CPU, kBFloat16, false);
  inner.emplace(DeviceType::CPU, kFloat16, true);
  off.reset();  // the enabling guard made after it still rules
  CHECK(autocast_dtype() == kFloat16);
  inner.reset();
  CHECK(autocast_dtype() == kBFloat16);
  CHECK(is_autocast_enabled());
  outer.reset();
  CHECK_FALSE(is_autocast_enabled());
}

TEST_CASE(
    "autocast under NoGradGuard gives low-precision results without a graph, and later grad-mode uses still get "
    "gradients") {
  Tensor w = rnd({4, 2}, 1, true), x = rnd({3, 4}, 2);
  auto mixed = autocast(kBFloat16);
  Tensor y0;
  {
    NoGradGuard ng;
    y0 = matmul(x, w);
    CHECK(y0.dtype() == kBFloat16);
    CHECK_FALSE(y0.requires_grad());
  }
  Tensor y1 = matmul(x, w);  // must not reuse the graph-less cast made under NoGradGuard
  CHECK(y1.requires_grad());
  CHECK(equal(y0, y1.detach()));
  sum(y1).backward();
  REQUIRE(w.grad().defined());
  CHECK(w.grad().dtype() == kFloat32);
}

TEST_CASE("autocast: backward gives every parameter and input a gradient of its own dtype") {
  for (DType low : kLow) {
    INFO("dtype " << dtype_name(low));
    manual_seed(4);
    nn::Linear fc1(8, 16), fc2(16, 4);
    nn::LayerNorm ln(nn::LayerNormOptions({16}));
    Tensor x = rnd({5, 8}, 1, true);
    Tensor target = tensor(std::vector<std::int64_t>{0, 1, 2, 3, 0}, {5});
    Tensor loss;
    {
      auto mixed = autocast(low);
      loss = cross_entropy(fc2(gelu(ln(fc1(x)))), target);
      loss.backward();  // inside the region too: backward runs with autocast off
    }
    CHECK(loss.dtype() == kFloat32);
    CHECK(x.grad().dtype() == kFloat32);
    for (auto* m :
         {static_cast<nn::Module*>(fc1.get()), static_cast<nn::Module*>(fc2.get()), static_cast<nn::Module*>(ln.get())})
      for (const Tensor& p : m->parameters()) {
        REQUIRE(p.grad().defined());
        CHECK(p.grad().dtype() == kFloat32);
      }
    // Gradients agree with float32 training to the low precision's accuracy.
    Tensor g_low = fc1->weight.grad().clone();
    fc1->zero_grad(), fc2->zero_grad(), ln->zero_grad();
    cross_entropy(fc2(gelu(ln(fc1(x)))), target).backward();
    const double tol = low == kBFloat16 ? 0.05 : 0.01;
    CHECK(allclose(g_low, fc1->weight.grad(), tol, tol * amax(abs(fc1->weight.grad())).item<double>()));
  }
}

TEST_CASE("autocast is off while backward runs, even when backward is called inside the region") {
  Tensor x = rnd({3}, 1, true);
  auto mixed = autocast(kBFloat16);
  Probe::autocast_seen = true;
  sum(Probe::apply(x)).backward();
  CHECK_FALSE(Probe::autocast_seen);
  CHECK(is_autocast_enabled());  // and on again afterwards
}

TEST_CASE("autocast float16 with GradScaler: gradients that underflow float16 survive scaling") {
  Tensor w = rnd({4, 3}, 1, true), x = rnd({6, 4}, 2);
  auto tiny_loss = [&] {
    auto mixed = autocast(kFloat16);
    return mul(sum(matmul(x, w)), full({}, 1e-8));  // d loss / d y = 1e-8: below float16's smallest step
  };
  tiny_loss().backward();
  CHECK(amax(abs(w.grad())).item<double>() == 0.0);  // lost without scaling
  w.set_grad(Tensor());
  optim::SGD opt({w}, optim::SGDOptions(1.0));
  amp::GradScaler scaler;
  scaler.scale(tiny_loss()).backward();
  scaler.unscale_(opt);
  // float32 reference: d/dw sum(x w) * 1e-8 = 1e-8 * x^T 1.
  Tensor want = mul(sum(x, {0}), full({}, 1e-8)).unsqueeze(1).expand({4, 3});
  CHECK(allclose(w.grad(), want, 0.01, 1e-12));
}

TEST_CASE("autocast errors: dtypes that are not low precision, a device without a backend") {
  CHECK_KILN_ERROR(autocast(kFloat32), "[autocast] dtype float32 is not a low-precision type");
  CHECK_KILN_ERROR(autocast(kInt64), "dtype int64 is not a low-precision type");
  CHECK_FALSE(is_autocast_enabled());        // a failed guard leaves nothing behind
  { auto off = autocast(kFloat32, false); }  // disabled: the dtype is not used
  if (!cuda_is_available())
    CHECK_KILN_ERROR(autocast(Device::cuda(), kBFloat16), "[autocast] bfloat16 on cuda: no CUDA device");
}
