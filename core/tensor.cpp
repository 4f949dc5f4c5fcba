#include "tensor.hpp"

#include <cmath>
#include <cstring>
#include <fmt/format.h>

#include "backend.hpp"

namespace kiln {

namespace autograd {
bool grad_enabled();  // autograd/grad_mode.cpp: in-place writes must not corrupt a recorded graph
}

namespace {
void check_inplace(const Tensor& t, const char* op) {
  KILN_CHECK(!(t.requires_grad() && autograd::grad_enabled()), op,
             "in-place operation on a tensor of shape {} that requires grad; use the out-of-place op, or "
             "wrap the update in kiln::NoGradGuard (as optimizers do)",
             shape_str(t.shape()));
}
}  // namespace

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5) {
    char* end = nullptr;
    long i = std::strtol(s.c_str() + 5, &end, 10);
    if (*end == '\0' && i >= 0) return cuda(static_cast<int>(i));
  }
  throw_error("device", fmt::format("cannot parse device '{}' (expected cpu, cuda or cuda:N)", s));
}

TensorImpl& Tensor::impl() const {
  if (!impl_) throw_error("tensor", "operation on an undefined tensor");
  return *impl_;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (auto s : shape)
    KILN_CHECK(s >= 0, "empty", "negative dimension {} in shape {}", s, shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  Backend& be = backend_for(device, "empty");
  impl->storage = std::make_shared<Storage>(static_cast<std::size_t>(numel_of(shape)) * itemsize(dtype), be.allocator());
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::make_view(const Tensor& base, Shape shape, Strides strides, std::int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(data, static_cast<std::size_t>(numel_of(shape)) * itemsize(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

std::int64_t Tensor::size(std::int64_t d) const { return shape()[normalize_dim(d, dim(), "size")]; }
std::int64_t Tensor::stride(std::int64_t d) const { return strides()[normalize_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  const auto& sh = shape();
  const auto& st = strides();
  std::int64_t expect = 1;
  for (std::size_t i = sh.size(); i-- > 0;) {
    if (sh[i] == 1) continue;
    if (st[i] != expect) return false;
    expect *= sh[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data) + impl().offset * static_cast<std::int64_t>(itemsize(dtype()));
}

template <typename T>
T* Tensor::data_ptr() const {
  KILN_CHECK(dtype_of<T>::value == dtype(), "data_ptr", "requested {} data from a {} tensor",
             dtype_name(dtype_of<T>::value), dtype_name(dtype()));
  return static_cast<T*>(raw_data());
}
template bool* Tensor::data_ptr<bool>() const;
template std::int64_t* Tensor::data_ptr<std::int64_t>() const;
template float* Tensor::data_ptr<float>() const;
template double* Tensor::data_ptr<double>() const;

namespace {
// A contiguous host copy of t converted to dtype (no autograd).
Tensor host_contiguous(const Tensor& t, DType dtype) {
  if (t.device().is_cpu() && t.dtype() == dtype && t.is_contiguous()) return t;
  Tensor src = t;
  if (!t.device().is_cpu()) {
    Backend& be = backend_for(t.device(), "to");
    Tensor dev = Tensor::empty(t.shape(), t.dtype(), t.device());
    be.copy(dev, t);
    Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::cpu());
    be.copy_to_host(host.raw_data(), dev);
    src = host;
  }
  Tensor out = Tensor::empty(t.shape(), dtype, Device::cpu());
  backend_for(Device::cpu()).copy(out, src);
  return out;
}
}  // namespace

template <typename T>
T Tensor::item() const {
  KILN_CHECK(numel() == 1, "item", "a tensor with {} elements (shape {}) cannot be converted to a scalar", numel(),
             shape_str(shape()));
  Tensor h = host_contiguous(*this, dtype_of<T>::value);
  return *static_cast<const T*>(h.raw_data());
}
template bool Tensor::item<bool>() const;
template std::int64_t Tensor::item<std::int64_t>() const;
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor h = host_contiguous(*this, dtype_of<T>::value);
  const T* p = static_cast<const T*>(h.raw_data());
  return std::vector<T>(p, p + h.numel());
}
template std::vector<bool> Tensor::to_vector<bool>() const;
template std::vector<std::int64_t> Tensor::to_vector<std::int64_t>() const;
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;

// ---- in-place ----

Tensor& Tensor::fill_(const Scalar& v) {
  check_inplace(*this, "fill_");
  backend_for(device(), "fill_").fill(*this, v);
  bump_version();
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  KILN_CHECK(src.defined(), "copy_", "source tensor is undefined");
  check_inplace(*this, "copy_");
  Tensor s = src;
  if (src.device() != device()) {
    Tensor h = host_contiguous(src, src.dtype());  // to host first
    if (device().is_cpu()) {
      s = h;
    } else {
      Tensor d = Tensor::empty(h.shape(), h.dtype(), device());
      backend_for(device(), "copy_").copy_from_host(d, h.raw_data());
      s = d;
    }
  }
  Strides st = broadcast_strides(s.shape(), s.strides(), shape(), "copy_");
  backend_for(device(), "copy_").copy(*this, make_view(s, shape(), st, s.offset()));
  bump_version();
  return *this;
}

namespace {
void inplace_binary(Tensor& self, BinaryOp op, const Tensor& other, const char* name) {
  check_inplace(self, name);
  KILN_CHECK(other.device() == self.device(), name, "expected both tensors on {}, got {}", self.device().str(),
             other.device().str());
  KILN_CHECK(promote_types(self.dtype(), other.dtype()) == self.dtype(), name,
             "result type {} cannot be stored in a {} tensor in place", dtype_name(promote_types(self.dtype(), other.dtype())),
             dtype_name(self.dtype()));
  Shape b = broadcast_shapes(self.shape(), other.shape(), name);
  KILN_CHECK(b == self.shape(), name, "cannot broadcast {} into the in-place target of shape {}",
             shape_str(other.shape()), shape_str(self.shape()));
  Tensor o = other;
  Backend& be = backend_for(self.device(), name);
  if (o.dtype() != self.dtype()) {
    Tensor c = Tensor::empty(o.shape(), self.dtype(), o.device());
    be.copy(c, o);
    o = c;
  }
  o = Tensor::make_view(o, self.shape(), broadcast_strides(o.shape(), o.strides(), self.shape(), name), o.offset());
  be.binary(op, self, o, self);
  self.bump_version();
}
}  // namespace

Tensor& Tensor::add_(const Tensor& other, const Scalar& alpha) {
  if (alpha.to_double() == 1.0) {
    inplace_binary(*this, BinaryOp::Add, other, "add_");
  } else {
    Tensor scaled = Tensor::empty(other.shape(), dtype(), other.device());
    Backend& be = backend_for(device(), "add_");
    be.copy(scaled, other);
    Tensor a = full({}, alpha, TensorOptions(dtype()).device(device()));
    be.binary(BinaryOp::Mul, scaled, make_view(a, scaled.shape(), Strides(scaled.dim(), 0), 0), scaled);
    inplace_binary(*this, BinaryOp::Add, scaled, "add_");
  }
  return *this;
}
Tensor& Tensor::mul_(const Tensor& other) {
  inplace_binary(*this, BinaryOp::Mul, other, "mul_");
  return *this;
}
Tensor& Tensor::mul_(const Scalar& s) { return mul_(full({}, s, TensorOptions(dtype()).device(device()))); }
Tensor& Tensor::div_(const Scalar& s) {
  inplace_binary(*this, BinaryOp::Div, full({}, s, TensorOptions(dtype()).device(device())), "div_");
  return *this;
}
Tensor& Tensor::add_(const Scalar& s) { return add_(full({}, s, TensorOptions(dtype()).device(device()))); }

// ---- factories ----

Tensor empty(const Shape& shape, TensorOptions opts) {
  Tensor t = Tensor::empty(shape, opts.dtype(), opts.device());
  if (opts.requires_grad()) t.requires_grad_(true);
  return t;
}
Tensor full(const Shape& shape, const Scalar& value, TensorOptions opts) {
  Tensor t = Tensor::empty(shape, opts.dtype(), opts.device());
  backend_for(t.device(), "full").fill(t, value);
  if (opts.requires_grad()) t.requires_grad_(true);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full(shape, 1, opts); }
Tensor scalar_tensor(const Scalar& v, TensorOptions opts) { return full({}, v, opts); }

namespace {
TensorOptions like(const Tensor& t) { return TensorOptions(t.dtype()).device(t.device()); }

template <typename T>
Tensor from_host(const T* data, const Shape& shape, TensorOptions opts) {
  Tensor h = Tensor::from_blob(const_cast<T*>(data), shape, dtype_of<T>::value);
  Tensor out = Tensor::empty(shape, opts.dtype(), opts.device());
  out.copy_(h);  // converts dtype and moves to the device
  out.storage()->version = 0;
  if (opts.requires_grad()) out.requires_grad_(true);
  return out;
}
}  // namespace

Tensor empty_like(const Tensor& t) { return empty(t.shape(), like(t)); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), like(t)); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), like(t)); }
Tensor full_like(const Tensor& t, const Scalar& v) { return full(t.shape(), v, like(t)); }
Tensor empty_like(const Tensor& t, TensorOptions o) { return empty(t.shape(), o); }
Tensor zeros_like(const Tensor& t, TensorOptions o) { return zeros(t.shape(), o); }
Tensor ones_like(const Tensor& t, TensorOptions o) { return ones(t.shape(), o); }
Tensor full_like(const Tensor& t, const Scalar& v, TensorOptions o) { return full(t.shape(), v, o); }

template <typename T>
Tensor tensor(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  Shape s = shape.empty() && values.size() != 1 ? Shape{static_cast<std::int64_t>(values.size())} : shape;
  if (shape.empty() && values.size() == 1) s = Shape{1};
  KILN_CHECK(numel_of(s) == static_cast<std::int64_t>(values.size()), "tensor",
             "{} values cannot fill shape {} ({} elements)", values.size(), shape_str(s), numel_of(s));
  if constexpr (std::is_same_v<T, bool>) {
    std::vector<unsigned char> tmp(values.begin(), values.end());
    Tensor h = Tensor::from_blob(tmp.data(), s, kBool);
    Tensor out = Tensor::empty(s, opts.dtype(), opts.device());
    out.copy_(h);
    out.storage()->version = 0;
    if (opts.requires_grad()) out.requires_grad_(true);
    return out;
  } else {
    return from_host(values.data(), s, opts);
  }
}
template Tensor tensor<bool>(const std::vector<bool>&, const Shape&, TensorOptions);
template Tensor tensor<std::int64_t>(const std::vector<std::int64_t>&, const Shape&, TensorOptions);
template Tensor tensor<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor tensor<double>(const std::vector<double>&, const Shape&, TensorOptions);

Tensor tensor(std::initializer_list<double> v, TensorOptions o) { return tensor(std::vector<double>(v), {}, o); }
Tensor tensor(std::initializer_list<float> v, TensorOptions o) { return tensor(std::vector<float>(v), {}, o); }
Tensor tensor(std::initializer_list<std::int64_t> v, TensorOptions o) {
  return tensor(std::vector<std::int64_t>(v), {}, o);
}
Tensor tensor(std::initializer_list<int> v, TensorOptions o) {
  return tensor(std::vector<std::int64_t>(v.begin(), v.end()), {}, o);
}
Tensor tensor(std::initializer_list<bool> v, TensorOptions o) { return tensor(std::vector<bool>(v), {}, o); }

Tensor arange(const Scalar& end) { return arange(0, end, 1); }
Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step) {
  bool fl = start.is_floating() || end.is_floating() || step.is_floating();
  return arange(start, end, step, TensorOptions(fl ? kFloat32 : kInt64));
}
Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step, TensorOptions opts) {
  double s = start.to_double(), e = end.to_double(), st = step.to_double();
  KILN_CHECK(st != 0.0 && std::isfinite(st), "arange", "step must be finite and nonzero, got {}", st);
  KILN_CHECK(std::isfinite(s) && std::isfinite(e), "arange", "start {} and end {} must be finite", s, e);
  KILN_CHECK((e - s) / st >= 0, "arange", "start {} cannot reach end {} with step {}", s, e, st);
  std::int64_t n = static_cast<std::int64_t>(std::ceil((e - s) / st));
  std::vector<double> v(static_cast<std::size_t>(n));
  bool ints = !start.is_floating() && !step.is_floating();
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = ints ? static_cast<double>(start.to_int() + i * step.to_int()) : s + static_cast<double>(i) * st;
  if (ints && opts.dtype() == kInt64) {
    std::vector<std::int64_t> iv(v.size());
    for (std::int64_t i = 0; i < n; ++i) iv[i] = start.to_int() + i * step.to_int();
    return from_host(iv.data(), {n}, opts);
  }
  return from_host(v.data(), {n}, opts);
}

