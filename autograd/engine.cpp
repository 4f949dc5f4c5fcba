// The backward engine: dependency counting over the graph reachable from the
// roots, nodes run most-recent-first, gradients summed per input slot.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <fmt/format.h>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "grad_mode.hpp"
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

std::shared_ptr<Node> grad_accumulator(const Tensor& t) {
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
    Tensor v = g;
    if (!create_graph) {
      bool owned = may_steal && g.is_contiguous() && g.impl_shared().use_count() == 1 &&
                   g.storage().use_count() == 1 && g.offset() == 0 &&
                   static_cast<std::size_t>(g.nbytes()) == g.storage()->nbytes;
      v = owned ? g.detach() : g.detach().clone();
    }
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
  accumulate_into(leaf_, grad_outputs.at(0), grad_enabled(), true);
  return {};
}

// ---- recording ----

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
  node->sequence_nr = g_sequence.fetch_add(1);
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

std::vector<Tensor> run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads,
                                 bool retain_graph, bool create_graph, const std::vector<Tensor>& inputs,
                                 bool allow_unused) {
  GradModeGuard mode(create_graph);
  const bool capture_mode = !inputs.empty();
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::unordered_map<Node*, std::vector<std::pair<std::uint32_t, std::size_t>>> captures;
  std::vector<Tensor> results(inputs.size());
  std::vector<bool> reachable(inputs.size(), false);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    KILN_CHECK(inputs[i].defined() && inputs[i].requires_grad(), "grad",
               "input {} does not require grad, so no gradient can be computed for it", i);
    Edge e = gradient_edge(inputs[i]);
    captures[e.node.get()].push_back({e.input_nr, i});
  }

  auto add_to = [&](const Edge& e, const Tensor& g) {
    auto& buf = buffers[e.node.get()];
    std::size_t n = std::max<std::size_t>(e.node->outputs.size(), 1);
    if (buf.size() < n) buf.resize(n);
    Tensor& slot = buf[e.input_nr];
    slot = slot.defined() ? add(slot, g) : g;
  };

  std::vector<std::shared_ptr<Node>> root_nodes;
  for (std::size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    KILN_CHECK(r.defined(), "backward", "root tensor {} is undefined", i);
    KILN_CHECK(r.requires_grad(), "backward",
               "tensor of shape {} ({}) does not require grad and has no grad_fn: it is not connected to any "
               "tensor with requires_grad=true, or it is the output of a non-differentiable op",
               shape_str(r.shape()), dtype_name(r.dtype()));
    Edge e = gradient_edge(r);
    add_to(e, root_grads[i]);
    root_nodes.push_back(e.node);
  }

  // Dependency counts over the reachable graph.
  std::unordered_map<Node*, int> deps;
  {
    std::unordered_set<Node*> seen;
    std::vector<Node*> stack;
    for (auto& n : root_nodes)
      if (seen.insert(n.get()).second) stack.push_back(n.get());
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (auto& e : n->next_edges) {
        if (!e.valid()) continue;
        deps[e.node.get()]++;
        if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
      }
    }
  }
  auto cmp = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr < b->sequence_nr;
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(cmp)> ready(cmp);
  {
    std::unordered_set<Node*> queued;
    for (auto& n : root_nodes)
      if (deps[n.get()] == 0 && queued.insert(n.get()).second) ready.push(n);
  }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    std::vector<Tensor> buf = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    buf.resize(std::max<std::size_t>(node->outputs.size(), 1));

    for (auto& [nr, weak] : node->retained)
      if (auto impl = weak.lock()) accumulate_into(impl, buf[nr], create_graph, false);
    if (auto it = captures.find(node.get()); it != captures.end())
      for (auto [nr, idx] : it->second) {
        results[idx] = buf[nr];
        reachable[idx] = true;
      }

    auto* acc = dynamic_cast<AccumulateGrad*>(node.get());
    if (acc) {
      if (!capture_mode) node->apply(std::move(buf));
      continue;
    }
    KILN_CHECK(!node->released(), node->name(),
               "trying to run backward through the graph a second time (its saved tensors were freed); "
               "pass retain_graph=true to the first backward");
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!buf[i].defined()) {
        const auto& o = node->outputs[i];
        buf[i] = zeros(o.shape, TensorOptions(o.dtype).device(o.device));
      }
    std::vector<Tensor> grads = node->apply(std::move(buf));
    if (!retain_graph) node->release();
    KILN_CHECK(grads.size() == node->next_edges.size(), node->name(),
               "backward returned {} gradients for {} inputs", grads.size(), node->next_edges.size());
    for (std::size_t k = 0; k < grads.size(); ++k) {
      const Edge& e = node->next_edges[k];
      if (!e.valid()) continue;
      if (grads[k].defined()) {
        if (anomaly_mode() && has_nonfinite(grads[k]))
          throw_error("autograd anomaly",
                      fmt::format("the backward of '{}' produced NaN or Inf in the gradient of its input {} "
                                  "(shape {})",
                                  node->name(), k, shape_str(grads[k].shape())));
        add_to(e, grads[k]);
      }
      if (--deps[e.node.get()] == 0) ready.push(e.node);
    }
  }
  if (capture_mode && !allow_unused)
    for (std::size_t i = 0; i < inputs.size(); ++i)
      KILN_CHECK(reachable[i], "grad", "input {} is not reachable from the outputs (pass allow_unused=true)", i);
  return results;
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
  KILN_CHECK(!r || is_floating_point(), "requires_grad_",
             "only floating point tensors can require gradients, got {}", dtype_name(dtype()));
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
    KILN_CHECK(g.shape() == shape(), "backward", "grad shape {} does not match tensor shape {}",
               shape_str(g.shape()), shape_str(shape()));
    KILN_CHECK(g.device() == device(), "backward", "grad is on {} but the tensor is on {}", g.device().str(),
               device().str());
    if (g.dtype() != dtype()) g = g.to(dtype());
  }
  autograd::run_backward({*this}, {g}, retain_graph || create_graph, create_graph);
}

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

}  // namespace kiln
