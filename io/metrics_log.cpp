#include "metrics_log.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "../core/error.hpp"
#include "summary_writer.hpp"

namespace kiln::io {
namespace {

// Rows of an earlier run's file whose step is below `before`; rows that do not parse are dropped.
std::vector<std::vector<double>> read_rows(const std::string& path, std::size_t columns, double before) {
  std::vector<std::vector<double>> rows;
  std::ifstream old(path);
  std::string line;
  for (std::getline(old, line); std::getline(old, line);) {
    std::vector<double> r;
    bool numbers = true;
    std::istringstream fields(line);
    for (std::string f; std::getline(fields, f, ',');) {
      char* end = nullptr;
      r.push_back(std::strtod(f.c_str(), &end));
      numbers = numbers && end != f.c_str();
    }
    if (numbers && r.size() == columns && r[0] < before) rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace

MetricsLog::MetricsLog(std::string path, std::vector<std::string> columns, double resume_before)
    : path_(std::move(path)), columns_(std::move(columns)) {
  KILN_CHECK(!columns_.empty(), "MetricsLog", "no columns (the first is the step)");
  for (auto& c : columns_)
    KILN_CHECK(!c.empty() && c.find_first_of(",\n\"") == std::string::npos, "MetricsLog",
               "column name '{}' must be non-empty without commas, quotes or newlines", c);
  if (path_.empty()) return;
  if (resume_before > 0) rows_ = read_rows(path_, columns_.size(), resume_before);
  file_.open(path_);
  KILN_CHECK(file_.is_open(), "MetricsLog", "{}: cannot create the file: {}", path_, std::strerror(errno));
  file_ << fmt::format("{}\n", fmt::join(columns_, ","));
  for (auto& r : rows_) file_ << fmt::format("{}\n", fmt::join(r, ","));
  file_.flush();
  KILN_CHECK(file_.good(), "MetricsLog", "{}: writing failed (disk full?)", path_);
}

std::string MetricsLog::row(const std::vector<double>& values) {
  KILN_CHECK(values.size() == columns_.size(), "MetricsLog::row", "{} values for the {} columns {}", values.size(),
             columns_.size(), fmt::join(columns_, ", "));
  rows_.push_back(values);
  if (file_.is_open()) {
    file_ << fmt::format("{}\n", fmt::join(values, ",")) << std::flush;
    KILN_CHECK(file_.good(), "MetricsLog::row", "{}: writing failed (disk full?)", path_);
  }
  const auto step = static_cast<std::int64_t>(values[0]);
  if (writer_)
    for (std::size_t i = 1; i < values.size(); ++i) writer_->add_scalar(columns_[i], values[i], step);
  std::string line = fmt::format("{} {:>5}", columns_[0], step);
  for (std::size_t i = 1; i < values.size(); ++i) line += fmt::format("  {} {:.4g}", columns_[i], values[i]);
  return line;
}

std::vector<double> MetricsLog::column(const std::string& name) const {
  const auto it = std::find(columns_.begin(), columns_.end(), name);
  KILN_CHECK(it != columns_.end(), "MetricsLog::column", "no column '{}' (columns: {})", name,
             fmt::join(columns_, ", "));
  std::vector<double> c;
  for (auto& r : rows_) c.push_back(r[std::size_t(it - columns_.begin())]);
  return c;
}

void MetricsLog::close() {
  if (!file_.is_open()) return;
  file_.close();
  KILN_CHECK(!file_.fail(), "MetricsLog::close", "{}: closing failed: the last rows may be lost (disk full?)", path_);
}

}  // namespace kiln::io
