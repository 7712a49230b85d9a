#include "report/svg.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"

namespace optiq {

std::string svg_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

std::string header(int w, int h) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      w, h);
}

// "Nice" tick values covering [lo, hi] (about n of them).
std::vector<double> linear_ticks(double lo, double hi, int n) {
  const double span = hi - lo;
  if (!(span > 0)) return {lo};
  const double raw = span / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
  return t;
}

}  // namespace

std::string render_line_chart(const LineChart& c) {
  const int W = c.width, H = c.height, left = 70, right = 170, top = 36, bottom = 50;
  const double pw = W - left - right, ph = H - top - bottom;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  auto ty = [&](double y) { return c.log_y ? std::log10(y) : y; };
  for (const auto& s : c.series)
    for (auto [x, y] : s.xy) {
      if (!std::isfinite(x) || !std::isfinite(y) || (c.log_y && y <= 0)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, ty(y)), y1 = std::max(y1, ty(y));
    }
  check(std::isfinite(x0), "chart '{}': no finite points to plot", c.title);
  if (x1 - x0 < 1e-9) x0 -= 0.5, x1 += 0.5;
  if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
  if (c.log_y) y0 = std::floor(y0), y1 = std::ceil(y1);
  else {
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;
  }
  const double xpad = 0.04 * (x1 - x0);
  x0 -= xpad, x1 += xpad;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1.0 - (ty(y) - y0) / (y1 - y0)) * ph; };

  std::string s = header(W, H);
  s += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n", left,
                   svg_escape(c.title));
  // Axes, grid and ticks.
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", left, top,
                   pw, ph);
  for (double t : linear_ticks(x0, x1, 8)) {
    s += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>\n", px(t), top,
                     top + ph);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:g}</text>\n", px(t), top + ph + 16, t);
  }
  if (c.log_y) {
    for (int e = static_cast<int>(y0); e <= static_cast<int>(y1); ++e) {
      const double v = std::pow(10.0, e);
      s += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>\n", left, py(v),
                       left + pw);
      s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:g}</text>\n", left - 6, py(v) + 4, v);
    }
  } else {
    for (double t : linear_ticks(y0, y1, 6)) {
      s += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>\n", left, py(t),
                       left + pw);
      s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:g}</text>\n", left - 6, py(t) + 4, t);
    }
  }
  s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2, H - 12,
                   svg_escape(c.x_label));
  s += fmt::format("<text transform=\"translate(16,{:.1f}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                   top + ph / 2, svg_escape(c.y_label));
  // Series and legend.
  int legend_y = top + 10;
  for (const auto& ser : c.series) {
    std::vector<std::pair<double, double>> pts;
    for (auto [x, y] : ser.xy)
      if (std::isfinite(x) && std::isfinite(y) && !(c.log_y && y <= 0)) pts.push_back({x, y});
    std::sort(pts.begin(), pts.end());
    if (ser.line && pts.size() > 1) {
      std::string d;
      for (auto [x, y] : pts) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", px(x), py(y));
      s += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n", d, svg_escape(ser.color));
    }
    for (auto [x, y] : pts)
      s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"><title>{}: {:g} bpw, {:g}</title></circle>\n",
                       px(x), py(y), svg_escape(ser.color), svg_escape(ser.name), x, y);
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n", left + pw + 14,
                     legend_y - 10, svg_escape(ser.color));
    s += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", left + pw + 32, legend_y, svg_escape(ser.name));
    legend_y += 18;
  }
  return s + "</svg>\n";
}

std::string bits_color(double bits) {
  // A diverging palette with one clearly distinct colour per width: 2 red .. 8 dark green.
  if (bits >= 16) return "#bdbdbd";
  if (bits <= 2) return "#d73027";
  if (bits <= 3) return "#fc8d59";
  if (bits <= 4) return "#fee08b";
  if (bits <= 5) return "#d9ef8b";
  if (bits <= 6) return "#91cf60";
  return "#1a9850";
}

std::string render_heatmap(const Heatmap& m) {
  check(m.cells.size() == m.row_labels.size(), "heatmap '{}': {} rows but {} labels", m.title, m.cells.size(),
        m.row_labels.size());
  const int left = 120, top = 56, cw = m.cell_w, ch = m.cell_h;
  const int rows = static_cast<int>(m.row_labels.size()), cols = static_cast<int>(m.col_labels.size());
  const int legend_w = 110;
  const int title_w = 20 + static_cast<int>(m.title.size()) * 8;  // ~8 px per bold 14 px character
  const int W = std::max(left + cols * cw + legend_w + 20, title_w), H = top + rows * ch + 30;
  auto color = m.color_of ? m.color_of : bits_color;
  std::string s = header(W, H);
  s += fmt::format("<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n", svg_escape(m.title));
  for (int c = 0; c < cols; ++c)
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
                     left + c * cw + cw / 2, top - 8, svg_escape(m.col_labels[c]));
  for (int r = 0; r < rows; ++r) {
    check(static_cast<int>(m.cells[r].size()) == cols, "heatmap '{}': row {} has {} cells, expected {}", m.title, r,
          m.cells[r].size(), cols);
    const int y = top + r * ch;
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text>\n", left - 6,
                     y + ch - 3, svg_escape(m.row_labels[r]));
    for (int c = 0; c < cols; ++c) {
      if (!m.cells[r][c]) continue;
      const std::string label = r < static_cast<int>(m.cell_text.size()) && c < static_cast<int>(m.cell_text[r].size())
                                    ? m.cell_text[r][c] : fmt::format("{:g}", *m.cells[r][c]);
      s += fmt::format(
          "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"white\"><title>{} {}: {}</title></rect>\n",
          left + c * cw, y, cw, ch, color(*m.cells[r][c]), svg_escape(m.row_labels[r]), svg_escape(m.col_labels[c]),
          svg_escape(label));
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\">{}</text>\n",
                       left + c * cw + cw / 2, y + ch - 3, svg_escape(label));
    }
  }
  int ly = top;
  const int lx = left + cols * cw + 16;
  for (const auto& [v, label] : m.legend) {
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"12\" fill=\"{}\"/>\n", lx, ly, color(v));
    s += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>\n", lx + 20, ly + 10, svg_escape(label));
    ly += 16;
  }
  return s + "</svg>\n";
}

}  // namespace optiq
