#include "pipeline/plan_step.h"

#include <algorithm>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "plan/baselines.h"
#include "plan/plan_json.h"

namespace optiq {

namespace {
// Every plan the step makes ends here: it takes, for each chosen format, the
// rounding the profile measured (GPTQ where it won), so that the export
// quantizes as profiled, and writes the file when asked.
void finish_plan(PrecisionMap& map, const SensitivityTable& t, const ModelConfig& config, const PlanMetadata& meta,
                 const std::string& out) {
  map.methods.clear();
  for (const auto& ms : t.modules) {
    auto f = map.formats.find(ms.module.path);
    if (f == map.formats.end() || f->second.is_float()) continue;
    auto fs = ms.formats.find(tensor_format_name(f->second));
    if (fs != ms.formats.end() && !fs->second.method.empty()) map.methods[ms.module.path] = fs->second.method;
  }
  if (!out.empty()) write_plan(out, map, config, meta);
}
}  // namespace

std::string_view damage_source_name(DamageSource d) {
  return d == DamageSource::Exact ? "exact" : d == DamageSource::Fast ? "fast" : "auto";
}

std::vector<TensorFormat> plan_formats(const SensitivityTable& t) {
  std::vector<TensorFormat> formats(t.candidates.begin(), t.candidates.end());
  formats.push_back(std::nullopt);
  return formats;
}

namespace {

SolverOptions solver_options(const ModelConfig& config, const PlanStepOptions& a) {
  SolverOptions so;
  so.fixed_bytes = fixed_weight_bytes(config);
  so.min_bits = a.min_bits;
  so.pins = a.pins;
  if (a.tie != TieGroups::None)
    so.tie_groups = tie_qkv_groups(quantizable_modules(config), a.tie == TieGroups::QkvGateUp);
  return so;
}

}  // namespace

TokenWindows selection_windows(const Model& m, const SensitivityTable& t, const PlanStepOptions& opt,
                               const TokenWindows* windows, const std::string& profile_path) {
  TokenWindows w;
  if (windows) {
    const size_t n = opt.select_windows > 0 ? std::min<size_t>(windows->size(), opt.select_windows) : windows->size();
    w.assign(windows->begin(), windows->begin() + n);
  } else {
    w = profile_calibration_windows(m, t, profile_path);
    if (opt.select_windows > 0 && static_cast<int>(w.size()) > opt.select_windows) w.resize(opt.select_windows);
  }
  return w;
}

PlanStepResult run_plan_step(const Model& model, const SensitivityTable& t, const PlanStepOptions& a,
                             const std::string& out, SelectionContext ctx) {
  if (a.select != PlanSelection::Measured || !a.baseline.empty()) return run_plan_step(model.config, t, a, out);
  const ModelConfig& config = model.config;
  PlanStepOptions predicted = a;
  predicted.select = PlanSelection::Predicted;
  PlanStepResult r = run_plan_step(config, t, predicted, "");  // budget, solver certificate
  const auto damage = t.damage(a.damage);
  const std::vector<TensorFormat> formats = plan_formats(t);
  r.variants = plan_variants(config, damage, formats, r.budget.weight_bytes, solver_options(config, a));
  std::unique_ptr<PlanMeasurer> own;
  PlanMeasurer* measurer = ctx.measurer;
  if (!measurer) {
    own = std::make_unique<PlanMeasurer>(model, selection_windows(model, t, a, ctx.windows, ctx.profile_path));
    measurer = own.get();
  }
  const size_t best = measure_variants(*measurer, r.variants, a.progress);
  std::rotate(r.variants.begin(), r.variants.begin() + best, r.variants.begin() + best + 1);
  const PlanVariant& v = r.variants.front();
  r.map = v.map;
  r.solution.formats = v.map.formats;
  r.solution.bytes = v.bytes;
  r.solution.damage = v.predicted;
  r.solution.method = "measured selection: " + v.name;
  r.bits_per_weight = plan_bits_per_weight(config, r.map);
  nlohmann::json variants = nlohmann::json::array();
  for (const auto& x : r.variants)
    variants.push_back({{"name", x.name}, {"bytes", x.bytes}, {"predicted_kl", x.predicted},
                        {"calib_kl", x.measured}, {"calib_kl_stderr", x.measured_stderr}});
  PlanMetadata meta;
  meta.budget = r.budget.description;
  meta.fit = &r.budget;
  meta.predicted_kl = v.predicted;
  meta.method = fmt::format("optiq measured selection: {} (profile {}, damage {})", v.name, t.method,
                            damage_source_name(a.damage));
  meta.calib_kl = v.measured;
  meta.variants = &variants;
  meta.provenance = &a.provenance;
  finish_plan(r.map, t, config, meta, out);
  return r;
}

PlanStepResult run_plan_step(const ModelConfig& config, const SensitivityTable& t, const PlanStepOptions& a,
                             const std::string& out) {
  const auto damage = t.damage(a.damage);
  const std::vector<TensorFormat> formats = plan_formats(t);

  PlanStepResult r;
  r.budget = resolve_budget(a.budget, config, formats);

  const auto modules = quantizable_modules(config);
  std::vector<SolverItem> items;
  for (const auto& m : modules) {
    auto it = damage.find(m.path);
    check(it != damage.end(), "the profile lacks {}: run `optiq profile` again", m.path);
    items.push_back(make_item(m, it->second, formats));
  }
  if (!a.baseline.empty()) {
    BaselinePlan b = baseline_plan_from_spec(config, a.baseline, r.budget.weight_bytes, damage);
    r.map = b.map;
    r.solution.bytes = b.bytes;
    r.solution.method = b.name;
    r.solution.damage = plan_predicted_damage(r.map, damage);
    r.solution.lower_bound = r.solution.damage;
    for (const auto& [path, f] : r.map.formats) r.solution.formats[path] = f;
    r.bits_per_weight = plan_bits_per_weight(config, r.map);
    PlanMetadata meta;
    meta.budget = r.budget.description;
    meta.fit = &r.budget;
    meta.predicted_kl = r.solution.damage;
    meta.method = "baseline " + b.name;
    meta.provenance = &a.provenance;
    finish_plan(r.map, t, config, meta, out);
    return r;
  }
  const SolverOptions so = solver_options(config, a);
  r.solution = solve(items, r.budget.weight_bytes, so);
  r.map = r.solution.precision_map();
  r.bits_per_weight = plan_bits_per_weight(config, r.map);
  PlanMetadata meta;
  meta.budget = r.budget.description;
  meta.fit = &r.budget;
  meta.predicted_kl = r.solution.damage;
  meta.method = fmt::format("optiq {} (profile {}, damage {})", r.solution.method, t.method, damage_source_name(a.damage));
  meta.lower_bound_kl = r.solution.lower_bound;
  meta.gap_kl = r.solution.gap;
  meta.provenance = &a.provenance;
  finish_plan(r.map, t, config, meta, out);
  return r;
}

}  // namespace optiq
