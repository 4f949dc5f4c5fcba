// The CUDA entry points of a build without CUDA: queries answer "no GPU", everything else
// throws kiln::Error naming the op. Keeps kiln free of the CUDA runtime (KILN_CUDA=OFF).
#include <fmt/format.h>

#include "../backend.hpp"
#include "cuda.hpp"

namespace kiln::cuda {

namespace {
constexpr const char* kReason = "kiln was built without CUDA (configure with -DKILN_CUDA=ON where nvcc is installed)";
[[noreturn]] void unavailable(const char* op) { throw_error(op, kReason); }
}  // namespace

Backend& backend_for_device(int index, const char* op) {
  throw_error(op, fmt::format("device cuda:{} is not available: {}", index, kReason));
}

Allocator& pinned_host_allocator(const char* op) {
  throw_error(op, fmt::format("page-locked memory needs a CUDA GPU: {}", kReason));
}

bool is_built() { return false; }
int device_count() { return 0; }
bool is_available() { return false; }
std::string unavailable_reason() { return kReason; }
std::string device_name(int) { unavailable("cuda.device_name"); }
void synchronize(int) { unavailable("cuda.synchronize"); }
AllocatorStats allocator_stats(int) { unavailable("cuda.allocator_stats"); }
void empty_cache(int) { unavailable("cuda.empty_cache"); }
AllocatorStats pinned_stats() { unavailable("cuda.pinned_stats"); }
AllocatorStats host_allocator_stats() { unavailable("cuda.host_allocator_stats"); }
void host_empty_cache() { unavailable("cuda.host_empty_cache"); }
// A setting, not an action: portable programs may set it whether or not a GPU is there.
namespace {
bool tf32 = false;
}
void set_allow_tf32(bool allow) { tf32 = allow; }
bool allow_tf32() { return tf32; }

}  // namespace kiln::cuda
