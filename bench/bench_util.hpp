#pragma once
// Clocks and resource counters shared by the benchmark programs (RESULT lines, bench/README.md).
#include <sys/resource.h>

#include <chrono>
#include <functional>
#include <vector>

namespace kiln::bench {

/// Monotonic wall time in seconds.
inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Peak resident set size of this process so far, MiB.
inline double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

/// User + system CPU time of this process, seconds.
inline double cpu_time_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

// The anchors' policy: >= 1 warm-up call and 0.5 s of warm-up, then 3..30 timed calls in ~2 s.
inline std::vector<double> time_reps(const std::function<void()>& setup, const std::function<void()>& fn) {
  double w0 = now_s();
  for (int i = 0; i < 1 || now_s() - w0 < 0.5; ++i) {
    setup();
    fn();
  }
  std::vector<double> t;
  double spent = 0;
  while (t.size() < 30 && (t.size() < 3 || spent < 2.0)) {
    setup();
    double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
    spent += t.back();
  }
  return t;
}

}  // namespace kiln::bench
