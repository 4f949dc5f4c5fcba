#pragma once
/// A training progress display with an ETA. On a terminal: one bar redrawn in place (at most ten
/// times a second). Otherwise (a log file, CI): a plain line every `every` steps, so logs stay
/// readable. note() prints a permanent line (an evaluation result) without breaking the bar.
///
///   kiln::io::Progress bar(steps);
///   for (std::int64_t step = 1; step <= steps; ++step) {
///     ...
///     bar.step(step, fmt::format("loss {:.3f}", loss));   // [#####.....] 500/1000  loss 1.234  0:41 left
///   }
///   bar.finish();
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace kiln::io {

/// "m:ss" or "h:mm:ss".
std::string format_duration(double seconds);

class Progress {
 public:
  /// `total` steps; a plain line every `every` steps (0 = twenty lines per run); `first`: the
  /// step a resumed run starts after (the ETA counts only steps run here). Prints to `out`.
  explicit Progress(std::int64_t total, std::int64_t every = 0, std::int64_t first = 0, std::FILE* out = stdout);
  /// Reports step `step` (first + 1 .. total) with a short metrics text.
  void step(std::int64_t step, const std::string& metrics);
  /// A permanent line above the bar.
  void note(const std::string& text);
  /// Ends the bar's line (call before printing the final results).
  void finish();
  /// Seconds since construction.
  double seconds() const;

 private:
  std::int64_t total_, every_, first_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  double last_draw_ = -1.0;
  std::string line_;
};

}  // namespace kiln::io
