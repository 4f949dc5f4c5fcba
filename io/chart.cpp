#include "chart.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <limits>

#include "../core/error.hpp"

#ifdef KILN_WITH_CAIRO
#include <cairo.h>
#endif

namespace kiln::io {

bool charts_available() {
#ifdef KILN_WITH_CAIRO
  return true;
#else
  return false;
#endif
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  KILN_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "nice_ticks",
             "the range [{}, {}] is not finite and ordered", lo, hi);
  KILN_CHECK(target >= 2, "nice_ticks", "target {} must be at least 2", target);
  if (hi == lo) {  // one value: a unit-wide range around it, at its own scale
    const double half = lo == 0 ? 0.5 : std::abs(lo) * 0.05;
    lo -= half, hi += half;
  }
  const double raw = (hi - lo) / (target - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double m : {1.0, 2.0, 5.0})
    if (m * mag >= raw * (1 - 1e-9)) {
      step = m * mag;
      break;
    }
  // Ticks as integer multiples of the step, so 0.1 + 0.2 rounding never shows up as 0.30000000004.
  const auto first = static_cast<long long>(std::floor(lo / step + 1e-9));
  const auto last = static_cast<long long>(std::ceil(hi / step - 1e-9));
  std::vector<double> ticks;
  for (long long k = first; k <= last; ++k) ticks.push_back(double(k) * step);
  return ticks;
}

LineChart::LineChart(std::string title, std::string x_label, std::string y_label)
    : title_(std::move(title)), x_label_(std::move(x_label)), y_label_(std::move(y_label)) {}

LineChart& LineChart::size(int width, int height) {
  KILN_CHECK(width >= 200 && height >= 150 && width <= 10000 && height <= 10000, "LineChart::size",
             "{} x {} pixels is outside 200 x 150 .. 10000 x 10000", width, height);
  width_ = width, height_ = height;
  return *this;
}

LineChart& LineChart::add(std::string name, std::vector<double> x, std::vector<double> y) {
  KILN_CHECK(x.size() == y.size(), "LineChart::add", "series '{}': {} x values but {} y values", name, x.size(),
             y.size());
  series_.push_back({std::move(name), std::move(x), std::move(y)});
  return *this;
}

LineChart& LineChart::hline(std::string name, double y) {
  KILN_CHECK(std::isfinite(y), "LineChart::hline", "'{}' at y = {} is not finite", name, y);
  hlines_.push_back({std::move(name), y});
  return *this;
}

#ifdef KILN_WITH_CAIRO
namespace {

struct Rgb {
  double r, g, b;
};
// Matplotlib's "tab10" order: distinct for the first curves, readable for colour-blind viewers.
constexpr std::array<Rgb, 8> kPalette = {{{0.12, 0.47, 0.71},
                                          {1.00, 0.50, 0.05},
                                          {0.17, 0.63, 0.17},
                                          {0.84, 0.15, 0.16},
                                          {0.58, 0.40, 0.74},
                                          {0.55, 0.34, 0.29},
                                          {0.89, 0.47, 0.76},
                                          {0.50, 0.50, 0.50}}};
constexpr Rgb kReference = {0.35, 0.35, 0.35};

// Tick labels with as many decimals as the step needs (0.05 -> 2, 500 -> 0).
std::string tick_label(double v, double step) {
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0.0"
  return fmt::format("{:.{}f}", v, decimals);
}

// Plot area in pixels and the data range it shows.
struct Frame {
  double left, top, right, bottom;
  double x0, x1, y0, y1;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * (right - left); }
  double py(double y) const { return bottom - (y - y0) / (y1 - y0) * (bottom - top); }
};

void set_font(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

// Text whose anchor point (ax, ay) is at fraction (fx, fy) of its box: (0.5, 0.5) centres it.
void text_at(cairo_t* cr, const std::string& s, double x, double y, double fx, double fy) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - e.x_bearing - fx * e.width, y - e.y_bearing - fy * e.height);
  cairo_show_text(cr, s.c_str());
}

