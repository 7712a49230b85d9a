#include "profile/sensitivity.h"
#include "profile/sensitivity_detail.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/parallel.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/json_number.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "kernels/matmul.h"
#include "model/provenance.h"
#include "model/quantize_model.h"
#include "model/transformer.h"

namespace optiq {

using nlohmann::json;

ProfileMethod parse_profile_method(const std::string& text) {
  if (text == "fast") return ProfileMethod::Fast;
  if (text == "exact") return ProfileMethod::Exact;
  if (text == "both") return ProfileMethod::Both;
  fail("profile method '{}': expected fast, exact or both", text);
}

std::string profile_method_name(ProfileMethod m) {
  switch (m) {
    case ProfileMethod::Fast: return "fast";
    case ProfileMethod::Exact: return "exact";
    case ProfileMethod::Both: return "both";
  }
  return "?";
}

std::vector<TensorFormat> default_profile_candidates() {
  std::vector<TensorFormat> v;
  for (int b : {2, 3, 4, 5, 6, 8})
    for (int g : {32, 64, 128}) v.push_back(AffineFormat{b, g});
  return v;
}


std::vector<TensorFormat> parse_candidates(const std::string& text) { return parse_format_list(text); }

// ---------------------------------------------------------------------------
// Source identity

namespace {

void stat_path(const std::string& path, int64_t& size, int64_t& mtime) {
  size = 0;
  mtime = 0;
  auto one = [&](const std::string& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return;
    size += static_cast<int64_t>(st.st_size);
    mtime = std::max<int64_t>(mtime, static_cast<int64_t>(st.st_mtime));
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(path, ec))
      if (e.is_regular_file()) one(e.path().string());
  } else {
    one(path);
  }
}

std::string base_name(const std::string& p) {
  std::string s = p;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return std::filesystem::path(s).filename().string();
}

}  // namespace

bool ProfileSource::matches(const ProfileSource& o) const {
  return model_size == o.model_size && model_mtime == o.model_mtime && base_name(model_path) == base_name(o.model_path) &&
         base_name(calib.source) == base_name(o.calib.source) && calib.samples == o.calib.samples &&
         calib.seq == o.calib.seq && calib.seed == o.calib.seed;
}

std::string ProfileSource::describe() const {
  return fmt::format("{} ({} bytes), calibration {} x{} windows of {} tokens, seed {}", model_path, model_size,
                     calib.source, calib.samples, calib.seq, calib.seed);
}

ProfileSource make_profile_source(const std::string& model_path, const CalibrationOptions& calib) {
  ProfileSource s;
  s.model_path = model_path;
  stat_path(model_path, s.model_size, s.model_mtime);
  // Absolute, so that `optiq plan --select measured` finds the text again from elsewhere.
  std::error_code ec;
  s.calib = calib;
  if (calib.source != "self" && !calib.source.empty()) {
    const std::string abs = std::filesystem::absolute(calib.source, ec).lexically_normal().string();
    if (!ec) s.calib.source = abs;
  }
  return s;
}

// ---------------------------------------------------------------------------
// Table

namespace profile_detail {

// Anchor: among fitting candidates with >= 3 bits, the fewest bits, then the
// group size closest to 64; with none >= 3 bits, the most bits.
std::string pick_anchor(const std::vector<TensorFormat>& fits) {
  if (fits.empty()) return "";
  const TensorFormat* best = nullptr;
  auto better = [](const TensorFormat& a, const TensorFormat& b) {
    const int ab = a.code_bits(), bb = b.code_bits(), ag = a.group_size(), bg = b.group_size();
    const bool a3 = ab >= 3, b3 = bb >= 3;
    if (a3 != b3) return a3;
    if (ab != bb) return a3 ? ab < bb : ab > bb;
    if (ag != bg) return std::abs(ag - 64) < std::abs(bg - 64) || (std::abs(ag - 64) == std::abs(bg - 64) && ag > bg);
    return a.affine() && !b.affine();  // same bits and group: the affine one
  };
  for (const auto& f : fits)
    if (!f.is_source() && (!best || better(f, *best))) best = &f;  // `source` has no error to scale
  return best ? tensor_format_name(*best) : "";
}

std::vector<TensorFormat> fitting(const std::vector<TensorFormat>& cands, const ModuleInfo& m) {
  std::vector<TensorFormat> out;
  for (const auto& c : cands) {
    const TensorFormat f = module_format(c, m);
    if (format_fits(f, m.cols)) out.push_back(f);
  }
  return out;
}

SensitivityTable empty_table(const ModelConfig& c, const std::vector<TensorFormat>& candidates) {
  SensitivityTable t;
  t.candidates = candidates;
  for (const auto& m : quantizable_modules(c)) {
    ModuleSensitivity ms;
    ms.module = m;
    ms.anchor = pick_anchor(fitting(candidates, m));
    t.modules.push_back(std::move(ms));
  }
  return t;
}

}  // namespace profile_detail

