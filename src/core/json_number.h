// Integers read from untrusted JSON (config.json, plans, profiles). Why not
// nlohmann's get<int>(): it converts a float such as 1e22 with a cast that is
// undefined behaviour, and wraps 4294967360 to 64 without a word. These refuse
// both with "<where>: <key> = <value> ...", naming the key.
#pragma once
#include <cstdint>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace optiq {

// v as an integer in [lo, hi]: a JSON integer, or a float with a whole value
// (64.0). Throws "<where>: <key> = <v> is not an integer in range" or
// "<where>: <key> = <v> is out of range".
int64_t json_integer(const nlohmann::json& v, std::string_view where, std::string_view key, int64_t lo, int64_t hi);
int json_int(const nlohmann::json& v, std::string_view where, std::string_view key);
// A JSON integer in [0, 2^64) (seeds).
uint64_t json_u64(const nlohmann::json& v, std::string_view where, std::string_view key);

// obj[key] as json_int / json_integer when it is present and not null, else def.
int json_int_or(const nlohmann::json& obj, const char* key, int def, std::string_view where);
int64_t json_int64_or(const nlohmann::json& obj, const char* key, int64_t def, std::string_view where);

}  // namespace optiq
