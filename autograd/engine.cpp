// The backward engine: dependency counting over the graph reachable from the
// roots, nodes run most-recent-first, gradients summed per input slot. Each call's
// bookkeeping lives in its own GraphTask, never on the shared nodes.
#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "autocast.hpp"
#include "grad_mode.hpp"
#include "internal.hpp"
#include "node.hpp"
#include "ops.hpp"

namespace kiln::autograd {
namespace {
std::atomic<std::uint64_t> g_sequence{0};

AutogradMeta& meta(const Tensor& t) {
  auto* impl = t.impl_ptr();
  if (!impl->autograd) impl->autograd = std::make_unique<AutogradMeta>();
  return *impl->autograd;
}

// A leaf shared by threads (a module's parameter) gets one accumulator however many threads
// record ops on it at once.
std::mutex g_accumulator_mutex;

std::shared_ptr<Node> grad_accumulator(const Tensor& t) {
  std::lock_guard<std::mutex> lock(g_accumulator_mutex);
  AutogradMeta& m = meta(t);
  if (auto acc = m.grad_accumulator.lock()) return acc;
  auto acc = std::make_shared<AccumulateGrad>(t.impl_shared());
  m.grad_accumulator = acc;
  return acc;
}

// Adds g into the .grad slot of impl (steals g when nothing else can see its memory).
void accumulate_into(const std::shared_ptr<TensorImpl>& impl, const Tensor& g, bool create_graph, bool may_steal) {
  if (!g.defined()) return;
  if (!impl->autograd) impl->autograd = std::make_unique<AutogradMeta>();
  auto& slot = impl->autograd->grad;
  if (!slot) {
    // Keep g itself only when nothing else can see its memory; otherwise .grad gets its own
    // contiguous copy (g may be a broadcast view or shared with another input's gradient).
    bool owned = may_steal && g.is_contiguous() && g.impl_shared().use_count() == 1 && g.storage().use_count() == 1 &&
                 g.offset() == 0 && static_cast<std::size_t>(g.nbytes()) == g.storage()->nbytes;
    Tensor v = create_graph ? (owned ? g : clone(g)) : (owned ? g.detach() : g.detach().clone());
    slot = v.impl_shared();
    return;
  }
  Tensor cur(slot);
  if (create_graph || cur.requires_grad()) {
    slot = add(cur, g).impl_shared();
  } else {
    NoGradGuard ng;
    cur.add_(g);
  }
}

bool has_nonfinite(const Tensor& g) {
  if (!g.defined() || !g.is_floating_point()) return false;
  for (double v : g.to_vector<double>())
    if (!std::isfinite(v)) return true;
  return false;
}

// What flows into edge e must match the input it stands for (as torch's validate_outputs):
// another dtype is cast back, a broadcast shape is summed down, anything else is the op's bug.
Tensor validate_grad(const Node& node, std::size_t k, const Edge& e, Tensor g) {
  const OutputInfo& o = e.node->outputs.at(e.input_nr);  // an accumulator's one "output" is its leaf
  const Shape& shape = o.shape;
  const DType dtype = o.dtype;
  if (g.shape() != shape) {
    bool expandable = static_cast<std::int64_t>(shape.size()) <= g.dim();
    for (std::size_t i = 0; expandable && i < shape.size(); ++i) {
      std::int64_t gd = g.size(g.dim() - static_cast<std::int64_t>(shape.size()) + static_cast<std::int64_t>(i));
      expandable = shape[i] == gd || shape[i] == 1;
    }
    KILN_CHECK(expandable, node.name(), "backward returned a gradient of shape {} for input {} of shape {}",
               shape_str(g.shape()), k, shape_str(shape));
    g = sum_to_shape(g, shape);
  }
  if (g.dtype() != dtype && is_floating(dtype)) g = to(g, dtype);
  return g;
}

}  // namespace

// ---- SavedTensor ----

SavedTensor::SavedTensor(const Tensor& t, bool is_output) : is_output_(is_output) {
  if (!t.defined()) return;
  version_ = t.version();
  requires_grad_ = t.requires_grad();
  if (is_output) {
    data_ = t.detach();
    output_nr_ = t.impl_ptr()->autograd ? t.impl_ptr()->autograd->output_nr : 0;
  } else {
    data_ = t;
  }
}

Tensor SavedTensor::unpack(const char* op, const std::shared_ptr<Node>& owner) const {
  if (!data_.defined()) return data_;
  KILN_CHECK(data_.version() == version_, op,
             "a tensor of shape {} saved for backward was modified by an in-place operation "
             "(version {} now, {} when saved); clone it before modifying it",
             shape_str(data_.shape()), data_.version(), version_);
  if (!is_output_ || !requires_grad_ || !grad_enabled()) return data_;
  // Re-attach the output to its node so a create_graph backward can differentiate through it.
  Tensor t = Tensor::make_view(data_, data_.shape(), data_.strides(), data_.offset());
  auto m = std::make_unique<AutogradMeta>();
  m->requires_grad = true;
  m->grad_fn = owner;
  m->output_nr = output_nr_;
  t.impl_ptr()->autograd = std::move(m);
  return t;
}

std::size_t Node::save(const Tensor& t, bool is_output) {
  saved_.emplace_back(t, is_output);
  return saved_.size() - 1;
}

Tensor Node::saved(std::size_t i) {
  KILN_CHECK(!released_, name(),
             "trying to run backward through the graph a second time (its saved tensors were freed); "
             "pass retain_graph=true to the first backward");
  return saved_.at(i).unpack(name(), shared_from_this());
}

std::vector<Tensor> FunctionNode::apply(std::vector<Tensor>&& grad_outputs) {
  KILN_CHECK(fn_ != nullptr, name_,
             "trying to run backward through the graph a second time (its saved tensors were freed); "
             "pass retain_graph=true to the first backward");
  return fn_(*this, grad_outputs);
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>&& grad_outputs) {
  // Threads whose graphs share this leaf add into one .grad (and run its hooks) one at a time.
  std::lock_guard<std::mutex> lock(mutex_);
  auto leaf = leaf_.lock();
  if (!leaf || !grad_outputs.at(0).defined()) return {};
  accumulate_into(leaf, grad_outputs[0], grad_enabled(), true);
  detail::run_post_accumulate_grad_hooks(leaf);
  return {};
}

// ---- graph teardown ----

namespace {
// What a dying node owns that may hold the last reference to other nodes: its edges, its saved
// tensors (their grad_fn) and its backward's captures. Destroying them can destroy further nodes;
// while this thread is already tearing a graph down, those nodes park their parts here instead
// of destroying them one call deeper, so a chain of any length frees at constant stack depth.
struct NodeParts {
  std::vector<Edge> edges;
  std::vector<SavedTensor> saved;
  FunctionNode::Backward fn;
};
thread_local std::vector<NodeParts> t_parked;
thread_local bool t_tearing_down = false;

void tear_down(NodeParts&& parts) {
  if (t_tearing_down) {
    t_parked.push_back(std::move(parts));
    return;
  }
  t_tearing_down = true;
  { NodeParts first = std::move(parts); }  // destroyed here: nodes it frees park their parts
  while (!t_parked.empty()) {
    NodeParts next = std::move(t_parked.back());
    t_parked.pop_back();
  }  // `next` is destroyed at the end of each iteration, parking more
  t_tearing_down = false;
}
}  // namespace

Node::~Node() {
  if (!next_edges.empty() || !saved_.empty()) tear_down({std::move(next_edges), std::move(saved_), nullptr});
}

FunctionNode::~FunctionNode() {
  if (fn_) tear_down({{}, {}, std::move(fn_)});
}

// ---- recording ----

std::uint64_t next_sequence_nr() { return g_sequence.fetch_add(1); }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) return false;
  for (auto* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  const AutogradMeta& m = *t.impl_ptr()->autograd;
  if (m.grad_fn) return {m.grad_fn, m.output_nr};
  return {grad_accumulator(t), 0};
}

