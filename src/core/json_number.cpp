#include "core/json_number.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace optiq {

namespace {
// The value for an error message: numbers and short strings as written, a
// structure by its type (it could be huge).
std::string shown(const nlohmann::json& v) {
  if (v.is_structured()) return std::string("a JSON ") + v.type_name();
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}
}  // namespace

int64_t json_integer(const nlohmann::json& v, std::string_view where, std::string_view key, int64_t lo, int64_t hi) {
  bool whole = false;
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    whole = v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    x = static_cast<int64_t>(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    whole = true;
    x = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    whole = std::isfinite(d) && d == std::floor(d) && std::abs(d) <= 9007199254740992.0;  // 2^53
    if (whole) x = static_cast<int64_t>(d);
  }
  if (!whole) fail("{}: {} = {} is not an integer in range", where, key, shown(v));
  if (x < lo || x > hi) fail("{}: {} = {} is out of range", where, key, shown(v));
  return x;
}

int json_int(const nlohmann::json& v, std::string_view where, std::string_view key) {
  return static_cast<int>(
      json_integer(v, where, key, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

uint64_t json_u64(const nlohmann::json& v, std::string_view where, std::string_view key) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  return static_cast<uint64_t>(json_integer(v, where, key, 0, std::numeric_limits<int64_t>::max()));
}

int json_int_or(const nlohmann::json& obj, const char* key, int def, std::string_view where) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return def;
  return json_int(obj[key], where, key);
}

int64_t json_int64_or(const nlohmann::json& obj, const char* key, int64_t def, std::string_view where) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return def;
  return json_integer(obj[key], where, key, std::numeric_limits<int64_t>::min(),
                      std::numeric_limits<int64_t>::max());
}

}  // namespace optiq
