#include "function.hpp"

#include <fmt/format.h>

namespace kiln::autograd {

std::vector<Tensor> Context::saved() const {
  std::vector<Tensor> out;
  if (!node_) return to_save_;  // forward ran without recording
  for (auto s : slots_) out.push_back(node_->saved(s));
  return out;
}

std::vector<Tensor> CustomNode::apply(std::vector<Tensor>&& grads) {
  std::vector<Tensor> r = bw_(ctx, grads);
  KILN_CHECK(r.size() == num_inputs, name(), "backward returned {} gradients but forward took {} tensor inputs",
             r.size(), num_inputs);
  for (std::size_t i = 0; i < r.size(); ++i)
    if (r[i].defined())
      KILN_CHECK(r[i].shape() == input_shapes[i], name(),
                 "backward returned a gradient of shape {} for input {} of shape {}", shape_str(r[i].shape()), i,
                 shape_str(input_shapes[i]));
  return r;
}

std::vector<Tensor> finish_custom(const std::shared_ptr<CustomNode>& node, const std::vector<Tensor>& inputs,
                                  std::vector<Tensor> outputs) {
  if (!any_requires_grad(inputs)) return outputs;
  // Outputs get fresh aliases so an output that is an input does not rewrite the input's history.
  std::vector<Tensor> originals = outputs;
  for (auto& o : outputs) {
    KILN_CHECK(o.defined(), node->name(), "forward returned an undefined tensor");
    o = Tensor::make_view(o, o.shape(), o.strides(), o.offset());
  }
  std::vector<Tensor> diff;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    bool nd = false;
    for (auto& t : node->ctx.non_diff_) nd = nd || t.is_same(originals[i]);
    if (!nd) diff.push_back(outputs[i]);
  }
  node->sequence_nr = next_sequence_nr();
  node->next_edges.clear();
  for (const auto& in : inputs) {
    node->next_edges.push_back(gradient_edge(in));
    node->input_shapes.push_back(in.shape());
  }
  for (std::uint32_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    node->outputs.push_back({o.shape(), o.dtype(), o.device()});
    bool nd = false;
    for (auto& t : node->ctx.non_diff_) nd = nd || t.is_same(originals[i]);
    if (nd || !o.is_floating_point()) continue;
    auto m = std::make_unique<AutogradMeta>();
    m->requires_grad = true;
    m->grad_fn = node;
    m->output_nr = i;
    o.impl_ptr()->autograd = std::move(m);
  }
  node->ctx.node_ = node.get();
  for (const auto& t : node->ctx.to_save_) {
    bool is_out = false;
    for (std::size_t i = 0; i < outputs.size(); ++i)
      if (t.is_same(originals[i])) {
        node->ctx.slots_.push_back(node->save(outputs[i], true));
        is_out = true;
        break;
      }
    if (!is_out) node->ctx.slots_.push_back(node->save(t));
  }
  node->ctx.to_save_.clear();
  node->ctx.non_diff_.clear();
  return outputs;
}

}  // namespace kiln::autograd