std::shared_ptr<FunctionNode> record(const char* name, const std::vector<Tensor>& inputs,
                                     const std::vector<Tensor>& outputs, FunctionNode::Backward fn) {
  if (!any_requires_grad(inputs)) return nullptr;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->sequence_nr = next_sequence_nr();
  node->next_edges.reserve(inputs.size());
  for (const auto& in : inputs) node->next_edges.push_back(gradient_edge(in));
  node->outputs.reserve(outputs.size());
  for (std::uint32_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    node->outputs.push_back({o.shape(), o.dtype(), o.device()});
    if (!o.is_floating_point()) continue;  // integer/bool outputs are not differentiable
    AutogradMeta& m = meta(o);
    m.requires_grad = true;
    m.grad_fn = node;
    m.output_nr = i;
  }
  return node;
}

// ---- the engine ----

namespace {

// One backward call: its bookkeeping (dependency counts, gradient buffers, captured results)
// lives here, not on the shared graph nodes, so each call is self-contained. The stages run in
// order: seed the roots, count dependencies, then run the ready nodes most-recent-first.
class GraphTask {
 public:
  GraphTask(bool retain_graph, bool create_graph, const std::vector<Tensor>& inputs)
      : retain_graph_(retain_graph),
        create_graph_(create_graph),
        capture_mode_(!inputs.empty()),
        results_(inputs.size()),
        reachable_(inputs.size(), false) {
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      KILN_CHECK(inputs[i].defined() && inputs[i].requires_grad(), "grad",
                 "input {} does not require grad, so no gradient can be computed for it", i);
      Edge e = gradient_edge(inputs[i]);
      captures_.push_back({e.node.get(), e.input_nr, i});
      keep_alive_.push_back(e.node);
    }
  }

