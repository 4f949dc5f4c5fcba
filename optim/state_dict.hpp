#pragma once
/// The serializable state of an optimizer or a learning-rate scheduler: named tensors
/// (per-parameter buffers such as Adam's exp_avg) and named scalars (step counters,
/// per-group hyper-parameters). Doubles hold every value exactly (ints up to 2^53), so a
/// save/load round trip resumes training bit for bit.
///   auto sd = opt.state_dict();           // sd.tensors["state.3.exp_avg"], sd.scalars["group.0.lr"]
///   opt2.load_state_dict(sd);
#include <map>
#include <string>

#include "../core/tensor.hpp"

namespace kiln::optim {

struct StateDict {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;
};

}  // namespace kiln::optim
