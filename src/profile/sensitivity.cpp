#include "profile/sensitivity.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/parallel.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "kernels/matmul.h"
#include "model/quantize_model.h"
#include "model/transformer.h"

namespace optiq {

using nlohmann::json;

ProfileMethod parse_profile_method(const std::string& text) {
  if (text == "fast") return ProfileMethod::Fast;
  if (text == "exact") return ProfileMethod::Exact;
  if (text == "both") return ProfileMethod::Both;
  fail("--method '{}': expected fast, exact or both", text);
}

std::string profile_method_name(ProfileMethod m) {
  switch (m) {
    case ProfileMethod::Fast: return "fast";
    case ProfileMethod::Exact: return "exact";
    case ProfileMethod::Both: return "both";
  }
  return "?";
}

std::vector<AffineFormat> default_profile_candidates() {
  std::vector<AffineFormat> v;
  for (int b : {2, 3, 4, 5, 6, 8})
    for (int g : {32, 64, 128}) v.push_back({b, g});
  return v;
}

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

int parse_int(const std::string& s, const std::string& text) {
  check(!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }),
        "--candidates '{}': '{}' is not a number", text, s);
  return std::stoi(s);
}

}  // namespace

std::vector<AffineFormat> parse_candidates(const std::string& text) { return parse_affine_format_list(text); }

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
         base_name(calib_source) == base_name(o.calib_source) && calib_samples == o.calib_samples &&
         calib_seq == o.calib_seq && seed == o.seed;
}

std::string ProfileSource::describe() const {
  return fmt::format("{} ({} bytes), calibration {} x{} windows of {} tokens, seed {}", model_path, model_size,
                     calib_source, calib_samples, calib_seq, seed);
}

ProfileSource make_profile_source(const std::string& model_path, const CalibrationOptions& calib) {
  ProfileSource s;
  s.model_path = model_path;
  stat_path(model_path, s.model_size, s.model_mtime);
  // Absolute, so that `optiq plan --select measured` finds the text again from elsewhere.
  std::error_code ec;
  s.calib_source = calib.source == "self" || calib.source.empty()
                       ? calib.source
                       : std::filesystem::absolute(calib.source, ec).lexically_normal().string();
  if (ec) s.calib_source = calib.source;
  s.calib_samples = calib.samples;
  s.calib_seq = calib.seq;
  s.seed = calib.seed;
  return s;
}

// ---------------------------------------------------------------------------
// Table

namespace {

// Anchor: among fitting candidates with >= 3 bits, the fewest bits, then the
// group size closest to 64; with none >= 3 bits, the most bits.
std::string pick_anchor(const std::vector<AffineFormat>& fits) {
  if (fits.empty()) return "";
  const AffineFormat* best = nullptr;
  auto better = [](const AffineFormat& a, const AffineFormat& b) {
    const bool a3 = a.bits >= 3, b3 = b.bits >= 3;
    if (a3 != b3) return a3;
    if (a.bits != b.bits) return a3 ? a.bits < b.bits : a.bits > b.bits;
    return std::abs(a.group_size - 64) < std::abs(b.group_size - 64) ||
           (std::abs(a.group_size - 64) == std::abs(b.group_size - 64) && a.group_size > b.group_size);
  };
  for (const auto& f : fits)
    if (!best || better(f, *best)) best = &f;
  return affine_format_name(*best);
}

std::vector<AffineFormat> fitting(const std::vector<AffineFormat>& cands, int64_t cols) {
  std::vector<AffineFormat> out;
  for (const auto& f : cands)
    if (format_fits(f, cols)) out.push_back(f);
  return out;
}

SensitivityTable empty_table(const ModelConfig& c, const std::vector<AffineFormat>& candidates) {
  SensitivityTable t;
  t.candidates = candidates;
  for (const auto& m : quantizable_modules(c)) {
    ModuleSensitivity ms;
    ms.module = m;
    ms.anchor = pick_anchor(fitting(candidates, m.cols));
    t.modules.push_back(std::move(ms));
  }
  return t;
}

}  // namespace

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
    for (const auto& f : fitting(candidates, ms.module.cols)) {
      const std::string name = affine_format_name(f);
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
      fm[name] = e;
    }
    mods[ms.module.path] = {{"anchor", ms.anchor}, {"formats", fm}};
  }
  json cands = json::array();
  for (const auto& f : candidates) cands.push_back(affine_format_name(f));
  json j = {{"format", "optiq-profile"},
            {"version", 1},
            {"model", {{"path", source.model_path}, {"size", source.model_size}, {"mtime", source.model_mtime}}},
            {"calibration",
             {{"source", source.calib_source},
              {"samples", source.calib_samples},
              {"seq", source.calib_seq},
              {"seed", source.seed}}},
            {"candidates", cands},
            {"method", method},
            {"modules", mods}};
  if (auto s = spearman_fast_exact()) j["spearman_fast_exact"] = *s;
  return j;
}