  // Stage 1: each root's gradient goes into its node's buffer.
  void seed_roots(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads) {
    for (std::size_t i = 0; i < roots.size(); ++i) {
      const Tensor& r = roots[i];
      KILN_CHECK(r.defined(), "backward", "root tensor {} is undefined", i);
      KILN_CHECK(r.requires_grad(), "backward",
                 "tensor of shape {} ({}) does not require grad and has no grad_fn: it is not connected to any "
                 "tensor with requires_grad=true, or it is the output of a non-differentiable op",
                 shape_str(r.shape()), dtype_name(r.dtype()));
      Edge e = gradient_edge(r);
      add_to(e, root_grads[i]);
      root_nodes_.push_back(e.node.get());
      keep_alive_.push_back(e.node);
    }
  }

  // Stage 2: how many edges of the reachable graph lead into each node.
  void count_dependencies() {
    std::vector<Node*> stack;
    for (Node* n : root_nodes_) expand_once(n, stack);
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (auto& e : n->next_edges) {
        if (!e.valid()) continue;
        state(e.node.get()).dependencies++;
        expand_once(e.node.get(), stack);
      }
    }
  }

  // Stage 3: nodes whose every consumer has run, most recently created first (nodes stay alive
  // through the roots' edges).
  void execute() {
    auto later_first = [](const Node* a, const Node* b) { return a->sequence_nr < b->sequence_nr; };
    std::priority_queue<Node*, std::vector<Node*>, decltype(later_first)> ready(later_first);
    for (std::size_t i = 0; i < root_nodes_.size(); ++i) {
      Node* n = root_nodes_[i];
      const auto before = root_nodes_.begin() + static_cast<std::ptrdiff_t>(i);
      if (state(n).dependencies == 0 && std::find(root_nodes_.begin(), before, n) == before) ready.push(n);
    }
    while (!ready.empty()) {
      Node* node = ready.top();
      ready.pop();
      std::vector<Tensor> buf = take_buffer(node);
      if (node->is_accumulator()) {  // it locks itself while adding into .grad
        deliver_retained_and_captured(node, buf);
        if (!capture_mode_) node->apply(std::move(buf));
        continue;
      }
      std::vector<Tensor> grads;
      {
        std::lock_guard<std::mutex> lock(node->mutex());
        deliver_retained_and_captured(node, buf);
        grads = call_node(node, std::move(buf));
      }
      for (std::size_t k = 0; k < grads.size(); ++k) {
        const Edge& e = node->next_edges[k];
        if (!e.valid()) continue;
        if (grads[k].defined()) add_to(e, checked_grad(*node, k, e, std::move(grads[k])));
        if (--state(e.node.get()).dependencies == 0) ready.push(e.node.get());
      }
    }
  }

  // Stage 4 (torch.autograd.grad): the captured gradients of the inputs.
  std::vector<Tensor> results(bool allow_unused) {
    if (capture_mode_ && !allow_unused)
      for (std::size_t i = 0; i < reachable_.size(); ++i)
        KILN_CHECK(reachable_[i], "grad", "input {} is not reachable from the outputs (pass allow_unused=true)", i);
    return std::move(results_);
  }

 private:
  struct NodeState {
    int dependencies = 0;
    bool expanded = false;       // its edges were counted
    std::vector<Tensor> buffer;  // gradient per output slot, summed
  };
  struct Capture {
    Node* node;
    std::uint32_t input_nr;
    std::size_t index;
  };

  NodeState& state(Node* n) { return nodes_[n]; }

  void expand_once(Node* n, std::vector<Node*>& stack) {
    NodeState& s = state(n);
    if (s.expanded) return;
    s.expanded = true;
    stack.push_back(n);
  }

  void add_to(const Edge& e, const Tensor& g) {
    Node* n = e.node.get();
    auto& buf = state(n).buffer;
    const std::size_t size = std::max<std::size_t>(n->outputs.size(), 1);
    if (buf.size() < size) buf.resize(size);
    Tensor& slot = buf[e.input_nr];
    if (!slot.defined()) {
      slot = g;
    } else if (!create_graph_ && sole_owner(slot) && slot.shape() == g.shape() && slot.dtype() == g.dtype()) {
      NoGradGuard ng;  // a sum nothing else can see: add into it rather than allocate another
      slot.add_(g);
    } else {
      slot = add(slot, g);
    }
  }

  // Whether t is a contiguous gradient that no other tensor, view or saved variable holds.
  static bool sole_owner(const Tensor& t) {
    return t.is_contiguous() && !t.requires_grad() && t.impl_shared().use_count() == 1 && t.storage().use_count() == 1;
  }

  std::vector<Tensor> take_buffer(Node* node) {
    std::vector<Tensor> buf = std::move(state(node).buffer);
    buf.resize(std::max<std::size_t>(node->outputs.size(), 1));
    return buf;
  }

  // retain_grad() outputs get their .grad; torch.autograd.grad inputs get their result.
  void deliver_retained_and_captured(Node* node, const std::vector<Tensor>& buf) {
    for (auto& [nr, weak] : node->retained)
      if (auto impl = weak.lock()) accumulate_into(impl, buf[nr], create_graph_, false);
    for (const auto& c : captures_)
      if (c.node == node) {
        results_[c.index] = buf[c.input_nr];
        reachable_[c.index] = true;
      }
  }

  // The node's backward on its output gradients (missing ones as zeros); frees its saved
  // tensors unless the graph is retained.
  std::vector<Tensor> call_node(Node* node, std::vector<Tensor>&& buf) {
    KILN_CHECK(!node->released(), node->name(),
               "trying to run backward through the graph a second time (its saved tensors were freed); "
               "pass retain_graph=true to the first backward");
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!buf[i].defined()) {
        const auto& o = node->outputs[i];
        buf[i] = zeros(o.shape, TensorOptions(o.dtype).device(o.device));
      }
    std::vector<Tensor> grads = node->apply(std::move(buf));
    if (!retain_graph_) node->release();
    KILN_CHECK(grads.size() == node->next_edges.size(), node->name(), "backward returned {} gradients for {} inputs",
               grads.size(), node->next_edges.size());
    return grads;
  }

  // validate_grad, plus the anomaly-mode check for NaN/Inf.
  static Tensor checked_grad(const Node& node, std::size_t k, const Edge& e, Tensor g) {
    g = validate_grad(node, k, e, std::move(g));
    if (anomaly_mode() && has_nonfinite(g))
      throw_error("autograd anomaly",
                  fmt::format("the backward of '{}' produced NaN or Inf in the gradient of its input {} (shape {})",
                              node.name(), k, shape_str(g.shape())));
    return g;
  }

  const bool retain_graph_, create_graph_, capture_mode_;
  std::unordered_map<Node*, NodeState> nodes_;
  std::vector<Node*> root_nodes_;
  std::vector<Capture> captures_;
  std::vector<Tensor> results_;
  std::vector<bool> reachable_;
  // A leaf's accumulator is only weakly held by the leaf: keep the captured ones alive
  // (and a leaf that is also a root finds its capture).
  std::vector<std::shared_ptr<Node>> keep_alive_;
};

}  // namespace

