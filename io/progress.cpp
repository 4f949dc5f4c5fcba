#include "progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

#include "../core/error.hpp"

namespace kiln::io {

std::string format_duration(double s) {
  const auto t = static_cast<long long>(std::max(0.0, s) + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

Progress::Progress(std::int64_t total, std::int64_t every, std::int64_t first, std::FILE* out)
    : total_(total),
      every_(every > 0 ? every : std::max<std::int64_t>(1, total / 20)),
      first_(first),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()) {
  KILN_CHECK(total >= 1, "Progress", "total {} must be at least 1", total);
  KILN_CHECK(first >= 0 && first <= total, "Progress", "first {} is outside 0..{}", first, total);
}

double Progress::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::step(std::int64_t step, const std::string& metrics) {
  const double s = seconds();
  // The ETA from this run's own pace: a resumed run's earlier steps took no time here.
  const double eta = step > first_ ? s / double(step - first_) * double(total_ - step) : 0.0;
  if (tty_) {
    if (s - last_draw_ < 0.1 && step != total_) return;
    last_draw_ = s;
    const int width = 24;
    const int filled = static_cast<int>(width * std::clamp<std::int64_t>(step, 0, total_) / total_);
    line_ = fmt::format("[{}{}] {}/{}  {}  {} left", std::string(filled, '#'), std::string(width - filled, '.'), step,
                        total_, metrics, format_duration(eta));
    fmt::print(out_, "\r\033[K{}", line_);
  } else if (step % every_ == 0 || step == total_) {
    fmt::print(out_, "step {:>{}}/{}  {}  ({} elapsed, {} left)\n", step, fmt::formatted_size("{}", total_), total_,
               metrics, format_duration(s), format_duration(eta));
  }
  std::fflush(out_);
}

void Progress::note(const std::string& text) {
  if (tty_ && !line_.empty()) fmt::print(out_, "\r\033[K");
  fmt::print(out_, "{}\n", text);
  if (tty_ && !line_.empty()) fmt::print(out_, "{}", line_);
  std::fflush(out_);
}

void Progress::finish() {
  if (tty_ && !line_.empty()) fmt::print(out_, "\n");
  line_.clear();
  std::fflush(out_);
}

}  // namespace kiln::io
