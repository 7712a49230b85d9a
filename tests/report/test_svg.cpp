// The SVG charts are well-formed enough for browsers (balanced tags, escaped
// text) and place points where the axes say.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "core/error.h"
#include "report/svg.h"

namespace optiq {
namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(Svg, LineChartHasEveryPointAndEscapesText) {
  LineChart c;
  c.title = "KLD <vs> bits & more";
  c.log_y = true;
  c.series.push_back({"uniform", "#d62728", {{2.5, 3.0}, {4.5, 0.3}, {3.5, 1.2}}, true});
  c.series.push_back({"optiq", "#1f77b4", {{2.5, 2.0}, {4.5, 0.1}, {8.5, 0.0}}, true});  // y=0 skipped on log axis
  const std::string svg = render_line_chart(c);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "<circle"), 5);
  EXPECT_EQ(count(svg, "<path"), 2);
  EXPECT_NE(svg.find("KLD &lt;vs&gt; bits &amp; more"), std::string::npos);
  EXPECT_EQ(svg.find("<vs>"), std::string::npos);
  // Larger KLD plots higher (smaller y) on the same x.
  std::smatch m;
  std::regex circle(R"re(<circle cx="([0-9.]+)" cy="([0-9.]+)")re");
  std::vector<std::pair<double, double>> pts;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), circle); it != std::sregex_iterator(); ++it)
    pts.push_back({std::stod((*it)[1]), std::stod((*it)[2])});
  ASSERT_EQ(pts.size(), 5u);
  // Series points are sorted by x: uniform (2.5, 3.0) first, optiq (2.5, 2.0) fourth.
  EXPECT_DOUBLE_EQ(pts[0].first, pts[3].first);
  EXPECT_LT(pts[0].second, pts[3].second);
}

TEST(Svg, EmptyChartIsAnError) {
  LineChart c;
  c.series.push_back({"none", "#000", {{1.0, NAN}}, true});
  EXPECT_THROW(render_line_chart(c), Error);
}

TEST(Svg, HeatmapCellsAndLegend) {
  Heatmap h;
  h.title = "precision map";
  h.row_labels = {"layer 0", "layer 1"};
  h.col_labels = {"q", "k", "down"};
  h.cells = {{4.0, 16.0, std::nullopt}, {2.0, 8.0, 6.0}};
  h.legend = {{2, "2 bits"}, {8, "8 bits"}, {16, "float"}};
  const std::string svg = render_heatmap(h);
  EXPECT_EQ(count(svg, "<rect"), 1 + 5 + 3);  // background, cells, legend
  EXPECT_NE(svg.find(bits_color(16)), std::string::npos);
  EXPECT_NE(bits_color(2), bits_color(8));
  h.cells.pop_back();
  EXPECT_THROW(render_heatmap(h), Error);
}

}  // namespace
}  // namespace optiq