SensitivityTable SensitivityTable::from_json(const json& j, const ModelConfig& config, const std::string& where) {
  try {
    check(j.is_object() && j.value("format", "") == "optiq-profile", "{}: not an optiq profile (no \"format\": "
          "\"optiq-profile\")", where);
    std::vector<AffineFormat> cands;
    for (const auto& c : j.at("candidates")) {
      auto v = parse_candidates(c.get<std::string>());
      cands.insert(cands.end(), v.begin(), v.end());
    }
    SensitivityTable t = empty_table(config, cands);
    const auto& m = j.at("model");
    t.source.model_path = m.value("path", "");
    t.source.model_size = m.value("size", int64_t{0});
    t.source.model_mtime = m.value("mtime", int64_t{0});
    const auto& c = j.at("calibration");
    t.source.calib_source = c.value("source", "");
    t.source.calib_samples = c.value("samples", 0);
    t.source.calib_seq = c.value("seq", 0);
    t.source.seed = c.value("seed", uint64_t{0});
    t.method = j.value("method", "");
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

// ---------------------------------------------------------------------------
// Profiling

namespace {

// Rows of floats kept as fp32, or bf16 when large.
class RowStore {
 public:
  void init(size_t n, bool bf16) {
    bf16_ = bf16;
    if (bf16) h_.assign(n, 0);
    else f_.assign(n, 0.0f);
  }
  void put(size_t off, const float* x, size_t n) {
    if (bf16_)
      for (size_t i = 0; i < n; ++i) h_[off + i] = f32_to_bf16(x[i]);
    else
      std::copy_n(x, n, f_.data() + off);
  }
  void get(size_t off, size_t n, float* out) const {
    if (bf16_)
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h_[off + i]);
    else
      std::copy_n(f_.data() + off, n, out);
  }
  float at(size_t i) const { return bf16_ ? bf16_to_f32(h_[i]) : f_[i]; }

 private:
  bool bf16_ = false;
  std::vector<float> f_;
  std::vector<uint16_t> h_;
};

// G += X^T X for n rows of `cols` (through the matmul kernel on X^T).
void accumulate_gram(std::vector<double>& g, const float* x, int64_t n, int64_t cols, std::vector<float>& xt,
                     std::vector<float>& y) {
  if (g.empty()) g.assign(static_cast<size_t>(cols) * cols, 0.0);
  xt.resize(static_cast<size_t>(cols) * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) xt[j * n + i] = x[i * cols + j];
  y.resize(static_cast<size_t>(cols) * cols);
  f32_matmul(xt.data(), cols, n, xt.data(), cols, y.data());
  for (size_t i = 0; i < y.size(); ++i) g[i] += y[i];
}

using Site = ActivationObserver::Site;

class RefObserver : public ActivationObserver {
 public:
  RowStore* hidden = nullptr;
  size_t total_tokens = 0, offset = 0;
  std::vector<double>* head_gram = nullptr;
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::LayerIn && hidden)
      hidden->put((static_cast<size_t>(layer) * total_tokens + offset) * cols, x, static_cast<size_t>(n * cols));
    if (site == Site::HeadIn && head_gram) accumulate_gram(*head_gram, x, n, cols, xt_, y_);
  }

 private:
  std::vector<float> xt_, y_;
};

struct StopForward {};

// Gram matrices of the four input sites of layers [l0, l1); stops the forward
// pass when it reaches layer l1 or the head.
class GramObserver : public ActivationObserver {
 public:
  GramObserver(int l0, int l1) : l0_(l0), l1_(l1), grams_(static_cast<size_t>(l1 - l0) * 4) {}
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::HeadIn || (site == Site::LayerIn && layer >= l1_)) throw StopForward{};
    if (site == Site::LayerIn || layer < l0_) return;
    accumulate_gram(grams_[static_cast<size_t>(layer - l0_) * 4 + static_cast<int>(site)], x, n, cols, xt_, y_);
  }
  std::vector<double>& gram(int layer, int site) { return grams_[static_cast<size_t>(layer - l0_) * 4 + site]; }

 private:
  int l0_, l1_;
  std::vector<std::vector<double>> grams_;
  std::vector<float> xt_, y_;
};

