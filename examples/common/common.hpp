#pragma once
/// Small helpers shared by the example programs, so that each example file is about its model:
/// the common command-line flags, error reporting, a timer, and the run's logs (kiln::io's
/// Progress, MetricsLog, SummaryWriter and LineChart, written under --out and announced).
///
///   CLI::App app{"what this program does"};
///   examples::Flags flags{.steps = 2000, .batch = 64, .lr = 1e-3};
///   examples::add_common_flags(app, flags);
///   return examples::run(app, argc, argv, [&] {
///     Device dev = examples::setup(flags);        // threads, seed, device check
///     examples::Precision precision(flags, dev);  // --precision fp32 | bf16 | fp16
///     examples::RunLog log(flags, "demo", {"step", "train_loss"});
///     examples::Progress bar(flags.steps);
///     for (...) {
///       Tensor loss;
///       { auto mixed = precision.autocast(); loss = cross_entropy(model(x), y); }
///       opt.zero_grad();
///       precision.backward_step(loss, opt);
///       bar.step(step, fmt::format("loss {:.3f}", l));
///       if (step % 100 == 0) bar.note(log.row({double(step), l}));   // printed, CSV, TensorBoard
///     }
///     bar.finish();
///     log.close();                                  // "wrote runs/demo_log.csv (metrics, CSV)" ...
///   });
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <kiln/kiln.hpp>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

/// Checks a flag's text before CLI11 converts it: a whole number in [lo, hi]. One short line for
/// every failure ("--steps: -3 must be at least 1", "--steps: 99999999999999999999 is too large"),
/// where CLI11's own checks print a 300-digit bound or let an overflowing value saturate.
inline CLI::Validator whole(std::int64_t lo, std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
  const bool open = hi == std::numeric_limits<std::int64_t>::max();
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        std::int64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc::result_out_of_range) return s + (s[0] == '-' ? " is too small" : " is too large");
        if (ec != std::errc() || end != s.data() + s.size()) return s + " is not a whole number";
        if (v < lo) return fmt::format("{} must be at least {}", s, lo);
        if (v > hi) return fmt::format("{} must be at most {}", s, hi);
        return {};
      },
      open ? fmt::format("INT >= {}", lo) : fmt::format("INT in {}..{}", lo, hi));
}

/// The same for a real number: finite, in [lo, hi] (or (lo, hi] with `above_lo`).
inline CLI::Validator real(double lo, double hi = std::numeric_limits<double>::max(), bool above_lo = false) {
  const bool open = hi == std::numeric_limits<double>::max();
  return CLI::Validator(
      [lo, hi, above_lo](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return s + " is not a number";
        if (!std::isfinite(v)) return s + " is not a finite number";
        if (above_lo && v <= lo) return fmt::format("{} must be greater than {}", s, lo);
        if (v < lo) return fmt::format("{} must be at least {}", s, lo);
        if (v > hi) return fmt::format("{} must be at most {}", s, hi);
        return {};
      },
      open ? fmt::format("NUMBER {} {}", above_lo ? ">" : ">=", lo) : fmt::format("NUMBER in {}..{}", lo, hi));
}

/// "1 step", "2 steps".
inline std::string count_of(std::int64_t n, const std::string& noun) {
  return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s");
}

