// kiln::tensor({{1, 2}, {3, 4}}): the nested list's shape is read along its first elements, and
// every other element must agree with it (else kiln::Error names the ragged position).
#include <fmt/format.h>

#include <string>

#include "tensor.hpp"

namespace kiln {
namespace {

std::string position_str(const std::vector<std::int64_t>& pos) {
  std::string s;
  for (auto p : pos) s += fmt::format("[{}]", p);
  return s;
}

struct Flattener {
  Shape shape;
  std::vector<Scalar> values;
  std::vector<std::int64_t> pos;  // where the walk is, for error messages

  void walk(const NestedList& node, std::size_t depth) {
    if (depth == shape.size()) {
      KILN_CHECK(!node.is_list(), "tensor",
                 "ragged nested list: element {} is a list, but the elements before it are numbers at that depth",
                 position_str(pos));
      values.push_back(node.value());
      return;
    }
    KILN_CHECK(node.is_list(), "tensor",
               "ragged nested list: element {} is a number, but a list of length {} is expected there (shape {})",
               position_str(pos), shape[depth], shape_str(shape));
    const auto n = static_cast<std::int64_t>(node.items().size());
    KILN_CHECK(n == shape[depth], "tensor",
               "ragged nested list: element {} has length {}, but the elements before it have length {} (shape {})",
               pos.empty() ? std::string("at the top") : position_str(pos), n, shape[depth], shape_str(shape));
    for (std::int64_t i = 0; i < n; ++i) {
      pos.push_back(i);
      walk(node.items()[i], depth + 1);
      pos.pop_back();
    }
  }
};

Flattener flatten_nested(std::initializer_list<NestedList> values) {
  Flattener f;
  f.shape.push_back(static_cast<std::int64_t>(values.size()));
  // The shape along the first elements; an empty list ends it.
  const NestedList* first = values.size() ? values.begin() : nullptr;
  while (first && first->is_list()) {
    f.shape.push_back(static_cast<std::int64_t>(first->items().size()));
    first = first->items().empty() ? nullptr : &first->items()[0];
  }
  f.values.reserve(static_cast<std::size_t>(numel_of(f.shape)));
  for (std::size_t i = 0; i < values.size(); ++i) {
    f.pos = {static_cast<std::int64_t>(i)};
    f.walk(values.begin()[i], 1);
  }
  return f;
}

}  // namespace

Tensor tensor(std::initializer_list<NestedList> values, TensorOptions opts) {
  Flattener f = flatten_nested(values);
  DType dt = opts.dtype();
  const std::size_t n = f.values.size();
  if (dt == kBool) {
    std::vector<bool> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = f.values[i].to<bool>();
    return tensor(v, f.shape, opts);
  }
  if (dt == kInt64) {
    std::vector<std::int64_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = f.values[i].to<std::int64_t>();
    return tensor(v, f.shape, opts);
  }
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = f.values[i].to_double();
  return tensor(v, f.shape, opts);
}

Tensor tensor(std::initializer_list<NestedList> values) {
  // torch.tensor's inference: all bools -> bool, else all integers (bools count) -> int64,
  // else the default floating dtype, float32 (also for lists without numbers).
  bool all_bool = true, any_float = false, any_value = false;
  std::vector<const NestedList*> stack;
  for (const auto& v : values) stack.push_back(&v);
  while (!stack.empty()) {
    const NestedList* node = stack.back();
    stack.pop_back();
    if (node->is_list()) {
      for (const auto& c : node->items()) stack.push_back(&c);
      continue;
    }
    any_value = true;
    all_bool = all_bool && node->value().kind() == kBool;
    any_float = any_float || node->value().is_floating();
  }
  DType dt = any_float || !any_value ? kFloat32 : all_bool ? kBool : kInt64;
  return tensor(values, TensorOptions(dt));
}

}  // namespace kiln
