// Helpers the format entry files share (not part of the public API).
#pragma once
#include <charconv>
#include <string>
#include <string_view>

#include "core/error.h"
#include "quant/format.h"

namespace optiq::format_detail {

inline int parse_count(const std::string& s, std::string_view text) {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  check(ec == std::errc() && p == s.data() + s.size() && !s.empty(), "formats '{}': '{}' is not a number", text, s);
  return v;
}

// The affine format, or "format '<text>': <why>" when it is invalid.
inline AffineFormat checked(AffineFormat f, std::string_view text) {
  try {
    check_affine_format(f);
  } catch (const Error& e) {
    fail("format '{}': {}", text, e.what());
  }
  return f;
}

}  // namespace optiq::format_detail
