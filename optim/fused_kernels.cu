// The CUDA kernels of kiln's optimizers: each update rule of update_rules.hpp instantiated by
// nvcc through core/cuda/foreach.cuh (built only with CUDA; see optim/CMakeLists.txt).
#include "fused.cuh"
#include "update_rules.hpp"

namespace kiln::optim {

template void cuda_update<SGDStep>(const SGDStep&, const UpdateTensors&);
template void cuda_update<AdamStep>(const AdamStep&, const UpdateTensors&);
template void cuda_update<RMSpropStep>(const RMSpropStep&, const UpdateTensors&);
template void cuda_update<AdagradStep>(const AdagradStep&, const UpdateTensors&);
template void cuda_update<LionStep>(const LionStep&, const UpdateTensors&);

}  // namespace kiln::optim