using profile_detail::empty_table;
using profile_detail::fitting;

void SensitivityTable::calibrate_fast() {
  // ratio KL/E at anchors, per module kind, by layer
  std::map<ModuleKind, std::vector<std::pair<int, double>>> pts;
  std::vector<double> all;
  auto own_ratio = [](const ModuleSensitivity& ms) -> std::optional<double> {
    if (ms.anchor.empty()) return std::nullopt;
    auto it = ms.formats.find(ms.anchor);
    if (it == ms.formats.end() || !it->second.kl || !it->second.proxy || !(*it->second.proxy > 0)) return std::nullopt;
    return *it->second.kl / *it->second.proxy;
  };
  for (const auto& ms : modules)
    if (auto r = own_ratio(ms)) {
      pts[ms.module.kind].push_back({ms.module.layer, *r});
      all.push_back(*r);
    }
  double fallback = -1;
  if (!all.empty()) {  // geometric mean of every ratio
    double s = 0;
    for (double r : all) s += std::log(std::max(r, 1e-30));
    fallback = std::exp(s / all.size());
  }
  for (auto& ms : modules) {
    std::optional<double> ratio = own_ratio(ms);
    if (!ratio) {
      auto it = pts.find(ms.module.kind);
      if (it != pts.end() && !it->second.empty()) {
        auto& p = it->second;
        std::sort(p.begin(), p.end());
        const int l = ms.module.layer;
        if (l <= p.front().first) {
          ratio = p.front().second;
        } else if (l >= p.back().first) {
          ratio = p.back().second;
        } else {
          for (size_t i = 1; i < p.size(); ++i)
            if (l <= p[i].first) {
              const double a = (l - p[i - 1].first) / static_cast<double>(p[i].first - p[i - 1].first);
              ratio = (1 - a) * p[i - 1].second + a * p[i].second;
              break;
            }
        }
      } else if (fallback >= 0) {
        ratio = fallback;
      }
    }
    for (auto& [name, fs] : ms.formats) {
      if (fs.proxy && ratio)
        fs.kl_fast = *fs.proxy * *ratio;
      else
        fs.kl_fast.reset();
    }
  }
}

std::map<std::string, std::map<std::string, double>> SensitivityTable::damage(DamageSource use) const {
  std::map<std::string, std::map<std::string, double>> out;
  for (const auto& ms : modules) {
    auto& d = out[ms.module.path];
    for (const auto& f : fitting(candidates, ms.module)) {
      const std::string name = tensor_format_name(f);
      auto it = ms.formats.find(name);
      const FormatSensitivity* fs = it == ms.formats.end() ? nullptr : &it->second;
      std::optional<double> v;
      if (fs) {
        if (use == DamageSource::Exact) v = fs->kl;
        else if (use == DamageSource::Fast) v = fs->kl_fast;
        else v = fs->kl ? fs->kl : fs->kl_fast;
      }
      check(v.has_value(), "the profile has no {} damage for {} at {}: run `optiq profile` again (--method {})",
            use == DamageSource::Exact ? "exact" : use == DamageSource::Fast ? "fast" : "", ms.module.path, name,
            use == DamageSource::Exact ? "exact" : "fast");
      d[name] = std::max(0.0, *v);
    }
  }
  return out;
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  check(a.size() == b.size() && a.size() >= 2, "spearman: need two equal-length series of >= 2 values");
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t i, size_t j) { return v[i] < v[j]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < idx.size();) {
      size_t j = i;
      while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
      for (size_t k = i; k <= j; ++k) r[idx[k]] = (i + j) / 2.0;
      i = j + 1;
    }
    return r;
  };
  auto ra = ranks(a), rb = ranks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n, mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

std::optional<double> SensitivityTable::spearman_fast_exact() const {
  std::vector<double> f, e;
  for (const auto& ms : modules)
    for (const auto& [name, fs] : ms.formats)
      if (name != ms.anchor && fs.kl && fs.kl_fast) {
        f.push_back(*fs.kl_fast);
        e.push_back(*fs.kl);
      }
  if (f.size() < 3) return std::nullopt;
  return spearman(f, e);
}