Tensor linspace(double start, double end, std::int64_t steps, TensorOptions opts) {
  KILN_CHECK(steps >= 0, "linspace", "number of steps must be >= 0, got {}", steps);
  std::vector<double> v(static_cast<std::size_t>(steps));
  double step = steps > 1 ? (end - start) / static_cast<double>(steps - 1) : 0.0;
  // Symmetric evaluation keeps both end points exact.
  for (std::int64_t i = 0; i < steps; ++i)
    v[i] = i < steps / 2 ? start + step * static_cast<double>(i) : end - step * static_cast<double>(steps - 1 - i);
  return from_host(v.data(), {steps}, opts);
}

Tensor eye(std::int64_t n, std::int64_t m, TensorOptions opts) {
  if (m < 0) m = n;
  KILN_CHECK(n >= 0, "eye", "n must be >= 0, got {}", n);
  std::vector<double> v(static_cast<std::size_t>(n * m), 0.0);
  for (std::int64_t i = 0; i < std::min(n, m); ++i) v[i * m + i] = 1.0;
  return from_host(v.data(), {n, m}, opts);
}

// ---- random ----
namespace {
Tensor random_tensor(const Shape& shape, TensorOptions opts, Generator* gen, RandomSpec spec, const char* op) {
  Tensor t = Tensor::empty(shape, opts.dtype(), opts.device());
  Generator& g = gen ? *gen : default_generator();
  spec.seed = g.seed();
  spec.offset = g.reserve(static_cast<std::uint64_t>(t.numel()));
  backend_for(t.device(), op).random(t, spec);
  if (opts.requires_grad()) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(is_floating(opts.dtype()), "rand", "dtype must be floating point, got {}", dtype_name(opts.dtype()));
  return random_tensor(shape, opts, gen, {RandomSpec::Uniform, 0.0, 1.0}, "rand");
}
Tensor randn(const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(is_floating(opts.dtype()), "randn", "dtype must be floating point, got {}", dtype_name(opts.dtype()));
  return random_tensor(shape, opts, gen, {RandomSpec::Normal, 0.0, 1.0}, "randn");
}
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(low < high, "randint", "low ({}) must be less than high ({})", low, high);
  KILN_CHECK(opts.dtype() != kBool, "randint", "dtype bool is not supported");
  return random_tensor(shape, opts, gen,
                       {RandomSpec::Int, static_cast<double>(low), static_cast<double>(high)}, "randint");
}
Tensor rand_like(const Tensor& t, Generator* gen) { return rand(t.shape(), like(t), gen); }
Tensor randn_like(const Tensor& t, Generator* gen) { return randn(t.shape(), like(t), gen); }
Tensor randint_like(const Tensor& t, std::int64_t low, std::int64_t high, Generator* gen) {
  return randint(low, high, t.shape(), like(t), gen);
}

// ---- backend registry ----
namespace {
Backend*& slot(DeviceType t) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(t)];
}
}  // namespace

namespace cpu {
Backend& cpu_backend();
}

void register_backend(DeviceType type, Backend* backend) { slot(type) = backend; }

Backend& backend_for(Device device, const char* op) {
  if (device.is_cpu()) return cpu::cpu_backend();
  Backend* b = slot(device.type);
  KILN_CHECK(b != nullptr, op, "device {} is not available: kiln was built without CUDA support (KILN_CUDA=OFF) "
             "or no GPU is present", device.str());
  return *b;
}

bool cuda_is_available() { return slot(DeviceType::CUDA) != nullptr; }

}  // namespace kiln
