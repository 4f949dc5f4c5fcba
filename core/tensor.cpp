#include "tensor.hpp"

#include <fmt/format.h>
#include <cmath>
#include <cstring>
#include <limits>

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

// `t op= s` must keep t's dtype: no silent truncation of a float scalar into an integer
// tensor, no widening of a bool tensor; true division (`true_div`) of integers gives floats.
void check_scalar_fits(const Tensor& t, const Scalar& s, const char* op, bool true_div = false) {
  DType r = result_type_with_scalar(t.dtype(), s.kind());
  if (true_div && !is_floating(r)) r = kFloat32;
  KILN_CHECK(r == t.dtype(), op, "result type {} cannot be stored in a {} tensor in place", dtype_name(r),
             dtype_name(t.dtype()));
}

// Writing through a broadcast view (a stride-0 dim of size > 1) would hit one element several
// times, with a result that depends on the loop order and thread split. A view with no elements
// writes nothing (PyTorch accepts it too).
void check_no_internal_overlap(const Tensor& t, const char* op) {
  if (t.numel() == 0) return;
  for (std::size_t d = 0; d < t.shape().size(); ++d)
    KILN_CHECK(t.strides()[d] != 0 || t.shape()[d] <= 1, op,
               "the in-place target of shape {} and strides {} has several elements at one memory location "
               "(a broadcast view); clone() it first",
               shape_str(t.shape()), shape_str(t.strides()));
}

// True when `src` reads memory that an elementwise write to `dst` changes, other than each
// element itself (x.copy_(x.t()), a shifted slice): such a source is read through a copy first.
bool overlaps(const Tensor& dst, const Tensor& src) {
  if (dst.storage() != src.storage() || dst.numel() == 0 || src.numel() == 0) return false;
  if (dst.offset() == src.offset() && dst.shape() == src.shape() && dst.strides() == src.strides() &&
      dst.dtype() == src.dtype())
    return false;
  auto bytes = [](const Tensor& t) {  // [first, last] byte touched
    std::int64_t lo = t.offset(), hi = t.offset();
    for (std::size_t d = 0; d < t.shape().size(); ++d) {
      std::int64_t span = (t.shape()[d] - 1) * t.strides()[d];
      (span > 0 ? hi : lo) += span;
    }
    const auto isz = static_cast<std::int64_t>(itemsize(t.dtype()));
    return std::pair<std::int64_t, std::int64_t>{lo * isz, (hi + 1) * isz - 1};
  };
  auto [a0, a1] = bytes(dst);
  auto [b0, b1] = bytes(src);
  return a0 <= b1 && b0 <= a1;
}

// Checks a factory's shape and device, naming the factory, then allocates.
Tensor alloc(const Shape& shape, DType dtype, Device device, const char* op) {
  checked_nbytes(shape, itemsize(dtype), op);
  backend_for(device, op);
  try {
    return Tensor::empty(shape, dtype, device);
  } catch (const Error& e) {
    // The allocator names itself ("[empty] cannot allocate N bytes ..."): name the factory.
    const std::string what = e.what(), own = "[empty] ";
    if (what.rfind(own, 0) == 0 && std::string(op) != "empty")
      throw Error("[" + std::string(op) + "] " + what.substr(own.size()));
    throw;
  }
}
}  // namespace

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  // "cuda:" followed by decimal digits only (strtol alone would accept " 1", "+1" and overflow).
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() <= 14 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos) {
    long long i = std::stoll(s.substr(5));
    if (i <= std::numeric_limits<int>::max()) return cuda(static_cast<int>(i));
  }
  throw_error("device", fmt::format("cannot parse device '{}' (expected cpu, cuda or cuda:N)", s));
}

