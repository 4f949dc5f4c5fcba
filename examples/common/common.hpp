#pragma once
/// Small helpers shared by the example programs, so that each example file is about its model:
/// the common command-line flags, error reporting, a timer and a progress display.
///
///   CLI::App app{"what this program does"};
///   examples::Flags flags{.steps = 2000, .batch = 64, .lr = 1e-3};
///   examples::add_common_flags(app, flags);
///   return examples::run(app, argc, argv, [&] {
///     Device dev = examples::setup(flags);        // threads, seed, device check
///     examples::Precision precision(flags, dev);  // --precision fp32 | bf16 | fp16
///     examples::Progress bar(flags.steps);
///     for (...) {
///       Tensor loss;
///       { auto mixed = precision.autocast(); loss = cross_entropy(model(x), y); }
///       opt.zero_grad();
///       precision.backward_step(loss, opt);
///       bar.step(step, fmt::format("loss {:.3f}", l));
///     }
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
  std::string out = {};            // folder for logs, plots and checkpoints ("" = write nothing)
  std::int64_t eval_every = 0;     // 0 = about ten evaluations per run
  std::string precision = "fp32";  // fp32, bf16 or fp16 (mixed precision through kiln::autocast)
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
  app.add_option("--precision", f.precision,
                 "fp32, or mixed precision: bf16 / fp16 matmuls and attention (float32 weights, norms and losses; "
                 "fp16 adds loss scaling)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
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

/// --precision for a training loop: the autocast region for forward passes (inactive for fp32) and
/// the backward + step, which for fp16 goes through a GradScaler (loss scaling; a step whose
/// gradients overflowed is skipped). bf16 needs no scaling. On the CPU, fp16 runs through float32
/// conversions: correct, but slower than fp32 (bf16 is the CPU's fast format).
class Precision {
 public:
  Precision(const Flags& f, Device dev)
      : name_(f.precision),
        dtype_(f.precision == "fp16" ? kiln::kFloat16 : kiln::kBFloat16),
        enabled_(f.precision != "fp32"),
        device_(dev),
        scaler_(dtype_, kiln::amp::GradScalerOptions().enabled(f.precision == "fp16")) {}

  /// Hold it around forward passes and losses: `{ auto mixed = precision.autocast(); ... }`.
  kiln::AutocastGuard autocast() const { return kiln::autocast(device_, dtype_, enabled_); }
  /// Backward of `loss`, optionally clips the global gradient norm to `clip_norm` (> 0; on the
  /// unscaled gradients), then the optimizer step. Returns false when fp16 skipped the step.
  bool backward_step(const kiln::Tensor& loss, kiln::optim::Optimizer& opt, double clip_norm = 0) {
    scaler_.scale(loss).backward();
    if (clip_norm > 0) {
      scaler_.unscale_(opt);
      kiln::optim::clip_grad_norm_(opt.parameters(), clip_norm);
    }
    const bool stepped = scaler_.step(opt);
    scaler_.update();
    return stepped;
  }
  /// The loss scaler (enabled for fp16 only), for checkpoints.
  kiln::amp::GradScaler& scaler() { return scaler_; }
  bool uses_scaler() const { return scaler_.is_enabled(); }
  /// "fp32", "bf16" or "fp16".
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  kiln::DType dtype_;
  bool enabled_;
  Device device_;
  kiln::amp::GradScaler scaler_;
};

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
