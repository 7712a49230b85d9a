#include "plan/select.h"

#include <cmath>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "core/memory.h"
#include "model/quantize_model.h"
#include "plan/baselines.h"
#include "plan/budget.h"

namespace optiq {

namespace {

using DamageTable = std::map<std::string, std::map<std::string, double>>;


// d -> scale * (d / scale)^p with scale = the median positive damage, so that
// typical values keep their size and only the spread changes.
DamageTable transform(const DamageTable& damage, double p) {
  std::vector<double> all;
  for (const auto& [path, by] : damage)
    for (const auto& [f, d] : by)
      if (d > 0) all.push_back(d);
  if (all.empty()) return damage;
  std::nth_element(all.begin(), all.begin() + all.size() / 2, all.end());
  const double scale = all[all.size() / 2];
  DamageTable out = damage;
  for (auto& [path, by] : out)
    for (auto& [f, d] : by) d = d > 0 ? scale * std::pow(d / scale, p) : 0.0;
  return out;
}

std::optional<PrecisionMap> solve_with(const ModelConfig& config, const DamageTable& damage,
                                       const std::vector<TensorFormat>& formats, int64_t budget,
                                       const SolverOptions& so, const CandidateTime& time_of) {
  std::vector<SolverItem> items;
  for (const auto& m : quantizable_modules(config)) {
    auto it = damage.find(m.path);
    check(it != damage.end(), "the profile lacks {}: run `optiq profile` again", m.path);
    items.push_back(make_item(m, it->second, formats, time_of));
  }
  try {
    return solve(items, budget, so).precision_map();
  } catch (const Error&) {
    return std::nullopt;  // e.g. min3 below the budget: that variant does not exist here
  }
}

}  // namespace

double plan_bits_spread(const ModelConfig& config, const PrecisionMap& map) {
  double n = 0, sum = 0, sum2 = 0;
  for (const auto& m : quantizable_modules(config)) {
    const double w = static_cast<double>(m.numel());
    const double bits = 8.0 * static_cast<double>(module_bytes(m, map.format_of(m.path))) / w;
    n += w, sum += w * bits, sum2 += w * bits * bits;
  }
  if (n <= 0) return 0;
  const double mean = sum / n;
  return std::sqrt(std::max(0.0, sum2 / n - mean * mean));
}

double paired_stderr(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return 0;
  const size_t n = a.size();
  double mean = 0;
  for (size_t i = 0; i < n; ++i) mean += a[i] - b[i];
  mean /= static_cast<double>(n);
  double var = 0;
  for (size_t i = 0; i < n; ++i) var += (a[i] - b[i] - mean) * (a[i] - b[i] - mean);
  return std::sqrt(var / static_cast<double>(n - 1) / static_cast<double>(n));
}

size_t choose_measured_variant(const std::vector<PlanVariant>& variants, double z) {
  check(!variants.empty(), "choose_measured_variant: no variants");
  size_t best = 0;
  for (size_t i = 1; i < variants.size(); ++i)
    if (variants[i].measured < variants[best].measured) best = i;
  const PlanVariant& b = variants[best];
  size_t pick = best;
  for (size_t i = 0; i < variants.size(); ++i) {
    const PlanVariant& v = variants[i];
    if (i == best || v.measured_windows.size() != b.measured_windows.size() || v.measured_windows.size() < 2) continue;
    const double se = paired_stderr(v.measured_windows, b.measured_windows);
    if (v.measured - b.measured > z * se) continue;  // measurably worse
    const PlanVariant& p = variants[pick];
    if (v.bits_spread < p.bits_spread || (v.bits_spread == p.bits_spread && v.measured < p.measured)) pick = i;
  }
  return pick;
}

double plan_predicted_damage(const PrecisionMap& map, const DamageTable& damage) {
  double d = 0;
  for (const auto& [path, f] : map.formats) {
    if (!f) continue;  // float: the reference itself
    auto m = damage.find(path);
    check(m != damage.end(), "the profile lacks {}: profile the model again", path);
    auto it = m->second.find(tensor_format_name(f));
    // Never 0 for an unmeasured format: a plan that uses it is not predicted.
    check(it != m->second.end(), "the profile has no damage for {} at {}: profile that format too", path,
          tensor_format_name(f));
    d += it->second;
  }
  return d;
}

std::vector<PlanVariant> plan_variants(const ModelConfig& config, const DamageTable& damage,
                                       const std::vector<TensorFormat>& formats, int64_t budget,
                                       const SolverOptions& base, bool with_baselines,
                                       const CandidateTime& time_of) {
  std::vector<PlanVariant> out;
  const auto modules = quantizable_modules(config);
  auto too_slow = [&](const PrecisionMap& map) {
    if (base.max_time <= 0 || !time_of) return false;
    double t = 0;
    for (const auto& m : modules) t += time_of(m, map.format_of(m.path));
    return t > base.max_time * (1 + 1e-9);
  };
  std::set<std::string> candidates;
  for (const auto& f : formats) candidates.insert(tensor_format_name(f));
  // Every variant uses only the candidate formats (baselines such as kquant
  // want 5- and 6-bit formats: with 4- and 8-bit candidates they do not join).
  auto admissible = [&](const PrecisionMap& map) {
    for (const auto& [path, f] : map.formats)
      if (f && !candidates.count(tensor_format_name(f))) return false;
    return true;
  };
  auto add = [&](std::string name, std::optional<PrecisionMap> map) {
    if (!map || !admissible(*map) || too_slow(*map)) return;
    for (const auto& v : out)
      if (v.map.formats == map->formats) return;
    PlanVariant v;
    v.name = std::move(name);
    v.bytes = plan_bytes(config, *map);
    v.bits_per_weight = plan_bits_per_weight(config, *map);
    v.predicted = plan_predicted_damage(*map, damage);
    v.bits_spread = plan_bits_spread(config, *map);
    v.map = std::move(*map);
    out.push_back(std::move(v));
  };
  add("optiq", solve_with(config, damage, formats, budget, base, time_of));
  add("optiq convex", solve_with(config, transform(damage, 1.5), formats, budget, base, time_of));
  if (base.min_bits < 3) {
    SolverOptions so = base;
    so.min_bits = 3;
    add("optiq min3", solve_with(config, damage, formats, budget, so, time_of));
  }
  add("optiq concave", solve_with(config, transform(damage, 0.75), formats, budget, base, time_of));
  check(!out.empty(), "no plan fits the budget of {}", format_bytes(budget));
  if (!with_baselines || !base.pins.empty() || !base.tie_groups.empty() || base.min_bits > 0) return out;
  // Baselines ignore pins, ties and min-bits, so they join only unconstrained runs.
  for (const char* spec : {"kquant", "dynamic"}) {
    try {
      BaselinePlan b = baseline_plan_from_spec(config, spec, budget, damage);
      add("baseline " + b.name, std::move(b.map));
    } catch (const Error&) {
    }
  }
  int64_t best_uniform = -1;
  std::optional<PrecisionMap> uniform;
  std::string uniform_name;
  for (const auto& f : formats) {
    if (!f) continue;
    PrecisionMap u = uniform_plan(config, f);
    const int64_t b = plan_bytes(config, u);
    if (b <= budget && b > best_uniform) best_uniform = b, uniform = std::move(u), uniform_name = tensor_format_name(f);
  }
  add("baseline uniform " + uniform_name, std::move(uniform));
  return out;
}

PlanMeasurer::PlanMeasurer(const Model& model, const std::vector<std::vector<int32_t>>& windows,
                           std::optional<QuantizeRecipe> recipe, CalibrationStats stats)
    : model_(model),
      weights_(model, default_backend()),
      recipe_(recipe ? *recipe : QuantizeRecipe::for_model(model.config)),
      modules_(quantizable_modules(model.config)),
      stats_(std::move(stats)) {
  check(!windows.empty(), "plan measurement: no calibration windows");
  ctx_ = static_cast<int>(windows.front().size());
  chunks_ = static_cast<int>(windows.size());
  for (const auto& w : windows) {
    check(static_cast<int>(w.size()) == ctx_, "plan measurement: calibration windows differ in length");
    tokens_.insert(tokens_.end(), w.begin(), w.end());
  }
  ref_ = std::make_unique<ReferenceScores>(
      ReferenceScores::compute(model, tokens_, ctx_, chunks_, int64_t{2} << 30, false));
}

std::pair<double, double> PlanMeasurer::measure(const PrecisionMap& map) {
  const PerplexityResult r = evaluate(map);
  return {r.kld, r.kld_stderr};
}

PerplexityResult PlanMeasurer::evaluate(const PrecisionMap& map, bool progress) {
  // A module's rounding ("" plain, "weighted", "gptq": those whose statistics
  // are at hand); its quantized matrix is known by format and rounding.
  auto method_of = [&](const ModuleInfo& m) -> std::string {
    auto it = map.methods.find(m.path);
    if (it == map.methods.end()) return "";
    if (it->second == "gptq" && stats_.grams.count(m.path)) return "gptq";
    if (it->second == "weighted" && stats_.importance.count(m.path)) return "weighted";
    return "";
  };
  auto key_of = [&](const ModuleInfo& m, const TensorFormat& f) {
    const std::string method = method_of(m);
    return std::make_pair(m.path, tensor_format_name(f) + (method.empty() ? "" : "+" + method));
  };
  // The cache of quantized matrices (shared by the plans measured) stays
  // under a quarter of the memory: past that, what this plan does not use goes.
  size_t cached = 0;
  for (const auto& [key, lin] : cache_) cached += lin.bytes();
  if (cached > static_cast<size_t>(available_memory_bytes() / 4)) {
    std::set<std::pair<std::string, std::string>> used;
    for (const auto& m : modules_)
      if (auto f = map.formats.find(m.path); f != map.formats.end() && f->second) used.insert(key_of(m, f->second));
    for (auto it = cache_.begin(); it != cache_.end();) it = used.count(it->first) ? std::next(it) : cache_.erase(it);
  }
  // Quantized as the export does it (ModuleQuantizer: the map's roundings,
  // one GPTQ factorisation per shared input site).
  QuantizeModelOptions qo{.recipe = recipe_, .progress = false};
  quantize_as_planned(qo, stats_);
  std::optional<ModuleQuantizer> quantizer;
  std::vector<WeightSwap> swaps;  // undone when this returns or throws
  for (const auto& m : modules_) {
    auto f = map.formats.find(m.path);
    if (f == map.formats.end() || !f->second) continue;  // float: the model's own matrix
    const auto key = key_of(m, f->second);
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      if (!quantizer) quantizer.emplace(model_, map, qo);
      it = cache_.emplace(key, quantizer->quantize(m, module_linear(model_.weights, m))).first;
    }
    swaps.emplace_back(weights_, m, it->second);
  }
  PerplexityOptions po;
  po.ctx = ctx_;
  po.chunks = chunks_;
  po.ref_scores = ref_.get();
  po.progress = progress;
  return evaluate_perplexity(weights_, tokens_, po);
}