TensorImpl& Tensor::impl() const {
  if (!impl_) throw_error("tensor", "operation on an undefined tensor");
  return *impl_;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  const std::int64_t nbytes = checked_nbytes(shape, itemsize(dtype), "empty");
  auto impl = std::make_shared<TensorImpl>();
  Backend& be = backend_for(device, "empty");
  impl->storage = std::make_shared<Storage>(static_cast<std::size_t>(nbytes), be.allocator());
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
  const std::int64_t nbytes = checked_nbytes(shape, itemsize(dtype), "from_blob");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(data, static_cast<std::size_t>(nbytes), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

std::int64_t Tensor::size(std::int64_t d) const {
  KILN_CHECK(dim() > 0, "size", "a 0-D tensor has no dimensions (asked for dim {})", d);
  return shape()[normalize_dim(d, dim(), "size")];
}
std::int64_t Tensor::stride(std::int64_t d) const {
  KILN_CHECK(dim() > 0, "stride", "a 0-D tensor has no dimensions (asked for dim {})", d);
  return strides()[normalize_dim(d, dim(), "stride")];
}

bool Tensor::is_contiguous() const {
  const auto& sh = shape();
  const auto& st = strides();
  if (numel() == 0) return true;  // no element to misplace (as PyTorch)
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
template BFloat16* Tensor::data_ptr<BFloat16>() const;
template Half* Tensor::data_ptr<Half>() const;

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

bool Tensor::is_pinned() const {
  const Storage& s = *storage();
  return s.allocator && s.allocator->is_pinned();
}

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
template BFloat16 Tensor::item<BFloat16>() const;
template Half Tensor::item<Half>() const;

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
template std::vector<BFloat16> Tensor::to_vector<BFloat16>() const;
template std::vector<Half> Tensor::to_vector<Half>() const;

DType result_type(const Tensor& a, const Tensor& b) {
  const bool za = a.dim() == 0, zb = b.dim() == 0;
  if (za == zb) return promote_types(a.dtype(), b.dtype());
  const DType dim_type = za ? b.dtype() : a.dtype(), zero_type = za ? a.dtype() : b.dtype();
  return dtype_category(zero_type) > dtype_category(dim_type) ? promote_types(dim_type, zero_type) : dim_type;
}

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
  check_no_internal_overlap(*this, "copy_");
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
  Backend& be = backend_for(device(), "copy_");
  if (overlaps(*this, s)) {
    Tensor tmp = Tensor::empty(s.shape(), s.dtype(), s.device());
    be.copy(tmp, s);
    s = tmp;
    st = broadcast_strides(s.shape(), s.strides(), shape(), "copy_");
  }
  be.copy(*this, make_view(s, shape(), st, s.offset()));
  bump_version();
  return *this;
}

namespace {
void check_inplace_binary(const Tensor& self, const Tensor& other, const char* name) {
  check_inplace(self, name);
  check_no_internal_overlap(self, name);
  KILN_CHECK(other.defined(), name, "other tensor is undefined");
  KILN_CHECK(other.device() == self.device(), name, "expected both tensors on {}, got {}", self.device().str(),
             other.device().str());
  // As PyTorch: a result of a higher category than the target (float into int64, int64 into
  // bool) is refused; a wider one of the same category (float32 into bfloat16) rounds into it.
  const DType r = result_type(self, other);
  KILN_CHECK(can_cast(r, self.dtype()), name, "result type {} cannot be stored in a {} tensor in place", dtype_name(r),
             dtype_name(self.dtype()));
  Shape b = broadcast_shapes(self.shape(), other.shape(), name);
  KILN_CHECK(b == self.shape(), name, "cannot broadcast {} into the in-place target of shape {}",
             shape_str(other.shape()), shape_str(self.shape()));
}

void inplace_binary(Tensor& self, BinaryOp op, const Tensor& other, const char* name) {
  check_inplace_binary(self, other, name);
  DType r = result_type(self, other);
  // As out of place: a 16-bit tensor times / over a 0-dim tensor of another floating dtype (or a
  // number it cannot hold) is computed in float32 and rounded once.
  if ((op == BinaryOp::Mul || op == BinaryOp::Div) && is_reduced_float(r) && other.dim() == 0 &&
      is_floating(other.dtype()) && other.dtype() != r)
    r = kFloat32;
  Tensor o = other;
  Backend& be = backend_for(self.device(), name);
  if (o.dtype() != r || overlaps(self, o)) {
    Tensor c = Tensor::empty(o.shape(), r, o.device());
    be.copy(c, o);
    o = c;
  }
  o = Tensor::make_view(o, self.shape(), broadcast_strides(o.shape(), o.strides(), self.shape(), name), o.offset());
  if (r == self.dtype()) {
    be.binary(op, self, o, self);
  } else {  // computed in the wider type, rounded once into the target
    Tensor wide = Tensor::empty(self.shape(), r, self.device());
    be.copy(wide, self);
    be.binary(op, wide, o, wide);
    be.copy(self, wide);
  }
  self.bump_version();
}
}  // namespace

Tensor& Tensor::add_(const Tensor& other, const Scalar& alpha) {
  if (alpha.to_double() == 1.0) {
    inplace_binary(*this, BinaryOp::Add, other, "add_");
  } else {
    // Check before `other` is converted to this dtype, which would hide a float-into-int add.
    check_scalar_fits(*this, alpha, "add_");
    check_inplace_binary(*this, other, "add_");
    // A 16-bit sum is formed in float32 (alpha rounded to the dtype first, as PyTorch does).
    const DType r = result_type(*this, other), wide = is_reduced_float(r) ? kFloat32 : r;
    Tensor scaled = Tensor::empty(other.shape(), wide, other.device());
    Backend& be = backend_for(device(), "add_");
    be.copy(scaled, other);
    Tensor a = full({}, alpha, TensorOptions(r).device(device()));
    if (wide != r) {
      Tensor aw = Tensor::empty({}, wide, device());
      be.copy(aw, a);
      a = aw;
    }
    be.binary(BinaryOp::Mul, scaled, make_view(a, scaled.shape(), Strides(scaled.dim(), 0), 0), scaled);
    inplace_binary(*this, BinaryOp::Add, scaled, "add_");
  }
  return *this;
}
Tensor& Tensor::mul_(const Tensor& other) {
  inplace_binary(*this, BinaryOp::Mul, other, "mul_");
  return *this;
}
namespace {
// The 0-dim operand of `t *= s` / `t /= s`: t's dtype, or float32 where a 16-bit t cannot hold s
// (PyTorch scales by the float32 value then).
Tensor scale_operand(const Tensor& t, const Scalar& s) {
  const float f = static_cast<float>(s.to_double());
  const bool holds = t.dtype() == kBFloat16  ? static_cast<float>(BFloat16(f)) == f
                     : t.dtype() == kFloat16 ? static_cast<float>(Half(f)) == f
                                             : true;
  return full({}, s, TensorOptions(holds ? t.dtype() : kFloat32).device(t.device()));
}
}  // namespace
Tensor& Tensor::mul_(const Scalar& s) {
  check_scalar_fits(*this, s, "mul_");
  return mul_(scale_operand(*this, s));
}
Tensor& Tensor::div_(const Scalar& s) {
  check_scalar_fits(*this, s, "div_", /*true_div=*/true);
  inplace_binary(*this, BinaryOp::Div, scale_operand(*this, s), "div_");
  return *this;
}
Tensor& Tensor::add_(const Scalar& s) {
  check_scalar_fits(*this, s, "add_");
  return add_(full({}, s, TensorOptions(dtype()).device(device())));
}

// ---- factories ----

Tensor empty(const Shape& shape, TensorOptions opts) {
  Tensor t = alloc(shape, opts.dtype(), opts.device(), "empty");
  if (opts.requires_grad()) t.requires_grad_(true);
  return t;
}
namespace {
Tensor full_named(const Shape& shape, const Scalar& value, TensorOptions opts, const char* op) {
  Tensor t = alloc(shape, opts.dtype(), opts.device(), op);
  backend_for(t.device(), op).fill(t, value);
  if (opts.requires_grad()) t.requires_grad_(true);
  return t;
}
}  // namespace
Tensor full(const Shape& shape, const Scalar& value, TensorOptions opts) {
  return full_named(shape, value, opts, "full");
}
Tensor zeros(const Shape& shape, TensorOptions opts) { return full_named(shape, 0, opts, "zeros"); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full_named(shape, 1, opts, "ones"); }
Tensor scalar_tensor(const Scalar& v, TensorOptions opts) { return full_named({}, v, opts, "scalar_tensor"); }

namespace {
TensorOptions like(const Tensor& t) { return TensorOptions(t.dtype()).device(t.device()); }

template <typename T>
Tensor from_host(const T* data, const Shape& shape, TensorOptions opts, const char* op) {
  Tensor out = alloc(shape, opts.dtype(), opts.device(), op);
  Tensor h = Tensor::from_blob(const_cast<T*>(data), shape, dtype_of<T>::value);
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
    Tensor out = alloc(s, opts.dtype(), opts.device(), "tensor");
    Tensor h = Tensor::from_blob(tmp.data(), s, kBool);
    out.copy_(h);
    out.storage()->version = 0;
    if (opts.requires_grad()) out.requires_grad_(true);
    return out;
  } else {
    return from_host(values.data(), s, opts, "tensor");
  }
}
template Tensor tensor<bool>(const std::vector<bool>&, const Shape&, TensorOptions);
template Tensor tensor<std::int64_t>(const std::vector<std::int64_t>&, const Shape&, TensorOptions);
template Tensor tensor<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor tensor<double>(const std::vector<double>&, const Shape&, TensorOptions);

Tensor arange(const Scalar& end) { return arange(0, end, 1); }
Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step) {
  bool fl = start.is_floating() || end.is_floating() || step.is_floating();
  return arange(start, end, step, TensorOptions(fl ? kFloat32 : kInt64));
}
namespace {
// A factory's values computed on the host as T (double or int64) and converted into a fresh
// tensor. Both buffers come from kiln's allocator, so a count too large for memory is a
// kiln::Error naming the op, never std::bad_alloc.
template <typename T, typename F>
Tensor host_filled(std::int64_t n, const Shape& shape, TensorOptions opts, const char* op, F&& value) {
  Tensor out = alloc(shape, opts.dtype(), opts.device(), op);
  const bool direct = out.device().is_cpu() && out.dtype() == dtype_of<T>::value;
  Tensor h = direct ? out : alloc(shape, dtype_of<T>::value, Device::cpu(), op);
  T* p = h.data_ptr<T>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = value(i);
  if (!direct) {
    out.copy_(h);  // converts dtype and moves to the device
    out.storage()->version = 0;
  }
  if (opts.requires_grad()) out.requires_grad_(true);
  return out;
}
}  // namespace

Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step, TensorOptions opts) {
  double s = start.to_double(), e = end.to_double(), st = step.to_double();
  KILN_CHECK(st != 0.0 && std::isfinite(st), "arange", "step must be finite and nonzero, got {}", st);
  KILN_CHECK(std::isfinite(s) && std::isfinite(e), "arange", "start {} and end {} must be finite", s, e);
  constexpr auto kMaxCount = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (!start.is_floating() && !end.is_floating() && !step.is_floating()) {
    // Exact integer count (doubles lose integers beyond 2^53), in unsigned arithmetic so that
    // no span of two int64 values overflows.
    const std::int64_t i0 = start.to_int(), i1 = end.to_int(), di = step.to_int();
    KILN_CHECK(i0 == i1 || (i1 > i0) == (di > 0), "arange", "start {} cannot reach end {} with step {}", i0, i1, di);
    const std::uint64_t span = di > 0 ? static_cast<std::uint64_t>(i1) - static_cast<std::uint64_t>(i0)
                                      : static_cast<std::uint64_t>(i0) - static_cast<std::uint64_t>(i1);
    const std::uint64_t mag = di > 0 ? static_cast<std::uint64_t>(di) : 0 - static_cast<std::uint64_t>(di);
    const std::uint64_t count = span / mag + (span % mag != 0);
    KILN_CHECK(count <= kMaxCount, "arange", "start {}, end {} and step {} give {} elements (more than 2^63 - 1)", i0,
               i1, di, count);
    const auto n = static_cast<std::int64_t>(count);
    // start + i * step lies in [start, end]: exact in wrapping unsigned arithmetic.
    auto value = [&](std::int64_t i) {
      return static_cast<std::int64_t>(static_cast<std::uint64_t>(i0) +
                                       static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(di));
    };
    if (opts.dtype() == kInt64) return host_filled<std::int64_t>(n, {n}, opts, "arange", value);
    return host_filled<double>(n, {n}, opts, "arange", [&](std::int64_t i) { return static_cast<double>(value(i)); });
  }
  const double count = std::ceil((e - s) / st);
  KILN_CHECK(count >= 0, "arange", "start {} cannot reach end {} with step {}", s, e, st);
  KILN_CHECK(count < 9.2e18, "arange", "start {}, end {} and step {} give {} elements (more than 2^63 - 1)", s, e, st,
             count);
  const auto n = static_cast<std::int64_t>(count);
  const bool ints = !start.is_floating() && !step.is_floating();
  return host_filled<double>(n, {n}, opts, "arange", [&](std::int64_t i) {
    return ints ? static_cast<double>(start.to_int() + i * step.to_int()) : s + static_cast<double>(i) * st;
  });
}

