#pragma once
/// nn::OrderedDict: the name nn code has always used for kiln::OrderedDict (core/ordered_dict.hpp),
/// which moved to core so that state dicts (core/state_dict.hpp) can be shared with optim/.
///   nn::OrderedDict<Tensor> params = model->named_parameters();
#include "../core/ordered_dict.hpp"

namespace kiln::nn {
using kiln::OrderedDict;
}  // namespace kiln::nn
