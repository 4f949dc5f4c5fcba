#pragma once
/// Training logs for the examples: a CSV file of numbers per evaluation and a PNG line chart of
/// those curves (a minimal PNG encoder on zlib: RGB, no filtering, one IDAT chunk).
///
///   examples::CsvLog log("runs/log.csv", {"step", "train_loss", "val_loss"});   // "" = no file
///   log.row({step, train, val});
///   examples::LineChart chart(640, 400);
///   chart.add("train", steps, train_losses, {31, 119, 180});
///   chart.write_png("runs/loss.png");
#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

/// One header line, then one line per row(). Nothing is written when the path is empty. With
/// `resume_before` > 0 an existing log is continued: its rows whose first column is below that
/// value are kept (and listed by rows()), later ones dropped.
class CsvLog {
 public:
  CsvLog(const std::string& path, std::vector<std::string> columns, double resume_before = 0)
      : columns_(std::move(columns)) {
    if (path.empty()) return;
    if (resume_before > 0) {
      std::ifstream old(path);
      std::string line;
      for (std::getline(old, line); std::getline(old, line);) {
        std::vector<double> r;
        std::istringstream fields(line);
        for (std::string f; std::getline(fields, f, ',');) r.push_back(std::strtod(f.c_str(), nullptr));
        if (r.size() == columns_.size() && r[0] < resume_before) rows_.push_back(std::move(r));
      }
    }
    file_.open(path);
    if (!file_) throw std::runtime_error(fmt::format("cannot write the log file {}", path));
    file_ << fmt::format("{}\n", fmt::join(columns_, ","));
    for (auto& r : rows_) file_ << fmt::format("{}\n", fmt::join(r, ","));
  }
  void row(const std::vector<double>& values) {
    if (values.size() != columns_.size())
      throw std::logic_error(fmt::format("CsvLog::row: {} values for {} columns", values.size(), columns_.size()));
    rows_.push_back(values);
    if (file_.is_open()) file_ << fmt::format("{}\n", fmt::join(values, ",")) << std::flush;
  }
  /// Every row so far (kept from a resumed log, then added).
  const std::vector<std::vector<double>>& rows() const { return rows_; }
  /// Column i of every row.
  std::vector<double> column(std::size_t i) const {
    std::vector<double> c;
    for (auto& r : rows_) c.push_back(r.at(i));
    return c;
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<double>> rows_;
  std::ofstream file_;
};

using Rgb = std::array<std::uint8_t, 3>;

/// An RGB image with just enough drawing for a chart: lines, rectangles and digits.
class Image {
 public:
  Image(int w, int h, Rgb background = {255, 255, 255}) : w_(w), h_(h), px_(std::size_t(w) * h * 3) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) set(x, y, background);
  }
  int width() const { return w_; }
  int height() const { return h_; }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    std::copy(c.begin(), c.end(), px_.begin() + (std::size_t(y) * w_ + x) * 3);
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, c);
  }
  // Bresenham, `thick` pixels wide.
  void line(int x0, int y0, int x1, int y1, Rgb c, int thick = 1) {
    int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
    for (;;) {
      rect(x0 - thick / 2, y0 - thick / 2, x0 + (thick - 1) / 2, y0 + (thick - 1) / 2, c);
      if (x0 == x1 && y0 == y1) break;
      int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  /// Digits, '.', '-' and 'e' in a 3x5 pixel font scaled by `s`; (x, y) is the top-left corner.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 2) {
    // Each glyph: 5 rows of 3 bits (MSB = left column).
    static const std::string chars = "0123456789.-e";
    static const std::uint8_t glyph[][5] = {{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
                                            {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1},
                                            {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}, {0, 0, 0, 0, 2}, {0, 0, 7, 0, 0},
                                            {0, 7, 5, 6, 7}};
    for (char ch : s) {
      auto k = chars.find(ch);
      if (k != std::string::npos)
        for (int r = 0; r < 5; ++r)
          for (int col = 0; col < 3; ++col)
            if (glyph[k][r] >> (2 - col) & 1)
              rect(x + col * scale, y + r * scale, x + col * scale + scale - 1, y + r * scale + scale - 1, c);
      x += 4 * scale;
    }
  }

  /// PNG: signature, IHDR, one zlib-compressed IDAT (each row prefixed by filter byte 0), IEND.
  void write_png(const std::string& path) const {
    std::vector<std::uint8_t> raw;
    raw.reserve(std::size_t(h_) * (w_ * 3 + 1));
    for (int y = 0; y < h_; ++y) {
      raw.push_back(0);
      raw.insert(raw.end(), px_.begin() + std::size_t(y) * w_ * 3, px_.begin() + std::size_t(y + 1) * w_ * 3);
    }
    uLongf zlen = compressBound(raw.size());
    std::vector<std::uint8_t> z(zlen);
    if (compress2(z.data(), &zlen, raw.data(), raw.size(), 9) != Z_OK)
      throw std::runtime_error("PNG: zlib compress failed");
    z.resize(zlen);

    std::ofstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(fmt::format("cannot write the image {}", path));
    const std::uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    f.write(reinterpret_cast<const char*>(signature), 8);
    std::vector<std::uint8_t> ihdr;
    put32(ihdr, w_);
    put32(ihdr, h_);
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits per channel, RGB, deflate, no filter, no interlace
    chunk(f, "IHDR", ihdr);
    chunk(f, "IDAT", z);
    chunk(f, "IEND", {});
  }

 private:
  static void put32(std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(std::uint8_t(x >> s));
  }
  static void chunk(std::ofstream& f, const char* type, const std::vector<std::uint8_t>& data) {
    std::vector<std::uint8_t> buf;
    put32(buf, std::uint32_t(data.size()));
    buf.insert(buf.end(), type, type + 4);
    buf.insert(buf.end(), data.begin(), data.end());
    std::uint32_t crc = crc32(0L, buf.data() + 4, uInt(buf.size() - 4));  // over type + data
    put32(buf, crc);
    f.write(reinterpret_cast<const char*>(buf.data()), std::streamsize(buf.size()));
  }
  int w_, h_;
  std::vector<std::uint8_t> px_;
};

/// Curves y(x) on shared axes with grid lines and numeric tick labels.
class LineChart {
 public:
  LineChart(int width = 640, int height = 400) : w_(width), h_(height) {}
  void add(std::vector<double> x, std::vector<double> y, Rgb color) {
    series_.push_back({std::move(x), std::move(y), color});
  }
  /// A horizontal reference line (e.g. a baseline loss), dashed.
  void hline(double y, Rgb color) { hlines_.push_back({y, color}); }

  void write_png(const std::string& path) const {
    double x0 = inf, x1 = -inf, y0 = inf, y1 = -inf;
    for (auto& s : series_)
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
        y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
      }
    for (auto& [y, c] : hlines_) y0 = std::min(y0, y), y1 = std::max(y1, y);
    if (!(x1 > x0)) x1 = x0 + 1;
    if (!(y1 > y0)) y1 = y0 + 1;
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;

    Image img(w_, h_);
    const int left = 70, right = w_ - 15, top = 15, bottom = h_ - 35;
    auto px = [&](double x) { return left + int(std::lround((x - x0) / (x1 - x0) * (right - left))); };
    auto py = [&](double y) { return bottom - int(std::lround((y - y0) / (y1 - y0) * (bottom - top))); };
    const Rgb grid = {225, 225, 225}, ink = {60, 60, 60};
    for (int i = 0; i <= 5; ++i) {
      double y = y0 + (y1 - y0) * i / 5, x = x0 + (x1 - x0) * i / 5;
      img.line(left, py(y), right, py(y), grid);
      img.line(px(x), top, px(x), bottom, grid);
      img.text(4, py(y) - 5, fmt::format("{:.3g}", y), ink);
      std::string xs = fmt::format("{:.0f}", x);
      img.text(px(x) - int(xs.size()) * 4, bottom + 10, xs, ink);
    }
    img.line(left, top, left, bottom, ink);
    img.line(left, bottom, right, bottom, ink);
    for (auto& [y, c] : hlines_)
      for (int x = left; x < right; x += 12) img.line(x, py(y), std::min(x + 6, right), py(y), c, 2);
    for (auto& s : series_)
      for (std::size_t i = 1; i < s.x.size(); ++i)
        img.line(px(s.x[i - 1]), py(s.y[i - 1]), px(s.x[i]), py(s.y[i]), s.color, 2);
    img.write_png(path);
  }

 private:
  static constexpr double inf = std::numeric_limits<double>::infinity();
  struct Series {
    std::vector<double> x, y;
    Rgb color;
  };
  int w_, h_;
  std::vector<Series> series_;
  std::vector<std::pair<double, Rgb>> hlines_;
};

}  // namespace examples
