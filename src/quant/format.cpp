#include "quant/format.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace optiq {

namespace {

std::string squeeze_lower(std::string_view text) {
  std::string s;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  while (true) {
    const size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) return out;
    b = e + 1;
  }
}

int parse_count(const std::string& s, std::string_view text) {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  check(ec == std::errc() && p == s.data() + s.size() && !s.empty(), "formats '{}': '{}' is not a number", text, s);
  return v;
}

bool is_float_name(const std::string& s) {
  return s == "float" || s == "f16" || s == "fp16" || s == "bf16" || s == "f32" || s == "fp32" || s == "none";
}

AffineFormat checked(AffineFormat f, std::string_view text) {
  try {
    check_affine_format(f);
  } catch (const Error& e) {
    fail("format '{}': {}", text, e.what());
  }
  return f;
}

}  // namespace

std::string tensor_format_name(const TensorFormat& f) { return f ? affine_format_name(*f) : "float"; }

std::string tensor_format_short(const TensorFormat& f) {
  return f ? fmt::format("q{}g{}", f->bits, f->group_size) : "float";
}

TensorFormat parse_tensor_format(std::string_view text, int default_group_size) {
  const std::string s = squeeze_lower(text);
  if (is_float_name(s)) return std::nullopt;
  static const std::regex re(R"(^(?:affine-)?q?(\d+)(?:-?g(\d+))?$)");
  std::smatch m;
  check(std::regex_match(s, m, re), "format '{}': expected bits (\"4\"), \"q4g64\", \"q8\" or \"float\"", text);
  return checked({std::stoi(m[1].str()), m[2].matched ? std::stoi(m[2].str()) : default_group_size}, text);
}

std::vector<AffineFormat> parse_affine_format_list(std::string_view text) {
  const std::string s = squeeze_lower(text);
  check(!s.empty(), "formats '{}': empty: give e.g. \"2,3,4,5,6,8x32,64,128\" or \"q4g64,q8g64\"", text);
  std::vector<AffineFormat> out;
  auto add = [&](AffineFormat f) {
    if (std::find(out.begin(), out.end(), f) == out.end()) out.push_back(f);
  };
  const auto x = s.find('x');
  if (x != std::string::npos) {
    for (const auto& b : split(s.substr(0, x), ','))
      for (const auto& g : split(s.substr(x + 1), ','))
        add(checked({parse_count(b, text), parse_count(g, text)}, text));
    return out;
  }
  for (const auto& tok : split(s, ',')) {
    TensorFormat f;
    try {
      f = parse_tensor_format(tok);
    } catch (const Error& e) {
      fail("formats '{}': '{}' is not a format (expected e.g. q4g64 or 4)", text, tok);
    }
    check(f.has_value(), "formats '{}': '{}' is float, not a quantized format", text, tok);
    add(*f);
  }
  return out;
}

nlohmann::json tensor_format_to_json(const TensorFormat& f) {
  if (!f) return "float";
  return {{"bits", f->bits}, {"group_size", f->group_size}};
}

TensorFormat tensor_format_from_json(const nlohmann::json& v, const std::string& source, const std::string& what) {
  if (v.is_string() && (v == "float" || v == "f16" || v == "bf16")) return std::nullopt;
  if (v.is_boolean() && !v.get<bool>()) return std::nullopt;
  check(v.is_object() && v.contains("bits"), "{}: {}: expected {{\"bits\": B, \"group_size\": G}} or \"float\"", source,
        what);
  AffineFormat f;
  try {
    f.bits = v.at("bits").get<int>();
    f.group_size = v.value("group_size", 64);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}: {}", source, what, e.what());
  }
  try {
    check_affine_format(f);
  } catch (const Error& e) {
    fail("{}: {}: {}", source, what, e.what());
  }
  return f;
}

bool format_fits(const AffineFormat& fmt, int64_t cols) { return cols > 0 && cols % fmt.group_size == 0; }

double format_bits_per_weight(const TensorFormat& f) { return f ? bits_per_weight(*f) : 16.0; }

}  // namespace optiq
