#pragma once
/// A metrics log: each row goes to a CSV file (and, when attached, to TensorBoard as scalars),
/// and comes back as the line to print, so what a program prints and what it records are the
/// same numbers by construction.
///
///   kiln::io::MetricsLog log("runs/log.csv", {"step", "train_loss", "val_loss"});   // "" = no file
///   kiln::io::SummaryWriter tb("runs");
///   log.attach(tb);                                     // optional: rows become scalars too
///   progress.note(log.row({step, train, val}));         // "step   500  train_loss 1.234  val_loss 1.301"
///   chart.add("validation", log.column("step"), log.column("val_loss"));
///   log.close();                                        // throws if the file could not be written
///
/// The first column is the step. With `resume_before` > 0 an existing file is continued: its
/// rows with a step below that value are kept (and listed by rows()), later ones dropped.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace kiln::io {

class SummaryWriter;

class MetricsLog {
 public:
  MetricsLog(std::string path, std::vector<std::string> columns, double resume_before = 0);
  /// Sends every later row's values (all but the step) to `writer` as scalars tagged by column.
  void attach(SummaryWriter& writer) { writer_ = &writer; }
  /// Appends a row (flushed at once: a killed run keeps its log) and returns its printed form.
  /// kiln::Error for a wrong number of values or a failed write (disk full, file removed...).
  std::string row(const std::vector<double>& values);
  /// Every row: those kept from a resumed file, then the added ones.
  const std::vector<std::vector<double>>& rows() const { return rows_; }
  /// One column of every row, by name.
  std::vector<double> column(const std::string& name) const;
  const std::vector<std::string>& columns() const { return columns_; }
  /// The CSV file ("" when not writing one).
  const std::string& path() const { return path_; }
  /// Closes the file, checking that everything reached it.
  void close();

 private:
  std::string path_;
  std::vector<std::string> columns_;
  std::vector<std::vector<double>> rows_;
  std::ofstream file_;
  SummaryWriter* writer_ = nullptr;
};

}  // namespace kiln::io