std::vector<Tensor> run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                                 bool retain_graph, bool create_graph, const std::vector<Tensor>& inputs,
                                 bool allow_unused) {
  GradModeGuard mode(create_graph);
  detail::BackwardCallbacks callbacks;        // autograd::queue_callback during this pass lands here
  kiln::detail::AutocastSuspend no_autocast;  // each gradient in the dtype its forward input had
  GraphTask task(retain_graph, create_graph, inputs);
  task.seed_roots(roots, root_grads);
  task.count_dependencies();
  task.execute();
  callbacks.run();
  return task.results(allow_unused);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph, bool create_graph,
                         bool allow_unused) {
  std::vector<Tensor> gs = grad_outputs;
  gs.resize(outputs.size());
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (!gs[i].defined()) {
      KILN_CHECK(outputs[i].numel() == 1, "grad",
                 "grad_outputs can be implicitly created only for one-element outputs; output {} has shape {}", i,
                 shape_str(outputs[i].shape()));
      gs[i] = ones_like(outputs[i]);
    }
  }
  KILN_CHECK(!inputs.empty(), "grad", "no inputs given");
  return run_backward(outputs, gs, retain_graph || create_graph, create_graph, inputs, allow_unused);
}

}  // namespace kiln::autograd

// ---- Tensor's autograd members ----
namespace kiln {

Tensor& Tensor::requires_grad_(bool r) {
  KILN_CHECK(is_leaf(), "requires_grad_",
             "can only change requires_grad of leaf tensors (this one was produced by '{}'); use detach()",
             grad_fn() ? grad_fn()->name() : "?");
  KILN_CHECK(!r || is_floating_point(), "requires_grad_", "only floating point tensors can require gradients, got {}",
             dtype_name(dtype()));
  if (!impl_ptr()->autograd) {
    if (!r) return *this;
    impl_ptr()->autograd = std::make_unique<AutogradMeta>();
  }
  impl_ptr()->autograd->requires_grad = r;
  return *this;
}

const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<autograd::Node> none;
  return impl_ptr()->autograd ? impl_ptr()->autograd->grad_fn : none;
}

