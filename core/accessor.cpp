#include "accessor.hpp"

#include <fmt/format.h>

namespace kiln::detail {

void check_accessor(const Tensor& t, DType want, std::size_t dims) {
  KILN_CHECK(t.defined(), "accessor", "the tensor is undefined");
  KILN_CHECK(t.device().is_cpu(), "accessor",
             "accessor reads host memory, but the tensor is on {}; call .to(kiln::Device::cpu()) first",
             t.device().str());
  KILN_CHECK(t.dtype() == want, "accessor", "requested {} elements from a {} tensor", dtype_name(want),
             dtype_name(t.dtype()));
  KILN_CHECK(t.dim() == static_cast<std::int64_t>(dims), "accessor",
             "requested {} dims from a tensor of shape {} ({} dims)", dims, shape_str(t.shape()), t.dim());
}

void accessor_out_of_range(std::int64_t index, std::int64_t size) {
  throw_error("accessor", fmt::format("index {} is out of range for a dim of size {}", index, size));
}

}  // namespace kiln::detail
