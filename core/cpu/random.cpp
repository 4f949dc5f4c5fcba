// Random fills: core/math/random.hpp's Philox blocks (shared with the CUDA backend) split over
// threads; the values do not depend on the split.
#include "../math/random.hpp"
#include "cpu_backend.hpp"
#include "loops.hpp"

namespace kiln::cpu {

void CpuBackend::random(const Tensor& out, const RandomSpec& spec) {
  const std::int64_t n = out.numel();
  visit_dtype(out.dtype(), [&](auto z) {
    using T = decltype(z);
    T* o = static_cast<T*>(out.raw_data());
    parallel_range(math::random_blocks<T>(n), 2048, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) math::random_block<T>(spec, blk, o, n);
    });
  });
}

}  // namespace kiln::cpu
