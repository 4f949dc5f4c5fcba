#pragma once
/// The autograd graph. Each differentiable op that sees an input requiring grad
/// creates a Node holding what backward needs; outputs point at it through
/// grad_fn. Backward formulas are written with differentiable ops, so they run
/// on every device and can themselves be differentiated (create_graph).
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "../core/tensor.hpp"

namespace kiln::autograd {

class Node;

/// Where a gradient flows: input `input_nr` of `node`.
struct Edge {
  std::shared_ptr<Node> node;
  std::uint32_t input_nr = 0;
  bool valid() const { return node != nullptr; }
};

/// A tensor kept for backward. Remembers the storage version at save time and
/// refuses to unpack after an in-place change. An op's own output is kept
/// without a strong link back to the node (no reference cycle).
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, bool is_output);
  /// The saved tensor; throws kiln::Error naming `op` if it was modified in place.
  Tensor unpack(const char* op, const std::shared_ptr<Node>& owner) const;
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;  // for outputs: an alias without autograd meta
  std::uint64_t version_ = 0;
  bool is_output_ = false;
  bool requires_grad_ = false;
  std::uint32_t output_nr_ = 0;
};

struct OutputInfo {
  Shape shape;
  DType dtype;
  Device device;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  /// Frees the graph behind this node iteratively: a chain of a million nodes is released at
  /// constant stack depth, not through a million nested destructors (autograd/engine.cpp).
  virtual ~Node();
  /// The forward op's name, used in error messages ("mul", "softmax", ...).
  virtual const char* name() const = 0;
  /// Gradients for each input edge from gradients of each output (missing ones are zeros).
  virtual std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) = 0;
  /// Frees what backward needed (after a backward without retain_graph).
  virtual void release() {
    saved_.clear();
    released_ = true;
  }
  bool released() const { return released_; }

  std::vector<Edge> next_edges;
  std::vector<OutputInfo> outputs;
  /// Non-leaf outputs whose .grad the user asked to keep (retain_grad).
  std::vector<std::pair<std::uint32_t, std::weak_ptr<TensorImpl>>> retained;
  std::uint64_t sequence_nr = 0;
  virtual bool is_accumulator() const { return false; }

  /// Saves a tensor for backward; returns its slot.
  std::size_t save(const Tensor& t, bool is_output = false);
  Tensor saved(std::size_t i);
  /// Held while the engine runs or releases this node and while its retained list changes, so
  /// backward calls on several threads through shared nodes (a shared module's accumulators, a
  /// graph two threads run with retain_graph) take turns on each node.
  std::mutex& mutex() { return mutex_; }

 protected:
  std::vector<SavedTensor> saved_;
  bool released_ = false;
  std::mutex mutex_;
};

/// A node whose backward is a function (used by every built-in op).
class FunctionNode final : public Node {
 public:
  using Backward = std::function<std::vector<Tensor>(FunctionNode& self, std::vector<Tensor>& grads)>;
  FunctionNode(const char* name, Backward fn) : name_(name), fn_(std::move(fn)) {}
  ~FunctionNode() override;
  const char* name() const override { return name_; }
  std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) override;
  void release() override {
    Node::release();
    fn_ = nullptr;
  }

 private:
  const char* name_;
  Backward fn_;
};

/// The sink for a leaf: adds incoming gradients to leaf.grad. It holds the leaf weakly,
/// so a .grad that carries a graph (create_graph) does not keep its leaf alive in a cycle;
/// gradients for a leaf nobody holds any more are dropped.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : leaf_(leaf) {
    outputs.push_back({leaf->shape, leaf->dtype, leaf->storage->device});
    // Runs as soon as it is ready (the engine runs the highest sequence_nr first), so a leaf's
    // .grad and its post-accumulate hooks come while the rest of backward still runs.
    sequence_nr = UINT64_MAX;
  }
  const char* name() const override { return "AccumulateGrad"; }
  bool is_accumulator() const override { return true; }
  std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) override;
  void release() override {}

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

/// Whether an op on these inputs must be recorded.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);
/// The edge a gradient for `t` flows into (invalid if t does not require grad).
Edge gradient_edge(const Tensor& t);

/// A fresh creation stamp for a node: the engine runs ready nodes latest-created first.
std::uint64_t next_sequence_nr();

/// Records `outputs` as produced by an op on `inputs` whose backward is `fn`.
/// Returns null (and records nothing) when grad mode is off or no input requires grad.
std::shared_ptr<FunctionNode> record(const char* name, const std::vector<Tensor>& inputs,
                                     const std::vector<Tensor>& outputs, FunctionNode::Backward fn);

/// Runs the backward pass from `roots`. With `inputs` given, returns their
/// gradients instead of accumulating into any .grad.
std::vector<Tensor> run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                                 bool retain_graph, bool create_graph, const std::vector<Tensor>& inputs = {},
                                 bool allow_unused = true);

/// Gradients of `outputs` w.r.t. `inputs` (like torch.autograd.grad); nothing is accumulated.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false,
                         bool create_graph = false, bool allow_unused = true);

}  // namespace kiln::autograd