// The per-layer input site a module multiplies (index into the Gram arrays).
int site_of(ModuleKind kind) {
  const auto site = module_kind_info(kind).input;
  return site && static_cast<int>(*site) < kLayerInputSites ? static_cast<int>(*site) : -1;
}

std::vector<float> to_mean_f32(const std::vector<double>& g, double tokens) {
  std::vector<float> out(g.size());
  for (size_t i = 0; i < g.size(); ++i) out[i] = static_cast<float>(g[i] / tokens);
  return out;
}

// sum_r d_r G d_r^T for D {rows, cols}, G {cols, cols} symmetric.
double gram_proxy(const std::vector<float>& d, int64_t rows, int64_t cols, const std::vector<float>& g) {
  std::vector<float> dg(d.size());
  f32_matmul(g.data(), cols, cols, d.data(), rows, dg.data());  // D G^T = D G
  const double s = parallel_sum(rows, [&](int64_t r) {
    double t = 0;
    for (int64_t j = 0; j < cols; ++j) t += static_cast<double>(d[r * cols + j]) * dg[r * cols + j];
    return t;
  }, 16);
  return std::max(s, 0.0);
}

// Restores a swapped Linear on scope exit.
struct SwapGuard {
  Linear& slot;
  Linear saved;
  SwapGuard(Linear& s, Linear replacement) : slot(s), saved(std::move(s)) { slot = std::move(replacement); }
  ~SwapGuard() { slot = std::move(saved); }
};

}  // namespace