// A series as polylines through its finite points, clipped to the plot area by the caller.
void draw_series(cairo_t* cr, const Frame& f, const LineChart::Series& s) {
  bool pen_down = false;
  for (std::size_t i = 0; i < s.x.size(); ++i) {
    if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
      pen_down = false;
      continue;
    }
    if (pen_down) cairo_line_to(cr, f.px(s.x[i]), f.py(s.y[i]));
    else cairo_move_to(cr, f.px(s.x[i]), f.py(s.y[i]));
    pen_down = true;
  }
  if (s.x.size() == 1 || std::count_if(s.x.begin(), s.x.end(), [](double v) { return std::isfinite(v); }) == 1)
    for (std::size_t i = 0; i < s.x.size(); ++i)  // a lone point: a dot, or it would not show
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) cairo_arc(cr, f.px(s.x[i]), f.py(s.y[i]), 3, 0, 2 * M_PI);
  cairo_stroke(cr);
}

// How many sampled curve points fall inside a box: the legend goes where it hides the least.
int points_under(const Frame& f, const std::vector<LineChart::Series>& series, double bx0, double by0, double bx1,
                 double by1) {
  int n = 0;
  for (auto& s : series)
    for (std::size_t i = 1; i < s.x.size(); ++i)
      for (int k = 0; k <= 16; ++k) {
        const double t = k / 16.0;
        const double x = f.px(s.x[i - 1] + t * (s.x[i] - s.x[i - 1])), y = f.py(s.y[i - 1] + t * (s.y[i] - s.y[i - 1]));
        n += x >= bx0 && x <= bx1 && y >= by0 && y <= by1;
      }
  return n;
}

void draw_legend(cairo_t* cr, const Frame& f, const std::vector<LineChart::Series>& series,
                 const std::vector<LineChart::HLine>& hlines) {
  set_font(cr, 12);
  std::vector<std::string> names;
  for (auto& s : series) names.push_back(s.name);
  for (auto& h : hlines) names.push_back(h.name);
  double text_w = 0;
  for (auto& n : names) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, n.c_str(), &e);
    text_w = std::max(text_w, e.x_advance);
  }
  const double row = 18, pad = 8, sample = 26;
  const double w = pad * 3 + sample + text_w, h = pad * 2 + row * double(names.size());
  // Candidate corners: top-right, top-left, bottom-right, bottom-left; the first with fewest points under it.
  const std::array<std::pair<double, double>, 4> corners = {{{f.right - w - 8, f.top + 8},
                                                             {f.left + 8, f.top + 8},
                                                             {f.right - w - 8, f.bottom - h - 8},
                                                             {f.left + 8, f.bottom - h - 8}}};
  auto best = corners[0];
  int fewest = std::numeric_limits<int>::max();
  for (auto [x, y] : corners) {
    const int n = points_under(f, series, x, y, x + w, y + h);
    if (n < fewest) fewest = n, best = {x, y};
  }
  auto [bx, by] = best;
  cairo_rectangle(cr, bx, by, w, h);
  cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
  cairo_fill_preserve(cr);
  cairo_set_source_rgb(cr, 0.8, 0.8, 0.8);
  cairo_set_line_width(cr, 1);
  cairo_stroke(cr);
  for (std::size_t i = 0; i < names.size(); ++i) {
    const double y = by + pad + row * (double(i) + 0.5);
    const bool ref = i >= series.size();
    const Rgb c = ref ? kReference : kPalette[i % kPalette.size()];
    cairo_set_source_rgb(cr, c.r, c.g, c.b);
    cairo_set_line_width(cr, 2);
    const double dash[] = {6, 4};
    cairo_set_dash(cr, dash, ref ? 2 : 0, 0);
    cairo_move_to(cr, bx + pad, y);
    cairo_line_to(cr, bx + pad + sample, y);
    cairo_stroke(cr);
    cairo_set_dash(cr, nullptr, 0, 0);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text_at(cr, names[i], bx + pad * 2 + sample, y, 0, 0.5);
  }
}

// Axes, grid, tick labels, title and axis labels.
void draw_axes(cairo_t* cr, const Frame& f, const std::vector<double>& xt, const std::vector<double>& yt,
               const std::string& title, const std::string& x_label, const std::string& y_label, int width) {
  cairo_set_line_width(cr, 1);
  set_font(cr, 12);
  for (double x : xt) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, std::round(f.px(x)) + 0.5, f.top);
    cairo_line_to(cr, std::round(f.px(x)) + 0.5, f.bottom);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    text_at(cr, tick_label(x, xt[1] - xt[0]), f.px(x), f.bottom + 6, 0.5, 0);
  }
  for (double y : yt) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, f.left, std::round(f.py(y)) + 0.5);
    cairo_line_to(cr, f.right, std::round(f.py(y)) + 0.5);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    text_at(cr, tick_label(y, yt[1] - yt[0]), f.left - 6, f.py(y), 1, 0.5);
  }
  cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
  cairo_rectangle(cr, f.left + 0.5, f.top + 0.5, f.right - f.left, f.bottom - f.top);
  cairo_stroke(cr);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  set_font(cr, 13);
  if (!x_label.empty()) text_at(cr, x_label, (f.left + f.right) / 2, f.bottom + 28, 0.5, 0);
  if (!y_label.empty()) {
    cairo_save(cr);
    cairo_translate(cr, 16, (f.top + f.bottom) / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, y_label, 0, 0, 0.5, 0.5);
    cairo_restore(cr);
  }
  if (!title.empty()) {
    set_font(cr, 16, true);
    text_at(cr, title, width / 2.0, 12, 0.5, 0);
  }
}

