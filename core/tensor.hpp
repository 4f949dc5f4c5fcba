#pragma once
/// kiln::Tensor — a shared handle to (storage, shape, strides, offset, dtype).
/// Copies of a Tensor share everything; views share the storage:
///   auto x = kiln::arange(6).reshape({2, 3});
///   auto row = x.select(0, 1);   // view of (3,)
///   row.fill_(7);                // visible in x
/// Differentiable ops live in autograd/ops.hpp; the member functions below that
/// compute something forward to them.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "allocator.hpp"
#include "arg.hpp"
#include "device.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "scalar.hpp"
#include "shape.hpp"

namespace kiln {

namespace autograd {
class Node;
struct LeafHooks;
}  // namespace autograd

class Tensor;
struct TensorImpl;
class TensorIndex;  // core/indexing.hpp
template <typename T, std::size_t N>
class TensorAccessor;  // core/accessor.hpp

/// What a factory builds: `TensorOptions().dtype(kFloat64).requires_grad(true)`.
/// A DType or a Device converts implicitly: `zeros({2}, kInt64)`.
class TensorOptions {
 public:
  TensorOptions() = default;
  TensorOptions(DType d) : dtype_(d) {}
  TensorOptions(Device d) : device_(d) {}
  KILN_ARG(DType, dtype) = kFloat32;
  KILN_ARG(Device, device) = Device::cpu();
  KILN_ARG(bool, requires_grad) = false;
};

/// Gradient bookkeeping attached to a tensor that takes part in autograd.
struct AutogradMeta {
  bool requires_grad = false;
  bool retains_grad = false;
  std::shared_ptr<TensorImpl> grad;                // accumulated .grad
  std::shared_ptr<autograd::Node> grad_fn;         // null for leaves
  std::uint32_t output_nr = 0;                     // which output of grad_fn this is
  std::weak_ptr<autograd::Node> grad_accumulator;  // leaves: the node that accumulates .grad
  std::shared_ptr<autograd::LeafHooks> hooks;      // leaves: post-accumulate-grad hooks (autograd/hooks.hpp)
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;
  std::int64_t offset = 0;  // in elements
  DType dtype = kFloat32;
  std::unique_ptr<AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  /// A fresh contiguous tensor (uninitialized memory) on `device`.
  static Tensor empty(const Shape& shape, DType dtype, Device device);
  /// A view sharing `base`'s storage with new geometry (no autograd tracking).
  static Tensor make_view(const Tensor& base, Shape shape, Strides strides, std::int64_t offset);
  /// Wraps memory owned elsewhere (not freed by kiln); it must outlive the tensor.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& sizes() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  std::int64_t dim() const { return static_cast<std::int64_t>(impl().shape.size()); }
  std::int64_t size(std::int64_t d) const;
  std::int64_t stride(std::int64_t d) const;
  std::int64_t offset() const { return impl().offset; }
  std::int64_t numel() const { return numel_of(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device; }
  bool is_contiguous() const;
  bool is_floating_point() const { return is_floating(dtype()); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * itemsize(dtype()); }

  /// Pointer to element [0, 0, ...] (storage data + offset).
  void* raw_data() const;
  /// Typed pointer; throws if T does not match dtype().
  template <typename T>
  T* data_ptr() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  TensorImpl* impl_ptr() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_shared() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }
  /// Bumps the storage's version counter (every in-place write does this).
  void bump_version() const { impl().storage->version++; }
  std::uint64_t version() const { return impl().storage->version; }

  // ---- values (copy to the host when needed) ----
  /// The single value of a one-element tensor.
  template <typename T>
  T item() const;
  template <typename T>
  std::vector<T> to_vector() const;

  // ---- autograd ----
  bool requires_grad() const { return impl().autograd && impl().autograd->requires_grad; }
  /// Marks a leaf as needing a gradient; returns *this.
  Tensor& requires_grad_(bool r = true);
  Tensor& set_requires_grad(bool r = true) { return requires_grad_(r); }
  bool is_leaf() const { return !impl().autograd || !impl().autograd->grad_fn; }
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  /// The accumulated gradient (undefined Tensor if none yet).
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  /// Non-leaf tensors keep their .grad after backward when asked.
  void retain_grad() const;
  bool retains_grad() const { return impl().autograd && impl().autograd->retains_grad; }
  /// Reverse-mode gradient of this tensor w.r.t. the graph's leaves. `grad` may be
  /// omitted for a one-element tensor.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false, bool create_graph = false) const;
  /// Same data, no history, requires_grad false.
  Tensor detach() const;

