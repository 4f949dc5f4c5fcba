#pragma once
/// kiln::StateDict — the one serializable state of kiln objects: named tensors in insertion order
/// (the OrderedDict it is) plus named scalars. Modules fill the tensors (parameters and
/// persistent buffers); optimizers and schedulers add scalars (step counters, per-group
/// hyper-parameters). Doubles hold every scalar exactly (ints up to 2^53), so a save/load round
/// trip resumes training bit for bit. io/ writes it to safetensors files.
///   StateDict sd = model->state_dict();   // sd["fc.weight"], for (auto& [name, t] : sd)
///   StateDict o = opt.state_dict();       // o.at("state.3.exp_avg"), o.scalars.at("group.0.lr")
///   opt2.load_state_dict(o);
#include <map>
#include <string>
#include <utility>

#include "ordered_dict.hpp"
#include "tensor.hpp"

namespace kiln {

class StateDict : public OrderedDict<Tensor> {
 public:
  using OrderedDict<Tensor>::OrderedDict;
  StateDict() = default;
  StateDict(OrderedDict<Tensor> tensors) : OrderedDict<Tensor>(std::move(tensors)) {}  // NOLINT: implicit

  /// Named numbers (bools as 0/1); empty for modules.
  std::map<std::string, double> scalars;
};

}  // namespace kiln
