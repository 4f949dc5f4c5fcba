// all_reduce latency and bandwidth of kiln::distributed on float32 buffers of 1 KiB .. 64 MiB.
// Run under mpirun: `mpirun -np 2 build/bench/allreduce_bench` (containers: add
// --allow-run-as-root, and --oversubscribe beyond the core count). Rank 0 prints one RESULT
// line per size: median and best of the timed calls, algbw = bytes / time, busbw = algbw *
// 2(n-1)/n (the bytes a ring moves per rank, comparable across world sizes, as nccl-tests report).
// Every rank runs the same fixed number of calls per size (a time-based count could differ
// between ranks and leave one waiting in a collective the others never join).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <kiln/kiln.hpp>

#include "bench_util.hpp"

namespace dist = kiln::distributed;

int main(int argc, char** argv) {
  dist::InitGuard guard;
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int n = dist::world_size();
  const std::int64_t top = quick ? (64 << 10) : (64 << 20);
  for (std::int64_t bytes = 1 << 10; bytes <= top; bytes *= 4) {
    kiln::Tensor t = kiln::ones({bytes / 4});
    // ~64 MiB of traffic per size, between 5 and 200 calls.
    const int reps = static_cast<int>(std::clamp<std::int64_t>((std::int64_t{64} << 20) / bytes, 5, quick ? 5 : 200));
    for (int i = 0; i < 3; ++i) dist::all_reduce(t);
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      dist::barrier();
      double t0 = kiln::bench::now_s();
      dist::all_reduce(t);
      times.push_back(kiln::bench::now_s() - t0);
    }
    std::sort(times.begin(), times.end());
    double med = times[times.size() / 2], best = times.front();
    double algbw = static_cast<double>(bytes) / med / 1e9;
    if (dist::rank() == 0)
      fmt::print(
          "RESULT all_reduce impl=kiln backend={} world={} bytes={} median_us={:.1f} min_us={:.1f} "
          "algbw_gbps={:.3f} busbw_gbps={:.3f}\n",
          dist::backend_name(), n, bytes, med * 1e6, best * 1e6, algbw, algbw * 2.0 * (n - 1) / n);
  }
}
