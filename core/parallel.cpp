#include "parallel.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <atomic>
#include <cstdlib>

#include "cpu/loops.hpp"
#include "error.hpp"

// Defined by core/startup.cpp (the kiln::startup library) when it is linked into the program:
// the GOMP_SPINCOUNT it gave libgomp, or < 0 when it gave none.
extern "C" __attribute__((weak)) long kiln_startup_spin_count;

namespace kiln {

namespace cpu {
void blas_set_num_threads(int n);  // core/cpu/blas.cpp
}

namespace {
int init_threads() {
  int n = omp_get_max_threads();
  if (const char* e = std::getenv("KILN_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(e, &end, 10);
    if (end != e && *end == '\0' && v > 0) n = static_cast<int>(v);
  }
  omp_set_num_threads(n);
  return n;
}
// Atomic: set_num_threads may run on one thread while kernels on others read the count.
std::atomic<int>& threads() {
  static std::atomic<int> n{init_threads()};
  return n;
}
}  // namespace

void set_num_threads(int n) {
  KILN_CHECK(n >= 1, "set_num_threads", "thread count must be >= 1, got {}", n);
  threads().store(n, std::memory_order_relaxed);
  omp_set_num_threads(n);
  cpu::blas_set_num_threads(n);
}

namespace {
thread_local bool t_serial = false;  // inside a SingleThreadGuard
}

int get_num_threads() { return t_serial ? 1 : threads().load(std::memory_order_relaxed); }

// omp_set_num_threads sets the calling thread's ICV only, which is what BLAS and oneDNN read.
SingleThreadGuard::SingleThreadGuard() : prev_omp_(omp_get_max_threads()), prev_serial_(t_serial) {
  t_serial = true;
  omp_set_num_threads(1);
}

SingleThreadGuard::~SingleThreadGuard() {
  t_serial = prev_serial_;
  omp_set_num_threads(prev_omp_);
}

std::string wait_policy() {
  if (const char* p = std::getenv("OMP_WAIT_POLICY")) return fmt::format("OMP_WAIT_POLICY={}", p);
  if (const char* s = std::getenv("GOMP_SPINCOUNT")) return fmt::format("GOMP_SPINCOUNT={}", s);
  if (!&kiln_startup_spin_count)
    return "libgomp's default (kiln::startup is not linked into this program: link it, or set GOMP_SPINCOUNT=3000)";
  if (kiln_startup_spin_count >= 0) return fmt::format("GOMP_SPINCOUNT={} (kiln's default)", kiln_startup_spin_count);
  return "libgomp's default (the environment had no variable kiln's start-up could borrow: set GOMP_SPINCOUNT=3000)";
}

void parallel_chunks(std::int64_t n, std::int64_t grain, void (*body)(std::int64_t, std::int64_t, const void*),
                     const void* ctx) {
  cpu::parallel_range(n, grain, [&](std::int64_t b, std::int64_t e) { body(b, e, ctx); });
}

}  // namespace kiln
