#pragma once
/// User-defined differentiable functions, in the style of torch::autograd::Function:
///
///   struct Cube : kiln::autograd::Function<Cube> {
///     static kiln::Tensor forward(kiln::autograd::Context& ctx, const kiln::Tensor& x) {
///       ctx.save_for_backward({x});
///       return x * x * x;                       // runs without recording
///     }
///     static std::vector<kiln::Tensor> backward(kiln::autograd::Context& ctx,
///                                               const std::vector<kiln::Tensor>& g) {
///       auto x = ctx.saved()[0];
///       return {g[0] * 3 * x * x};              // one gradient per tensor input
///     }
///   };
///   auto y = Cube::apply(x);
///
/// Broadcast inputs: when forward broadcasts one input against another (x (B, T, D) * w (D)),
/// the incoming gradient has the broadcast shape, and backward must reduce it to each input's
/// own shape with kiln::sum_to_shape (what kiln's own ops do); a gradient of the wrong shape is
/// an error: "[scale] backward returned a gradient of shape (2, 3, 4) for input 1 of shape (4,)".
///
///   struct Scale : kiln::autograd::Function<Scale> {
///     static const char* name() { return "scale"; }
///     static kiln::Tensor forward(kiln::autograd::Context& ctx, const kiln::Tensor& x, const kiln::Tensor& w) {
///       ctx.save_for_backward({x, w});
///       return x * w;
///     }
///     static std::vector<kiln::Tensor> backward(kiln::autograd::Context& ctx, const std::vector<kiln::Tensor>& g) {
///       auto s = ctx.saved();
///       return {kiln::sum_to_shape(g[0] * s[1], s[0].shape()), kiln::sum_to_shape(g[0] * s[0], s[1].shape())};
///     }
///   };
///
/// Check a Function with autograd::gradcheck (float64 inputs); nn/WRITING_LAYERS.md walks through
/// a complete one inside a module.
#include <any>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "grad_mode.hpp"
#include "node.hpp"

namespace kiln::autograd {

/// What forward hands to backward: saved tensors (version-checked) and any other values.
class CustomNode;
std::vector<Tensor> finish_custom(const std::shared_ptr<CustomNode>& node, const std::vector<Tensor>& inputs,
                                  std::vector<Tensor> outputs);

class Context {
 public:
  void save_for_backward(const std::vector<Tensor>& ts) { to_save_ = ts; }
  /// The tensors given to save_for_backward; throws if one was modified in place since.
  std::vector<Tensor> saved() const;
  /// Non-tensor values: ctx.data["k"] = 3; std::any_cast<int>(ctx.data["k"]).
  std::map<std::string, std::any> data;
  /// Marks outputs that are not differentiable (e.g. indices).
  void mark_non_differentiable(const std::vector<Tensor>& ts) { non_diff_ = ts; }

 private:
  friend class CustomNode;
  friend std::vector<Tensor> finish_custom(const std::shared_ptr<CustomNode>&, const std::vector<Tensor>&,
                                           std::vector<Tensor>);
  std::vector<Tensor> to_save_;
  std::vector<Tensor> non_diff_;
  Node* node_ = nullptr;
  std::vector<std::size_t> slots_;
};

class CustomNode final : public Node {
 public:
  using Backward = std::vector<Tensor> (*)(Context&, const std::vector<Tensor>&);
  CustomNode(const char* name, Backward bw) : name_(name), bw_(bw) {}
  const char* name() const override { return name_; }
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override;
  Context ctx;
  std::size_t num_inputs = 0;
  std::vector<Shape> input_shapes;

 private:
  const char* name_;
  Backward bw_;
};

/// Wires a custom function into the graph (implementation detail of Function::apply).
std::vector<Tensor> finish_custom(const std::shared_ptr<CustomNode>& node, const std::vector<Tensor>& inputs,
                                  std::vector<Tensor> outputs);

namespace detail {
inline void collect(std::vector<Tensor>& out, const Tensor& t) { out.push_back(t); }
template <typename T>
void collect(std::vector<Tensor>&, const T&) {}
}  // namespace detail

/// CRTP base: derive, write static forward(Context&, args...) returning a Tensor or a
/// std::vector<Tensor>, and static backward(Context&, grads) returning one gradient per
/// Tensor argument (an undefined Tensor for none). Override `static const char* name()`
/// to name the op in error messages.
template <typename F>
struct Function {
  static const char* name() { return "custom_function"; }

  template <typename... Args>
  static auto apply(Args&&... args) {
    std::vector<Tensor> inputs;
    (detail::collect(inputs, args), ...);
    auto node = std::make_shared<CustomNode>(F::name(), &F::backward);
    node->num_inputs = inputs.size();
    using R = decltype(F::forward(node->ctx, std::forward<Args>(args)...));
    std::vector<Tensor> outs;
    R result;
    {
      NoGradGuard ng;
      result = F::forward(node->ctx, std::forward<Args>(args)...);
    }
    if constexpr (std::is_same_v<R, Tensor>) outs = {result};
    else outs = result;
    outs = finish_custom(node, inputs, std::move(outs));
    if constexpr (std::is_same_v<R, Tensor>) return outs[0];
    else return outs;
  }
};

}  // namespace kiln::autograd
