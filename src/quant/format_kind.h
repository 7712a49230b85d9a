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

}  // namespace optiq::format_detail
