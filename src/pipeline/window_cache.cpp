#include "pipeline/window_cache.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/json_number.h"

namespace optiq {

namespace {

constexpr char kMagic[8] = {'O', 'P', 'T', 'I', 'Q', 'W', 'I', 'N'};

// Size and mtime of the calibration file (0, 0 for "self" or a missing file).
std::pair<int64_t, int64_t> file_identity(const std::string& path) {
  std::error_code ec;
  if (path == "self" || !std::filesystem::is_regular_file(path, ec)) return {0, 0};
  const auto size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  const auto t = std::filesystem::last_write_time(path, ec);
  return {size, static_cast<int64_t>(t.time_since_epoch().count())};
}

nlohmann::json calib_json(const CalibrationOptions& c) {
  return {{"source", c.source}, {"samples", c.samples}, {"seq", c.seq}, {"seed", c.seed}};
}

}  // namespace

std::string window_cache_path(const std::string& profile_path) { return profile_path + ".windows"; }

void write_window_cache(const std::string& path, const ProfileSource& source, int vocab, const TokenWindows& w) {
  const int64_t seq = w.empty() ? 0 : static_cast<int64_t>(w.front().size());
  const auto [size, mtime] = file_identity(source.calib.source);
  const std::string header = nlohmann::json{{"calibration", calib_json(source.calib)},
                                            {"vocab", vocab},
                                            {"windows", w.size()},
                                            {"seq", seq},
                                            {"calib_size", size},
                                            {"calib_mtime", mtime}}
                                 .dump();
  std::string out(kMagic, sizeof kMagic);
  const uint32_t n = static_cast<uint32_t>(header.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += header;
  for (const auto& win : w) {
    if (static_cast<int64_t>(win.size()) != seq) return;  // ragged windows: not cached
    out.append(reinterpret_cast<const char*>(win.data()), win.size() * sizeof(int32_t));
  }
  write_file_atomic(path, out);
}

std::optional<TokenWindows> read_window_cache(const std::string& path, const ProfileSource& source, int vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  char magic[8];
  uint32_t n = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0 || !in.read(reinterpret_cast<char*>(&n), 4) ||
      n > (1u << 20))
    return std::nullopt;
  std::string header(n, '\0');
  if (!in.read(header.data(), n)) return std::nullopt;
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(header);
    // Integers checked (a float like 1e22 through get<int>() is undefined behaviour).
    auto integer = [&](const char* key, int64_t lo, int64_t hi) { return json_integer(h.at(key), path, key, lo, hi); };
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    if (h.at("calibration") != calib_json(source.calib) || integer("vocab", 0, kMax) != vocab) return std::nullopt;
    const auto [size, mtime] = file_identity(source.calib.source);
    if (size != 0 && (integer("calib_size", 0, kMax) != size || integer("calib_mtime", -kMax, kMax) != mtime)) {
      warn("{}: {} changed since the profile; tokenizing it again", path, source.calib.source);
      return std::nullopt;
    }
    const int64_t windows = integer("windows", 1, int64_t{1} << 31), seq = integer("seq", 1, int64_t{1} << 31);
    if (windows <= 0 || seq <= 0 || windows * seq > (int64_t{1} << 31)) return std::nullopt;
    TokenWindows w(static_cast<size_t>(windows), std::vector<int32_t>(static_cast<size_t>(seq)));
    for (auto& win : w) {
      if (!in.read(reinterpret_cast<char*>(win.data()), static_cast<std::streamsize>(seq * sizeof(int32_t))))
        return std::nullopt;
      for (int32_t t : win)
        if (t < 0 || t >= vocab) return std::nullopt;
    }
    return w;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  } catch (const Error&) {  // an out-of-range integer: unusable, like any other damage
    return std::nullopt;
  }
}

}  // namespace optiq