size_t measure_variants(PlanMeasurer& measurer, std::vector<PlanVariant>& variants, bool progress,
                        const MeasureHooks& hooks) {
  return measure_variants([&]() -> PlanMeasurer& { return measurer; }, variants, progress, hooks);
}

size_t measure_variants(const std::function<PlanMeasurer&()>& measurer, std::vector<PlanVariant>& variants,
                        bool progress, const MeasureHooks& hooks) {
  check(!variants.empty(), "measure_variants: no variants");
  std::optional<Progress> bar;
  if (progress) bar.emplace("select", static_cast<int64_t>(variants.size()), "plans");
  size_t lowest = 0;
  for (size_t i = 0; i < variants.size(); ++i) {
    PlanVariant& v = variants[i];
    if (!hooks.cached || !hooks.cached(v)) {
      PerplexityResult r = measurer().evaluate(v.map);
      v.measured = r.kld;
      v.measured_stderr = r.kld_stderr;
      v.measured_windows = std::move(r.window_kld);
      if (hooks.measured) hooks.measured(v);
    }
    if (v.measured < variants[lowest].measured) lowest = i;
    if (bar) bar->update(static_cast<int64_t>(i + 1), fmt::format("{} {:.4f}", v.name, v.measured));
  }
  const size_t pick = choose_measured_variant(variants);
  if (bar) {
    if (pick == lowest)
      bar->finish(fmt::format("best: {}", variants[pick].name));
    else
      bar->finish(fmt::format("chosen: {} ({:.4f}; {} measured {:.4f}, within the paired noise, with its bits spread more)",
                              variants[pick].name, variants[pick].measured, variants[lowest].name,
                              variants[lowest].measured));
  }
  return pick;
}

}  // namespace optiq