// The widest y tick label, so the plot area starts right of it.
double y_label_width(cairo_t* cr, const std::vector<double>& yt) {
  set_font(cr, 12);
  double w = 0;
  for (double y : yt) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, tick_label(y, yt[1] - yt[0]).c_str(), &e);
    w = std::max(w, e.x_advance);
  }
  return w;
}

}  // namespace
#endif

void LineChart::write_png(const std::string& path) const {
#ifndef KILN_WITH_CAIRO
  throw Error(
      fmt::format("[LineChart::write_png] {}: this kiln was built without Cairo, so it cannot draw charts (install "
                  "libcairo2-dev and reconfigure; the CSV logs and TensorBoard files work without it)",
                  path));
#else
  constexpr double inf = std::numeric_limits<double>::infinity();
  double x0 = inf, x1 = -inf, y0 = inf, y1 = -inf;
  for (auto& s : series_)
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]))
        x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]), y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
  KILN_CHECK(x0 <= x1, "LineChart::write_png", "{}: no series has a finite point to draw ({} series)", path,
             series_.size());
  for (auto& h : hlines_) y0 = std::min(y0, h.y), y1 = std::max(y1, h.y);
  const std::vector<double> xt = nice_ticks(x0, x1, 7), yt = nice_ticks(y0, y1, 6);

  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width_, height_);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  const Frame f{y_label_width(cr, yt) + (y_label_.empty() ? 14 : 36),
                title_.empty() ? 16.0 : 40.0,
                width_ - 20.0,
                height_ - (x_label_.empty() ? 30.0 : 52.0),
                xt.front(),
                xt.back(),
                yt.front(),
                yt.back()};
  draw_axes(cr, f, xt, yt, title_, x_label_, y_label_, width_);

  cairo_save(cr);
  cairo_rectangle(cr, f.left, f.top, f.right - f.left, f.bottom - f.top);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  const double dash[] = {6, 4};
  cairo_set_dash(cr, dash, 2, 0);
  cairo_set_line_width(cr, 1.5);
  cairo_set_source_rgb(cr, kReference.r, kReference.g, kReference.b);
  for (auto& h : hlines_) {
    cairo_move_to(cr, f.left, f.py(h.y));
    cairo_line_to(cr, f.right, f.py(h.y));
    cairo_stroke(cr);
  }
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_set_line_width(cr, 2);
  for (std::size_t i = 0; i < series_.size(); ++i) {
    const Rgb c = kPalette[i % kPalette.size()];
    cairo_set_source_rgb(cr, c.r, c.g, c.b);
    draw_series(cr, f, series_[i]);
  }
  cairo_restore(cr);
  if (!series_.empty() || !hlines_.empty()) draw_legend(cr, f, series_, hlines_);

  // Through an ofstream rather than cairo_surface_write_to_png: its state after close() tells a
  // full disk apart from success.
  std::ofstream file(path, std::ios::binary);
  auto write = [](void* out, const unsigned char* data, unsigned int n) {
    auto& s = *static_cast<std::ofstream*>(out);
    s.write(reinterpret_cast<const char*>(data), n);
    return s ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
  };
  const cairo_status_t status =
      file ? cairo_surface_write_to_png_stream(surface, write, &file) : CAIRO_STATUS_WRITE_ERROR;
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  if (file.is_open()) file.close();
  KILN_CHECK(status == CAIRO_STATUS_SUCCESS && file, "LineChart::write_png", "{}: cannot write the image ({})", path,
             status == CAIRO_STATUS_SUCCESS ? "the file did not close cleanly: disk full?"
                                            : cairo_status_to_string(status));
#endif
}

}  // namespace kiln::io