  // ---- views (differentiable, zero-copy) ----
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor flatten(std::int64_t start_dim = 0, std::int64_t end_dim = -1) const;
  Tensor permute(const std::vector<std::int64_t>& dims) const;
  Tensor transpose(std::int64_t d0, std::int64_t d1) const;
  /// Transpose of the last two dims.
  Tensor mT() const;
  Tensor t() const;
  Tensor narrow(std::int64_t dim, std::int64_t start, std::int64_t length) const;
  /// Python slicing along one dim: x[start:end:step] (negative start/end count from the end).
  Tensor slice(std::int64_t dim, std::int64_t start, std::int64_t end, std::int64_t step = 1) const;
  Tensor select(std::int64_t dim, std::int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor broadcast_to(const Shape& shape) const { return expand(shape); }
  Tensor squeeze() const;
  Tensor squeeze(std::int64_t dim) const;
  Tensor unsqueeze(std::int64_t dim) const;
  Tensor contiguous() const;

  // ---- copies and conversions (differentiable) ----
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor to(Device device, DType dtype) const;
  /// With non_blocking, a copy from pinned memory (is_pinned) to a GPU runs asynchronously on
  /// the device's stream (as PyTorch's `non_blocking=True`): the call returns at once, later
  /// work on the device is ordered after the copy, and the pinned block is not handed out again
  /// before the copy has read it. Writing to the source tensor before the copy is done (e.g.
  /// before cuda::synchronize or a read of the result) races with it, as in PyTorch. Other
  /// copies (pageable or strided sources, device to host) are as without the flag.
  Tensor to(Device device, bool non_blocking) const;
  /// A contiguous copy in page-locked host memory (itself when already pinned): the source of
  /// asynchronous host-to-GPU copies. kiln::Error "[pin_memory] ..." without a usable GPU, as
  /// PyTorch raises; differentiable (identity).
  Tensor pin_memory() const;
  /// Whether the storage is page-locked host memory (views of a pinned tensor are pinned too).
  bool is_pinned() const;

  // ---- common math as methods (see autograd/ops.hpp) ----
  Tensor sum(const std::vector<std::int64_t>& dims = {}, bool keepdim = false) const;
  Tensor mean(const std::vector<std::int64_t>& dims = {}, bool keepdim = false) const;
  Tensor pow(const Scalar& e) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor abs() const;
  Tensor matmul(const Tensor& other) const;

  // ---- indexing (TensorIndex, Slice, None, Ellipsis: core/indexing.hpp) ----
  /// Python's x[0:2, 1, None, ...] is `x.index({Slice(0, 2), 1, None, Ellipsis})`. Integers,
  /// slices, None and Ellipsis give a view; bool and int64 index tensors copy (advanced indexing).
  Tensor index(std::initializer_list<TensorIndex> indices) const;
  Tensor index(const std::vector<TensorIndex>& indices) const;
  /// x[indices] = value (broadcast; `accumulate` adds instead, duplicates included). Recorded
  /// by autograd (gradient to value and to a non-leaf x); a leaf that requires grad refuses.
  Tensor& index_put_(std::initializer_list<TensorIndex> indices, const Tensor& value, bool accumulate = false);
  Tensor& index_put_(const std::vector<TensorIndex>& indices, const Tensor& value, bool accumulate = false);
  Tensor& index_put_(std::initializer_list<TensorIndex> indices, const Scalar& value, bool accumulate = false);
  Tensor& index_put_(const std::vector<TensorIndex>& indices, const Scalar& value, bool accumulate = false);
  /// `a[i][j]` element access to a CPU tensor of dtype T and N dims (core/accessor.hpp).
  template <typename T, std::size_t N>
  TensorAccessor<T, N> accessor() const;

  // ---- in-place (not tracked by autograd; bump the version counter) ----
  Tensor& fill_(const Scalar& v);
  Tensor& zero_() { return fill_(0); }
  /// Copies src (broadcast to this shape, converted to this dtype, from any device).
  Tensor& copy_(const Tensor& src);
  Tensor& add_(const Tensor& other, const Scalar& alpha = 1);
  Tensor& sub_(const Tensor& other) { return add_(other, -1); }
  Tensor& mul_(const Tensor& other);
  Tensor& mul_(const Scalar& s);
  Tensor& div_(const Scalar& s);
  Tensor& add_(const Scalar& s);

  std::string str() const;

 private:
  TensorImpl& impl() const;
  std::shared_ptr<TensorImpl> impl_;
};

/// `x + y` etc. are declared in autograd/ops.hpp.

/// torch.result_type of a binary op: promote_types of the two dtypes, except that a 0-dim tensor
/// (what a C++ number becomes: `x * 0.5`) beside an n-dim one counts only when its category (bool
/// < integer < floating) is higher: bfloat16 (n-dim) * float32 (0-dim) is bfloat16, int64 (n-dim)
/// + float64 (0-dim) is float64, float32 (n-dim) + float64 (0-dim) stays float32.
DType result_type(const Tensor& a, const Tensor& b);

/// Prints t as str() does (values summarised with ... when large, shape, dtype, device,
/// grad_fn or requires_grad): `std::cout << kiln::arange(3);`.
std::ostream& operator<<(std::ostream& os, const Tensor& t);

/// A braced list of numbers nested to any depth: what `kiln::tensor({{1, 2}, {3, 4}})` takes.
class NestedList {
 public:
  template <typename T, std::enable_if_t<std::is_arithmetic_v<T> || is_reduced_float_v<T>, int> = 0>
  NestedList(T v) : value_(v) {}
  NestedList(std::initializer_list<NestedList> items) : items_(items), is_list_(true) {}
  bool is_list() const { return is_list_; }
  const Scalar& value() const { return value_; }
  const std::vector<NestedList>& items() const { return items_; }