inline void add_common_flags(CLI::App& app, Flags& f) {
  app.add_option("--device", f.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--steps", f.steps, "training steps")->check(whole(1))->capture_default_str();
  app.add_option("--batch", f.batch, "examples per step")->check(whole(1))->capture_default_str();
  app.add_option("--lr", f.lr, "peak learning rate")
      ->check(real(0, std::numeric_limits<double>::max(), true))
      ->capture_default_str();
  app.add_option("--seed", f.seed, "random seed: the same seed gives the same numbers")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads")->check(whole(1, 1024))->capture_default_str();
  app.add_option("--out", f.out, "folder for logs, plots and checkpoints (created if missing)");
  app.add_option("--eval-every", f.eval_every, "steps between evaluations (0 = ten per run)")->check(whole(0));
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

/// Stops a run whose training loss is no longer finite (it diverged, often from a too-high --lr)
/// at once, rather than training on NaN and writing NaN logs and checkpoints.
inline void check_loss(double loss, std::int64_t step, const Flags& f) {
  if (!std::isfinite(loss))
    throw std::runtime_error(
        fmt::format("step {}: the training loss is {}: training diverged (is --lr {} too high?); stopped", step, loss,
                    f.lr));
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

/// The arguments CLI11 left over, in the order they were given (it reports them backwards).
inline std::string unknown_arguments(const CLI::App& app, int argc, char** argv) {
  std::map<std::string, int> left;
  for (auto& a : app.remaining()) ++left[a];
  std::string out;
  for (int i = 1; i < argc; ++i)
    if (auto it = left.find(argv[i]); it != left.end() && it->second > 0)
      --it->second, out += (out.empty() ? "" : " ") + it->first;
  return out;
}

/// The line run() reports an error with. In a run of several processes (DataParallel, under
/// mpirun) it is held for DataParallel::exit, which prints it once when every rank failed with
/// the same line (a bad flag: they all parse the same command line), else on each failing rank.
inline std::string& held_error() {
  static std::string line;
  return line;
}
inline void report_error(const std::string& line) {
  std::fflush(stdout);
  if (kiln::distributed::is_initialized() && kiln::distributed::world_size() > 1) held_error() = line;
  else fmt::print(stderr, "{}", line);
}

/// Parses the flags and runs `body`, turning every error into one readable line: exit code 2 for
/// a bad command line, 1 for an error while running. --help prints the flags and exits with 0.
inline int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ExtrasError&) {
    report_error(fmt::format("error: unknown arguments, in the order given: {} (--help lists the flags)\n",
                             unknown_arguments(app, argc, argv)));
    return 2;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help (only rank 0 has a stdout)
    report_error(fmt::format("error: {} (--help lists the flags)\n", e.what()));
    return 2;
  }
  try {
    body();
    return 0;
  } catch (const UsageError& e) {
    report_error(fmt::format("error: {}\n", e.what()));
  } catch (const kiln::Error& e) {
    report_error(fmt::format("kiln error: {}\n", e.what()));
  } catch (const std::exception& e) {
    report_error(fmt::format("error: {}\n", e.what()));
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

using kiln::io::Progress;  // the progress bar with an ETA (kiln/io/progress.hpp)

/// Says that a file was written, so every output of a run can be found from its log.
inline void announce(const std::string& path, const std::string& what) {
  fmt::print("wrote {} ({})\n", path, what);
  std::fflush(stdout);
}

/// The run's metrics: each row is printed (the returned line), appended to --out/<name>_log.csv and
/// sent to a TensorBoard event file in --out/tensorboard. Without --out the rows are only kept in
/// memory (for the final numbers). close() checks that the files were written and announces them.
class RunLog {
 public:
  RunLog(const Flags& f, const std::string& name, std::vector<std::string> columns, double resume_before = 0)
      : metrics(out_path(f, name + "_log.csv"), std::move(columns), resume_before) {
    if (f.out.empty()) return;
    tb_dir_ = out_path(f, "tensorboard");
    tb_ = std::make_unique<kiln::io::SummaryWriter>(tb_dir_);
    metrics.attach(*tb_);
  }
  /// Records one row (the first value is the step) and returns it as the line to print.
  std::string row(const std::vector<double>& values) { return metrics.row(values); }
  void close() {
    metrics.close();
    if (!metrics.path().empty()) announce(metrics.path(), "metrics, CSV");
    if (tb_) {
      tb_->close();
      announce(tb_->path(), fmt::format("TensorBoard events: tensorboard --logdir {}", tb_dir_));
    }
  }
  kiln::io::MetricsLog metrics;

 private:
  std::string tb_dir_;
  std::unique_ptr<kiln::io::SummaryWriter> tb_;
};

/// Writes `chart` to --out/<name> and announces it (nothing without --out). A kiln built without
/// Cairo cannot draw: the run says so and goes on (the CSV holds the same numbers).
inline void write_chart(const Flags& f, const kiln::io::LineChart& chart, const std::string& name,
                        const std::string& what) {
  if (f.out.empty()) return;
  if (!kiln::io::charts_available()) {
    fmt::print("no {}: this kiln was built without Cairo (the CSV log has the numbers)\n", name);
    return;
  }
  const std::string path = out_path(f, name);
  chart.write_png(path);
  announce(path, what);
}

/// Number of parameters, for the banner line.
inline std::string count_str(std::int64_t n) {
  return n >= 1000000 ? fmt::format("{:.2f}M", n / 1e6)
         : n >= 1000  ? fmt::format("{:.1f}k", n / 1e3)
                      : fmt::format("{}", n);
}

}  // namespace examples