Tensor linspace(double start, double end, std::int64_t steps, TensorOptions opts) {
  KILN_CHECK(steps >= 0, "linspace", "number of steps must be >= 0, got {}", steps);
  const double step = steps > 1 ? (end - start) / static_cast<double>(steps - 1) : 0.0;
  // Symmetric evaluation keeps both end points exact.
  return host_filled<double>(steps, {steps}, opts, "linspace", [&](std::int64_t i) {
    if (steps == 1) return start;
    return i < steps / 2 ? start + step * static_cast<double>(i) : end - step * static_cast<double>(steps - 1 - i);
  });
}

Tensor eye(std::int64_t n, std::int64_t m, TensorOptions opts) {
  KILN_CHECK(n >= 0, "eye", "n must be >= 0, got {}", n);
  if (m == -1) m = n;  // the default: square
  KILN_CHECK(m >= 0, "eye", "m must be >= 0, got {}", m);
  const std::int64_t count = checked_numel({n, m}, "eye");
  return host_filled<double>(count, {n, m}, opts, "eye", [m](std::int64_t i) { return i / m == i % m ? 1.0 : 0.0; });
}

// ---- random ----
namespace {
Tensor random_tensor(const Shape& shape, TensorOptions opts, Generator* gen, RandomSpec spec, const char* op) {
  Tensor t = alloc(shape, opts.dtype(), opts.device(), op);
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
  // Draws are computed in double precision: bounds beyond 2^53 would be rounded.
  constexpr std::int64_t kExact = std::int64_t{1} << 53;
  KILN_CHECK(low >= -kExact && high <= kExact, "randint", "low ({}) and high ({}) must lie within [-2^53, 2^53]", low,
             high);
  KILN_CHECK(opts.dtype() != kBool, "randint", "dtype bool is not supported");
  return random_tensor(shape, opts, gen, {RandomSpec::Int, static_cast<double>(low), static_cast<double>(high)},
                       "randint");
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
namespace cuda {
// core/cuda/runtime.cpp, or core/cuda/stub.cpp without CUDA: the backend of GPU `index`, or
// kiln::Error "[op] device cuda:N is not available: <why>".
Backend& backend_for_device(int index, const char* op);
int device_count();
// The page-locked host allocator, or kiln::Error "[op] ..." (no CUDA, no GPU).
Allocator& pinned_host_allocator(const char* op);
}  // namespace cuda

Allocator& pinned_allocator(const char* op) { return cuda::pinned_host_allocator(op); }

void register_backend(DeviceType type, Backend* backend) { slot(type) = backend; }

Backend& backend_for(Device device, const char* op) {
  if (device.is_cpu()) return cpu::cpu_backend();
  if (Backend* b = slot(device.type)) return *b;
  if (device.is_cuda()) return cuda::backend_for_device(device.index, op);
  throw_error(op, fmt::format("device {} has no backend", device.str()));
}

bool cuda_is_available() { return slot(DeviceType::CUDA) != nullptr || cuda::device_count() > 0; }

}  // namespace kiln