Tensor Tensor::grad() const {
  auto* m = impl_ptr()->autograd.get();
  return m && m->grad ? Tensor(m->grad) : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined())
    KILN_CHECK(g.shape() == shape(), "set_grad", "gradient shape {} does not match tensor shape {}",
               shape_str(g.shape()), shape_str(shape()));
  if (!impl_ptr()->autograd) impl_ptr()->autograd = std::make_unique<AutogradMeta>();
  impl_ptr()->autograd->grad = g.defined() ? g.impl_shared() : nullptr;
}

void Tensor::retain_grad() const {
  KILN_CHECK(requires_grad(), "retain_grad", "cannot retain the grad of a tensor that does not require grad");
  if (is_leaf()) return;  // leaves always keep theirs
  auto& m = *impl_ptr()->autograd;
  if (m.retains_grad) return;
  m.retains_grad = true;
  std::lock_guard<std::mutex> lock(m.grad_fn->mutex());
  m.grad_fn->retained.push_back({m.output_nr, impl_shared()});
}

void Tensor::backward(const Tensor& grad, bool retain_graph, bool create_graph) const {
  Tensor g = grad;
  if (!g.defined()) {
    KILN_CHECK(numel() == 1, "backward",
               "grad can be implicitly created only for one-element tensors; this tensor has shape {}",
               shape_str(shape()));
    g = ones_like(*this);
  } else {
    KILN_CHECK(g.shape() == shape(), "backward", "grad shape {} does not match tensor shape {}", shape_str(g.shape()),
               shape_str(shape()));
    KILN_CHECK(g.device() == device(), "backward", "grad is on {} but the tensor is on {}", g.device().str(),
               device().str());
    if (g.dtype() != dtype()) g = g.to(dtype());
  }
  autograd::run_backward({*this}, {g}, retain_graph || create_graph, create_graph);
}

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

}  // namespace kiln
