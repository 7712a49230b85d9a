// Minimal SVG charts for `optiq compare` reports: a scatter/line chart (bits
// per weight against KL divergence, one curve per method) and a heatmap (the
// precision map: layers x tensor kinds, colour = bits). Standalone SVG 1.1
// text, viewable in any browser and embeddable in Markdown.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace optiq {

struct ChartSeries {
  std::string name;
  std::string color;                           // CSS colour, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> xy;   // drawn in x order
  bool line = true;                            // false: markers only
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_y = false;  // y must then be > 0 (other points are skipped)
  std::vector<ChartSeries> series;
  int width = 720, height = 440;
};

std::string render_line_chart(const LineChart& chart);

struct Heatmap {
  std::string title;
  std::vector<std::string> row_labels, col_labels;
  // cells[r][c]: the value (nullopt: no such tensor) and a short label.
  std::vector<std::vector<std::optional<double>>> cells;
  std::vector<std::vector<std::string>> cell_text;  // may be empty
  // Colour of a value and the legend entries (value, label).
  std::string (*color_of)(double) = nullptr;
  std::vector<std::pair<double, std::string>> legend;
  int cell_w = 56, cell_h = 14;
};

std::string render_heatmap(const Heatmap& map);

// Colour for a number of bits per weight: 2 (red) .. 8 (green), 16 (grey).
std::string bits_color(double bits);

// Escapes &, <, >, " for SVG text and attributes.
std::string svg_escape(const std::string& s);

}  // namespace optiq
