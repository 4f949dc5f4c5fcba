#pragma once
/// Small helpers shared by the example programs, so that each example file is about its model:
/// the common command-line flags, error reporting, a timer and a progress display.
///
///   CLI::App app{"what this program does"};
///   examples::Flags flags{.steps = 2000, .batch = 64, .lr = 1e-3};
///   examples::add_common_flags(app, flags);
///   return examples::run(app, argc, argv, [&] {
///     Device dev = examples::setup(flags);        // threads, seed, device check
///     examples::Progress bar(flags.steps);
///     for (...) bar.step(step, fmt::format("loss {:.3f}", l));
///   });
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <kiln/kiln.hpp>
#include <string>

namespace examples {

using kiln::Device;

/// Flags every example accepts. Each program picks its own defaults before registering them.
struct Flags {
  std::string device = "cpu";
  std::int64_t steps = 1000;
  std::int64_t batch = 64;
  double lr = 1e-3;
  std::uint64_t seed = 0;
  int threads = 2;
  std::string out;              // folder for logs, plots and checkpoints ("" = write nothing)
  std::int64_t eval_every = 0;  // 0 = about ten evaluations per run
};

inline void add_common_flags(CLI::App& app, Flags& f) {
  app.add_option("--device", f.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--steps", f.steps, "training steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", f.batch, "examples per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", f.lr, "peak learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", f.seed, "random seed: the same seed gives the same numbers")->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--out", f.out, "folder for logs, plots and checkpoints (created if missing)");
  app.add_option("--eval-every", f.eval_every, "steps between evaluations (0 = ten per run)")
      ->check(CLI::NonNegativeNumber);
}

/// A bad flag combination or a data problem the user can fix: printed without a stack of context.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Applies the common flags: thread count, the global seed, and the device (a clear error if
/// CUDA was asked for but is not there).
inline Device setup(const Flags& f) {
  kiln::set_num_threads(f.threads);
  kiln::manual_seed(f.seed);
  if (f.device == "cpu") return Device::cpu();
#ifndef KILN_WITH_CUDA
  throw UsageError("--device cuda: this kiln was built without the CUDA backend (configure with -DKILN_CUDA=ON)");
#else
  if (!kiln::cuda_is_available()) throw UsageError("--device cuda: no CUDA GPU is visible to this process");
  return Device::cuda(0);
#endif
}

/// How often to evaluate: the flag, or about ten times per run.
inline std::int64_t eval_interval(const Flags& f) {
  return f.eval_every > 0 ? f.eval_every : std::max<std::int64_t>(1, f.steps / 10);
}

/// Creates the --out folder (if any) and returns the path of `name` inside it ("" without --out).
inline std::string out_path(const Flags& f, const std::string& name) {
  if (f.out.empty()) return {};
  std::error_code ec;
  std::filesystem::create_directories(f.out, ec);
  if (ec) throw UsageError(fmt::format("--out {}: cannot create the folder: {}", f.out, ec.message()));
  return (std::filesystem::path(f.out) / name).string();
}

/// Parses the flags and runs `body`, turning every error into one readable line and exit code 1
/// (CLI11 prints its own message for a bad flag and returns 105/106/...).
inline int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    body();
    return 0;
  } catch (const UsageError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
  } catch (const kiln::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "kiln error: {}\n", e.what());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}

/// Wall-clock seconds since construction (or the last reset()).
class Timer {
 public:
  Timer() { reset(); }
  void reset() { t0_ = std::chrono::steady_clock::now(); }
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

inline std::string format_duration(double s) {
  const auto t = static_cast<long>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

/// Training progress. On a terminal: one bar redrawn in place. Otherwise (a log file, CI): a
/// plain line every `every` steps, so logs stay readable. note() prints a permanent line
/// (an evaluation result) without breaking the bar.
class Progress {
 public:
  /// `first`: the step a resumed run starts after (for the time estimate).
  explicit Progress(std::int64_t total, std::int64_t every = 0, std::int64_t first = 0)
      : total_(total),
        every_(every > 0 ? every : std::max<std::int64_t>(1, total / 20)),
        first_(first),
        tty_(isatty(fileno(stdout)) != 0) {}

  void step(std::int64_t step, const std::string& metrics) {
    const double s = timer_.seconds();
    const double eta = step > first_ ? s / double(step - first_) * double(total_ - step) : 0.0;
    if (tty_) {
      if (s - last_draw_ < 0.1 && step != total_) return;  // ~10 redraws a second at most
      last_draw_ = s;
      const int width = 24, filled = static_cast<int>(width * step / std::max<std::int64_t>(1, total_));
      line_ = fmt::format("[{}{}] {}/{}  {}  {} left", std::string(filled, '#'), std::string(width - filled, '.'), step,
                          total_, metrics, format_duration(eta));
      fmt::print("\r\033[K{}", line_);
      std::fflush(stdout);
    } else if (step % every_ == 0 || step == total_) {
      fmt::print("step {:>{}}/{}  {}  ({} elapsed)\n", step, fmt::formatted_size("{}", total_), total_, metrics,
                 format_duration(s));
      std::fflush(stdout);
    }
  }
  void note(const std::string& text) {
    if (tty_ && !line_.empty()) fmt::print("\r\033[K");
    fmt::print("{}\n", text);
    if (tty_ && !line_.empty()) fmt::print("{}", line_);
    std::fflush(stdout);
  }
  /// Ends the bar's line (call before printing the final results).
  void finish() {
    if (tty_ && !line_.empty()) fmt::print("\n");
    line_.clear();
    std::fflush(stdout);
  }
  double seconds() const { return timer_.seconds(); }

 private:
  std::int64_t total_, every_, first_;
  bool tty_;
  Timer timer_;
  double last_draw_ = -1.0;
  std::string line_;
};

/// Number of parameters, for the banner line.
inline std::string count_str(std::int64_t n) {
  return n >= 1000000 ? fmt::format("{:.2f}M", n / 1e6)
         : n >= 1000  ? fmt::format("{:.1f}k", n / 1e3)
                      : fmt::format("{}", n);
}

}  // namespace examples