 private:
  Scalar value_;
  std::vector<NestedList> items_;
  bool is_list_ = false;
};

// ---- factories ----
Tensor empty(const Shape& shape, TensorOptions opts = {});
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
Tensor full(const Shape& shape, const Scalar& value, TensorOptions opts = {});
/// [start, end) in steps of `step`; integer arguments give int64, otherwise float32 unless opts say.
Tensor arange(const Scalar& end);
Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step = 1);
Tensor arange(const Scalar& start, const Scalar& end, const Scalar& step, TensorOptions opts);
Tensor linspace(double start, double end, std::int64_t steps, TensorOptions opts = {});
Tensor eye(std::int64_t n, std::int64_t m = -1, TensorOptions opts = {});
Tensor scalar_tensor(const Scalar& v, TensorOptions opts = {});
/// From host values; shape defaults to (values.size(),).
template <typename T>
Tensor tensor(const std::vector<T>& values, const Shape& shape = {},
              TensorOptions opts = TensorOptions(dtype_of<T>::value));
/// From braced lists nested to any depth: `tensor({1.5, 2})` is (2,) float32, `tensor({{1, 2}, {3, 4}})`
/// (2, 2) int64. The dtype follows PyTorch's torch.tensor: all bool -> bool, integers (and bools)
/// -> int64, any floating value -> float32 (the default dtype); with options, their dtype (floats
/// truncate into integers). Ragged lists throw kiln::Error naming the position. One overload takes
/// every depth, so `tensor({{1}, {2}})` is (2, 1), not a flat list.
Tensor tensor(std::initializer_list<NestedList> values);
Tensor tensor(std::initializer_list<NestedList> values, TensorOptions opts);
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, const Scalar& v);
Tensor empty_like(const Tensor& t, TensorOptions opts);
Tensor zeros_like(const Tensor& t, TensorOptions opts);
Tensor ones_like(const Tensor& t, TensorOptions opts);
Tensor full_like(const Tensor& t, const Scalar& v, TensorOptions opts);

class Generator;
/// Uniform [0, 1).
Tensor rand(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
Tensor randn(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
/// Integers uniform in [low, high), int64 unless opts say.
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, TensorOptions opts = TensorOptions(kInt64),
               Generator* gen = nullptr);
Tensor rand_like(const Tensor& t, Generator* gen = nullptr);
Tensor randn_like(const Tensor& t, Generator* gen = nullptr);
Tensor randint_like(const Tensor& t, std::int64_t low, std::int64_t high, Generator* gen = nullptr);

}  // namespace kiln