int64_t SensitivityTable::count_exact() const {
  int64_t n = 0;
  for (const auto& ms : modules)
    for (const auto& [name, fs] : ms.formats) n += fs.kl.has_value();
  return n;
}

int64_t SensitivityTable::count_proxy() const {
  int64_t n = 0;
  for (const auto& ms : modules)
    for (const auto& [name, fs] : ms.formats) n += fs.proxy.has_value();
  return n;
}

json SensitivityTable::to_json() const {
  json mods = json::object();
  for (const auto& ms : modules) {
    json fm = json::object();
    for (const auto& [name, fs] : ms.formats) {
      json e = json::object();
      if (fs.kl) e["kl"] = *fs.kl;
      if (fs.proxy) e["proxy"] = *fs.proxy;
      if (fs.kl_fast) e["kl_fast"] = *fs.kl_fast;
      if (!fs.method.empty()) e["method"] = fs.method;
      fm[name] = e;
    }
    mods[ms.module.path] = {{"anchor", ms.anchor}, {"formats", fm}};
  }
  json cands = json::array();
  for (const auto& f : candidates) cands.push_back(tensor_format_name(f));
  json j = {{"format", "optiq-profile"},
            {"version", 1},
            {"model", {{"path", source.model_path}, {"size", source.model_size}, {"mtime", source.model_mtime}}},
            {"calibration",
             {{"source", source.calib.source},
              {"samples", source.calib.samples},
              {"seq", source.calib.seq},
              {"seed", source.calib.seed}}},
            {"candidates", cands},
            {"method", method},
            {"rounding", rounding},
            {"modules", mods}};
  if (auto s = spearman_fast_exact()) j["spearman_fast_exact"] = *s;
  if (!measured_with.is_null()) j["measured_with"] = measured_with;
  j["optiq"] = provenance_or_version(provenance);
  return j;
}

SensitivityTable SensitivityTable::from_json(const json& j, const ModelConfig& config, const std::string& where) {
  try {
    check(j.is_object() && j.value("format", "") == "optiq-profile", "{}: not an optiq profile (no \"format\": "
          "\"optiq-profile\")", where);
    std::vector<TensorFormat> cands;
    for (const auto& c : j.at("candidates")) {
      std::vector<TensorFormat> v;
      try {
        v = parse_candidates(c.get<std::string>());
      } catch (const Error& e) {
        fail("{}: candidates: {}", where, e.what());  // the file, not only the format text
      }
      cands.insert(cands.end(), v.begin(), v.end());
    }
    SensitivityTable t = empty_table(config, cands);
    const auto& m = j.at("model");
    t.source.model_path = m.value("path", "");
    t.source.model_size = json_int64_or(m, "size", 0, where);
    t.source.model_mtime = json_int64_or(m, "mtime", 0, where);
    const auto& c = j.at("calibration");
    t.source.calib.source = c.value("source", "");
    t.source.calib.samples = json_int_or(c, "samples", 0, where);
    t.source.calib.seq = json_int_or(c, "seq", 0, where);
    t.source.calib.seed = c.contains("seed") && !c["seed"].is_null() ? json_u64(c["seed"], where, "seed") : 0;
    t.method = j.value("method", "");
    t.rounding = j.value("rounding", "search");
    if (j.contains("measured_with")) t.measured_with = j["measured_with"];
    if (j.contains("optiq")) t.provenance = j["optiq"];
    std::map<std::string, ModuleSensitivity*> by_path;
    for (auto& ms : t.modules) by_path[ms.module.path] = &ms;
    for (const auto& [path, e] : j.at("modules").items()) {
      auto it = by_path.find(path);
      check(it != by_path.end(), "{}: module {} is not in this model (a profile of another model?)", where, path);
      for (const auto& [name, v] : e.at("formats").items()) {
        FormatSensitivity fs;
        if (v.contains("kl")) fs.kl = v["kl"].get<double>();
        if (v.contains("proxy")) fs.proxy = v["proxy"].get<double>();
        if (v.contains("kl_fast")) fs.kl_fast = v["kl_fast"].get<double>();
        fs.method = v.value("method", "");
        it->second->formats[name] = fs;
      }
    }
    return t;
  } catch (const json::exception& e) {
    fail("{}: malformed profile: {}", where, e.what());
  }
}

SensitivityTable SensitivityTable::read(const std::string& path, const ModelConfig& config) {
  std::ifstream in(path);
  check(static_cast<bool>(in), "{}: cannot read profile", path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return from_json(j, config, path);
}

void SensitivityTable::write(const std::string& path) const {
  write_file_atomic(path, to_json().dump(1) + "\n");
}

}  // namespace optiq
