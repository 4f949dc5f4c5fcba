#pragma once
/// One thread pool (OpenMP) for every CPU kernel, BLAS included.
///   kiln::set_num_threads(2);   // or KILN_NUM_THREADS=2 in the environment
///   fmt::print("{}\n", kiln::wait_policy());   // "GOMP_SPINCOUNT=3000 (kiln's default)"
/// Idle pool threads spin briefly, then sleep: kiln's default, set before the OpenMP runtime
/// starts, so kiln stays fast beside other busy processes; an OMP_WAIT_POLICY or GOMP_SPINCOUNT
/// in the environment wins (core/README.md, "Threads").
#include <cstdint>
#include <string>

namespace kiln {

void set_num_threads(int n);
/// The threads a kernel called on this thread may use: set_num_threads' value, or 1 inside a
/// SingleThreadGuard.
int get_num_threads();

/// While alive, kiln's CPU kernels (and OpenMP-threaded libraries: BLAS, oneDNN) called on this
/// thread run on this thread alone instead of starting an OpenMP team. For helper threads beside
/// training (kiln::data's loader workers) so they do not compete with the compute pool:
///   std::thread([] { kiln::SingleThreadGuard serial; /* stack, index_select, ... */ });
class SingleThreadGuard {
 public:
  SingleThreadGuard();
  ~SingleThreadGuard();
  SingleThreadGuard(const SingleThreadGuard&) = delete;
  SingleThreadGuard& operator=(const SingleThreadGuard&) = delete;

 private:
  int prev_omp_;
  bool prev_serial_;
};

/// How idle pool threads wait and who chose it: the environment's OMP_WAIT_POLICY /
/// GOMP_SPINCOUNT, kiln's default, or "libgomp's default (why)" where kiln's start-up entry is not
/// in the program (an executable that links kiln only through a shared library: link
/// kiln::startup into it) or found no environment variable to borrow (an empty environment).
std::string wait_policy();

/// Minimum elements per thread before a loop is split; below it kernels run serially.
inline constexpr std::int64_t kParallelGrain = 32768;

/// Runs body(begin, end, ctx) over [0, n) in contiguous chunks, one per pool thread (serially
/// below 2 * grain or inside a parallel region). For loops compiled outside kiln's OpenMP
/// sources, such as the header templates of core/foreach.hpp:
///   parallel_chunks(n, kParallelGrain, [](std::int64_t b, std::int64_t e, const void* ctx) { ... }, &data);
void parallel_chunks(std::int64_t n, std::int64_t grain, void (*body)(std::int64_t, std::int64_t, const void*),
                     const void* ctx);

}  // namespace kiln