SensitivityTable profile_model(const Model& ref, const std::vector<std::vector<int32_t>>& windows,
                               const ProfileOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = ref.config;
  check(!windows.empty(), "profiling needs at least one calibration window");
  check(!opt.candidates.empty(), "profiling needs at least one candidate format");
  for (const auto& w : windows) check(w.size() >= 4, "calibration windows must hold at least 4 tokens");

  SensitivityTable t = empty_table(c, opt.candidates);
  t.source = opt.source;
  t.method = profile_method_name(opt.method);

  // Resume from the cache.
  std::error_code ec;
  if (!opt.cache_path.empty() && std::filesystem::exists(opt.cache_path, ec)) {
    try {
      SensitivityTable old = SensitivityTable::read(opt.cache_path, c);
      if (old.source.matches(opt.source)) {
        std::map<std::string, const ModuleSensitivity*> by_path;
        for (const auto& ms : old.modules) by_path[ms.module.path] = &ms;
        for (auto& ms : t.modules) {
          auto it = by_path.find(ms.module.path);
          if (it == by_path.end()) continue;
          for (const auto& [name, fs] : it->second->formats) {
            FormatSensitivity& dst = ms.formats[name];
            dst.kl = fs.kl;
            dst.proxy = fs.proxy;
          }
        }
      } else {
        fmt::print(stderr, "optiq: warning: {}: cache made for {}; measuring again for {}\n", opt.cache_path,
                   old.source.describe(), opt.source.describe());
      }
    } catch (const Error& e) {
      fmt::print(stderr, "optiq: warning: ignoring cache: {}\n", e.what());
    }
  }

  const int anchor_every = opt.anchor_every > 0 ? opt.anchor_every : (c.n_layers <= 12 ? 1 : 3);
  auto anchor_layer = [&](int l) { return l < 0 || l % anchor_every == 0 || l == c.n_layers - 1; };
  const bool all_exact = opt.method != ProfileMethod::Fast;
  const bool want_proxy = opt.method != ProfileMethod::Exact;

  // What to measure: per module, per fitting candidate, exact and/or proxy.
  struct Need {
    AffineFormat fmt;
    bool exact = false, proxy = false;
  };
  std::vector<std::vector<Need>> needs(t.modules.size());
  int64_t total = 0;
  bool need_hidden = false, need_head_gram = false;
  std::set<int> gram_layers;
  for (size_t i = 0; i < t.modules.size(); ++i) {
    const auto& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    for (const auto& f : fitting(opt.candidates, m.cols)) {
      const std::string name = affine_format_name(f);
      auto it = ms.formats.find(name);
      const bool has_kl = it != ms.formats.end() && it->second.kl;
      const bool has_proxy = it != ms.formats.end() && it->second.proxy;
      Need n{f};
      n.exact = !has_kl && (all_exact || (name == ms.anchor && anchor_layer(m.layer)));
      n.proxy = !has_proxy && want_proxy;
      if (!n.exact && !n.proxy) continue;
      total += n.exact + n.proxy;
      if (m.layer >= 0) need_hidden = true;
      if (n.proxy && m.layer >= 0) gram_layers.insert(m.layer);
      if (n.proxy && (m.kind == ModuleKind::LmHead || (m.kind == ModuleKind::Embed && c.tied_embeddings)))
        need_head_gram = true;
      needs[i].push_back(n);
    }
  }
  if (total == 0) {
    t.calibrate_fast();
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
  }

  // Reference pass.
  const int64_t vocab = c.vocab_size, dim = c.dim;
  const size_t nw = windows.size();
  std::vector<size_t> tok_off(nw), scored_off(nw);
  std::vector<int64_t> from(nw);
  size_t total_tokens = 0, total_scored = 0;
  int64_t max_len = 0, max_scored = 0;
  for (size_t w = 0; w < nw; ++w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    tok_off[w] = total_tokens;
    scored_off[w] = total_scored;
    from[w] = n / 2;
    total_tokens += n;
    total_scored += n - n / 2;
    max_len = std::max(max_len, n);
    max_scored = std::max(max_scored, n - n / 2);
  }
  RowStore hidden, logp;
  const size_t hidden_n = need_hidden ? static_cast<size_t>(c.n_layers) * total_tokens * dim : 0;
  const size_t logp_n = total_scored * vocab;
  hidden.init(hidden_n, hidden_n * 4 > static_cast<size_t>(opt.store_f32_limit));
  logp.init(logp_n, logp_n * 4 > static_cast<size_t>(opt.store_f32_limit));
  std::vector<double> token_freq(vocab, 0.0), head_gram_d;
  for (const auto& w : windows)
    for (int32_t tok : w) {
      check(tok >= 0 && tok < vocab, "token id {} is outside the vocabulary of {}", tok, vocab);
      token_freq[tok] += 1.0 / total_tokens;
    }

  Transformer tf(ref, static_cast<int>(max_len));
  std::vector<float> logits(static_cast<size_t>(max_scored) * vocab);
  {
    RefObserver obs;
    obs.hidden = need_hidden ? &hidden : nullptr;
    obs.total_tokens = total_tokens;
    obs.head_gram = need_head_gram ? &head_gram_d : nullptr;
    tf.set_observer(&obs);
    std::optional<Progress> p;
    if (opt.progress) p.emplace("profile: reference", static_cast<int64_t>(nw), "windows");
    std::vector<double> lp;
    for (size_t w = 0; w < nw; ++w) {
      obs.offset = tok_off[w];
      tf.reset();
      tf.forward(windows[w], logits.data(), from[w]);
      const int64_t rows = static_cast<int64_t>(windows[w].size()) - from[w];
      std::vector<float> row(vocab);
      for (int64_t r = 0; r < rows; ++r) {
        log_softmax(&logits[r * vocab], vocab, lp);
        for (int64_t v = 0; v < vocab; ++v) row[v] = static_cast<float>(lp[v]);
        logp.put((scored_off[w] + r) * vocab, row.data(), vocab);
      }
      if (p) p->update(static_cast<int64_t>(w + 1));
    }
    if (p) p->finish();
    tf.set_observer(nullptr);
  }
  const std::vector<float> head_gram = need_head_gram ? to_mean_f32(head_gram_d, total_tokens) : std::vector<float>{};
  head_gram_d.clear();
  head_gram_d.shrink_to_fit();

  // Mean KL(ref || current model) over the scored rows, run from `layer` (-1: full forward).
  std::vector<float> hbuf(static_cast<size_t>(max_len) * dim);
  auto measure_kl = [&](int layer) {
    double sum = 0;
    int64_t count = 0;
    for (size_t w = 0; w < nw; ++w) {
      const int64_t n = static_cast<int64_t>(windows[w].size());
      tf.reset();
      if (layer >= 0) {
        hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                   hbuf.data());
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), from[w]);
      } else {
        tf.forward(windows[w], logits.data(), from[w]);
      }
      const int64_t rows = n - from[w];
      std::vector<double> row_kl(rows);
      parallel_for_range(rows, 4, [&](int64_t r0, int64_t r1) {
        std::vector<double> lq, lpr(vocab);
        for (int64_t r = r0; r < r1; ++r) {
          log_softmax(&logits[r * vocab], vocab, lq);
          const size_t base = (scored_off[w] + r) * vocab;
          for (int64_t v = 0; v < vocab; ++v) lpr[v] = logp.at(base + v);
          row_kl[r] = kl_divergence(lpr, lq);
        }
      });
      double s = 0;
      for (double k : row_kl) s += k;
      sum += s;
      count += rows;
    }
    return sum / std::max<int64_t>(count, 1);
  };

  // Gram matrices of a group of layers, computed when first needed.
  std::map<int, std::array<std::vector<float>, 4>> grams;
  auto ensure_grams = [&](int layer) {
    if (grams.count(layer)) return;
    grams.clear();
    const int64_t per_layer =
        (3 * static_cast<int64_t>(dim) * dim + static_cast<int64_t>(c.q_dim()) * c.q_dim() +
         static_cast<int64_t>(c.hidden_dim) * c.hidden_dim) * 12;  // double accumulators + float copies
    int l1 = layer + static_cast<int>(std::max<int64_t>(1, opt.gram_memory / std::max<int64_t>(per_layer, 1)));
    l1 = std::min(l1, c.n_layers);
    while (l1 > layer + 1 && !gram_layers.count(l1 - 1)) --l1;
    GramObserver obs(layer, l1);
    tf.set_observer(&obs);
    for (size_t w = 0; w < nw; ++w) {
      const int64_t n = static_cast<int64_t>(windows[w].size());
      hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                 hbuf.data());
      tf.reset();
      try {
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), n);
      } catch (const StopForward&) {
      }
    }
    tf.set_observer(nullptr);
    tf.reset();
    for (int l = layer; l < l1; ++l)
      for (int s = 0; s < 4; ++s) grams[l][s] = to_mean_f32(obs.gram(l, s), total_tokens);
  };

  std::optional<Progress> progress;
  if (opt.progress) progress.emplace("profile", total, "measurements");
  int64_t done = 0;
  // The export's recipe (bf16 scales for Gemma): the profile measures what ships.
  const QuantizeOptions qo = QuantizeRecipe::for_model(ref.config, opt.rounding).options();
  for (size_t i = 0; i < t.modules.size(); ++i) {
    if (needs[i].empty()) continue;
    ModuleSensitivity& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    Linear& slot = const_cast<Linear&>(module_linear(ref.weights, m));
    const std::vector<float> w = slot.to_f32();
    for (const Need& n : needs[i]) {
      const std::string name = affine_format_name(n.fmt);
      AffineMatrix q = quantize(w.data(), m.rows, m.cols, n.fmt, qo);
      std::vector<float> dq = dequantize(q.view());
      FormatSensitivity& fs = ms.formats[name];
      if (n.proxy) {
        std::vector<float> d(w.size());
        for (size_t k = 0; k < w.size(); ++k) d[k] = w[k] - dq[k];
        double e = 0;
        if (m.kind == ModuleKind::Embed) {
          for (int64_t r = 0; r < m.rows; ++r) {
            if (token_freq[r] == 0) continue;
            double s = 0;
            for (int64_t j = 0; j < m.cols; ++j) s += static_cast<double>(d[r * m.cols + j]) * d[r * m.cols + j];
            e += token_freq[r] * s;
          }
          if (c.tied_embeddings) e += gram_proxy(d, m.rows, m.cols, head_gram);
        } else if (m.kind == ModuleKind::LmHead) {
          e = gram_proxy(d, m.rows, m.cols, head_gram);
        } else {
          ensure_grams(m.layer);
          e = gram_proxy(d, m.rows, m.cols, grams[m.layer][site_of(m.kind)]);
        }
        fs.proxy = e;
        ++t.proxy_measured;
        if (progress) progress->update(++done, m.path);
      }
      if (n.exact) {
        Linear fake = Linear::from_f32(std::move(dq), m.rows, m.cols);
        fake.set_act_rounding(slot.act_rounding());
        {
          SwapGuard guard(slot, std::move(fake));
          fs.kl = measure_kl(m.layer);
        }
        ++t.exact_measured;
        if (progress) progress->update(++done, m.path);
      }
    }
    if (!opt.cache_path.empty()) t.write(opt.cache_path);
  }
  if (progress) progress->finish();
  t.calibrate_fast();
  if (!opt.cache_path.empty()) t.write(opt.cache_path);
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

}  // namespace optiq
