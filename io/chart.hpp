#pragma once
/// Line charts written as PNG files (rendered with Cairo): a title, labelled axes with round
/// ticks (1-2-5 steps), a legend, several series and dashed reference lines.
///
///   kiln::io::LineChart chart("charlm: loss", "step", "loss (nats/char)");
///   chart.add("training", steps, train_loss);
///   chart.add("validation", steps, val_loss);
///   chart.hline("unigram baseline", 3.36);
///   chart.write_png("runs/loss.png");
///
/// A kiln built without Cairo (KILN_CAIRO=OFF, or AUTO without libcairo2-dev) still compiles this
/// class; write_png() then throws kiln::Error saying so. charts_available() tells in advance.
#include <string>
#include <vector>

namespace kiln::io {

/// True when this kiln renders charts (it was built with Cairo).
bool charts_available();

/// Round tick positions covering [lo, hi]: about `target` ticks at a step of 1, 2 or 5 times a
/// power of ten; the first tick is at or below lo and the last at or above hi.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

class LineChart {
 public:
  explicit LineChart(std::string title = "", std::string x_label = "", std::string y_label = "");
  /// Image size in pixels (default 720 x 450).
  LineChart& size(int width, int height);
  /// A curve y(x) named in the legend; colors follow a fixed palette in the order added.
  /// Points with a non-finite coordinate are left out (the line breaks there).
  LineChart& add(std::string name, std::vector<double> x, std::vector<double> y);
  /// A dashed horizontal reference line (e.g. a baseline), named in the legend.
  LineChart& hline(std::string name, double y);
  /// Renders and writes the PNG; kiln::Error if Cairo is missing, there is nothing finite to
  /// draw, or the file cannot be written completely (checked after closing: a full disk fails).
  void write_png(const std::string& path) const;

  struct Series {
    std::string name;
    std::vector<double> x, y;
  };
  struct HLine {
    std::string name;
    double y;
  };

 private:
  std::string title_, x_label_, y_label_;
  int width_ = 720, height_ = 450;
  std::vector<Series> series_;
  std::vector<HLine> hlines_;
};

}  // namespace kiln::io
