#include "pipeline/plan_step.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/version.h"
#include "kernels/matmul.h"
#include "model/calibration_stats.h"
#include "plan/baselines.h"
#include "plan/plan_json.h"

namespace optiq {

void assign_profiled_methods(PrecisionMap& map, const SensitivityTable& t) {
  map.methods.clear();
  for (const auto& ms : t.modules) {
    auto f = map.formats.find(ms.module.path);
    if (f == map.formats.end() || f->second.is_float() || f->second.is_source()) continue;  // (kept: not rounded)
    auto fs = ms.formats.find(tensor_format_name(f->second));
    if (fs != ms.formats.end() && !fs->second.method.empty()) map.methods[ms.module.path] = fs->second.method;
  }
}

bool profile_uses_method(const SensitivityTable& t, const std::string& method) {
  for (const auto& ms : t.modules)
    for (const auto& [name, fs] : ms.formats)
      if (fs.method == method) return true;
  return false;
}

CalibrationStats profiled_rounding_stats(const Model& model, const SensitivityTable& t, const TokenWindows& windows,
                                         bool progress) {
  CalibrationStats s;
  if (profile_uses_method(t, "gptq")) s.grams = collect_grams(model, windows, progress);
  if (profile_uses_method(t, "weighted")) s.importance = collect_importance(model, windows, progress);
  return s;
}

std::unique_ptr<PlanMeasurer> make_plan_measurer(const Model& model, const SensitivityTable& t,
                                                 const PlanStepOptions& opt, const SelectionContext& ctx) {
  auto calibration = [&] {
    return ctx.windows ? *ctx.windows : profile_calibration_windows(model, t, ctx.profile_path);
  };
  const bool gptq = profile_uses_method(t, "gptq");
  if (gptq) {
    // GPTQ fits its roundings to the windows it sees: measured on those, a
    // plan with more GPTQ'd matrices looks better than it is on other text
    // (SmolLM2 at 4.5 bpw chose a plan 7% better than the rest on its
    // calibration windows that was 13% worse than uniform GPTQ held out). So
    // the variants are quantized with the statistics of calibration windows
    // the selection does not measure; the export still uses all of them.
    const TokenWindows all = calibration();
    if (all.size() >= 2) {
      auto [selection, fit] = split_selection_windows(all, opt.select_windows);
      return std::make_unique<PlanMeasurer>(model, std::move(selection), std::nullopt,
                                            profiled_rounding_stats(model, t, fit, opt.progress));
    }
    warn("measured selection: one calibration window, so GPTQ's plans are measured on the tokens GPTQ is fitted "
         "to (optimistic; more --calib-samples hold some out)");
  }
  CalibrationStats stats;
  if (ctx.stats) {
    stats = *ctx.stats;
  } else if (gptq || profile_uses_method(t, "weighted")) {
    // The export's statistics: over every calibration window of the profile.
    stats = profiled_rounding_stats(model, t, calibration(), opt.progress);
  }
  return std::make_unique<PlanMeasurer>(model, selection_windows(model, t, opt, ctx.windows, ctx.profile_path),
                                        std::nullopt, std::move(stats));
}

std::pair<TokenWindows, TokenWindows> split_selection_windows(const TokenWindows& all, int select_windows) {
  size_t n = std::max<size_t>(all.size() / 2, 1);
  if (select_windows > 0) n = std::min<size_t>(n, static_cast<size_t>(select_windows));
  const auto mid = all.begin() + static_cast<std::ptrdiff_t>(std::min(n, all.size()));
  return {TokenWindows(all.begin(), mid), TokenWindows(mid, all.end())};
}

namespace {
// Every plan the step makes ends here: it takes, for each chosen format, the
// rounding the profile measured (GPTQ where it won), so that the export
// quantizes as profiled, and writes the file when asked.
void finish_plan(PrecisionMap& map, const SensitivityTable& t, const ModelConfig& config, const PlanMetadata& meta,
                 const std::string& out) {
  assign_profiled_methods(map, t);
  if (!out.empty()) write_plan(out, map, config, meta);
}
}  // namespace

std::string_view damage_source_name(DamageSource d) {
  return d == DamageSource::Exact ? "exact" : d == DamageSource::Fast ? "fast" : "auto";
}

nlohmann::json decode_speed_json(const PlanStepResult& r, const DecodeSpeedModel& speed) {
  if (!r.speed_reference) return nullptr;
  const SpeedReference& ref = *r.speed_reference;
  return {{"runtime", speed.runtime},
          {"table", speed.source},
          {"reference", "llama.cpp " + ref.mix},
          {"reference_bytes", ref.bytes},
          {"bound_vs_reference", r.max_ns > 0 ? nlohmann::json(r.max_ns / ref.ns) : nlohmann::json(nullptr)},
          {"predicted_vs_reference", r.predicted_ns / ref.ns}};
}

std::vector<TensorFormat> plan_formats(const SensitivityTable& t) {
  std::vector<TensorFormat> formats(t.candidates.begin(), t.candidates.end());
  formats.push_back(std::nullopt);
  return formats;
}

namespace {

// The decode-speed bound of a plan step (PlanStepOptions::max_slowdown).
struct SpeedBound {
  CandidateTime time_of;
  double max_ns = 0;
  double slowdown = 0;
  SpeedReference ref;
};

std::optional<SpeedBound> speed_bound(const ModelConfig& config, const SensitivityTable& t, const PlanStepOptions& a,
                                      int64_t budget) {
  double slowdown = a.max_slowdown;
  if (a.max_slowdown_auto) {
    const bool gguf = !t.candidates.empty() &&
                      std::all_of(t.candidates.begin(), t.candidates.end(), [](const TensorFormat& f) { return f.ggml(); });
    // 5% predicted: the table ran a few percent optimistic on SmolLM2 (a 10%
    // bound gave 0.88x llama.cpp's speed, 5% gave 0.905x; BENCHMARKS.md §8),
    // so a 5% margin keeps the real slowdown within the 10% users expect.
    slowdown = gguf ? 0.05 : -1;
  }
  if (slowdown < 0) return std::nullopt;
  SpeedBound b;
  b.slowdown = slowdown;
  b.ref = llamacpp_speed_reference(config, budget, a.speed);
  b.max_ns = b.ref.ns * (1 + slowdown);
  b.time_of = [&config, speed = a.speed](const ModuleInfo& m, const TensorFormat& f) {
    return speed.module_ns(config, m, f);
  };
  return b;
}

// What the result and the plan file say about the bound.
void record_speed(PlanStepResult& r, const ModelConfig& config, const std::optional<SpeedBound>& b,
                  const PlanStepOptions& a) {
  if (!b) return;
  r.speed_reference = b->ref;
  r.max_ns = r.max_ns > 0 ? b->max_ns : 0;  // 0: the bound was dropped (see the notes)
  r.predicted_ns = a.speed.plan_ns(config, r.map.formats);
}

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
  PlanStepResult r = run_plan_step(config, t, predicted, "");  // budget, solver certificate, speed bound
  const auto damage = t.damage(a.damage);
  const std::vector<TensorFormat> formats = plan_formats(t);
  SolverOptions so = solver_options(config, a);
  const std::optional<SpeedBound> bound = speed_bound(config, t, a, r.budget.weight_bytes);
  if (bound && r.max_ns > 0) so.max_time = bound->max_ns;  // else dropped by the predicted step (its note says why)
  r.variants = plan_variants(config, damage, formats, r.budget.weight_bytes, so, true,
                             bound ? bound->time_of : CandidateTime{});
  // Each variant is measured with the roundings it would ship with.
  for (auto& v : r.variants) assign_profiled_methods(v.map, t);
  // Made when a variant needs measuring (a resumed run may need none).
  std::unique_ptr<PlanMeasurer> own;
  auto measurer = [&]() -> PlanMeasurer& {
    if (ctx.measurer) return *ctx.measurer;
    if (!own) own = make_plan_measurer(model, t, a, ctx);
    return *own;
  };
  MeasureHooks hooks;
  nlohmann::json ckpt_key, ckpt_done = nlohmann::json::object();
  const bool checkpointed = !ctx.checkpoint.empty() && !a.provenance.is_null();
  auto variant_id = [](const PlanVariant& v) {
    Sha256 h;
    h.update(v.map.to_plan_json().dump());
    return h.hex_digest();
  };
  if (checkpointed) {
    ckpt_key = {{"source", a.provenance.value("source", nlohmann::json())},
                {"options", a.provenance.value("options", nlohmann::json())},
                {"optiq version", kOptiqVersion},
                {"selection windows", a.select_windows},
                {"gptq held out", profile_uses_method(t, "gptq")},
                {"damage", damage_source_name(a.damage)},
                {"instruction set", isa_name(active_isa())}};
    std::error_code ec;
    if (std::filesystem::exists(ctx.checkpoint, ec)) {
      std::ifstream in(ctx.checkpoint);
      const nlohmann::json old = nlohmann::json::parse(in, nullptr, false);
      if (old.is_object() && old.value("key", nlohmann::json()) == ckpt_key && old.contains("measured") &&
          old["measured"].is_object())
        ckpt_done = old["measured"];
      else
        note("{}: made for another model, options or optiq version: measuring every plan again", ctx.checkpoint);
    }
    int reused = 0;
    for (const auto& v : r.variants) reused += ckpt_done.contains(variant_id(v));
    if (reused > 0) note("resuming: {} of {} plans measured already ({})", reused, r.variants.size(), ctx.checkpoint);
    hooks.cached = [&](PlanVariant& v) {
      const std::string id = variant_id(v);
      const auto it = ckpt_done.find(id);
      // [mean, stderr, [per-window means]]: an entry without its windows
      // (an older checkpoint) is measured again, the pairing needs them.
      if (it == ckpt_done.end() || !it->is_array() || it->size() != 3 || !(*it)[0].is_number() ||
          !(*it)[1].is_number() || !(*it)[2].is_array())
        return false;
      std::vector<double> windows;
      for (const auto& x : (*it)[2]) {
        if (!x.is_number()) return false;
        windows.push_back(x.get<double>());
      }
      v.measured = (*it)[0].get<double>();
      v.measured_stderr = (*it)[1].get<double>();
      v.measured_windows = std::move(windows);
      return true;
    };
    hooks.measured = [&](const PlanVariant& v) {
      ckpt_done[variant_id(v)] = {v.measured, v.measured_stderr, v.measured_windows};
      write_file_atomic(ctx.checkpoint,
                        nlohmann::json({{"optiq_partial_plan", 1}, {"key", ckpt_key}, {"measured", ckpt_done}}).dump() +
                            "\n");
    };
  }
  const size_t best = measure_variants(measurer, r.variants, a.progress, hooks);
  std::rotate(r.variants.begin(), r.variants.begin() + best, r.variants.begin() + best + 1);
  const PlanVariant& v = r.variants.front();
  r.map = v.map;
  r.solution.formats = v.map.formats;
  r.solution.bytes = v.bytes;
  r.solution.damage = v.predicted;
  r.solution.method = "measured selection: " + v.name;
  r.bits_per_weight = plan_bits_per_weight(config, r.map);
  record_speed(r, config, bound, a);
  const nlohmann::json speed = decode_speed_json(r, a.speed);
  nlohmann::json variants = nlohmann::json::array();
  for (const auto& x : r.variants)
    variants.push_back({{"name", x.name}, {"bytes", x.bytes}, {"predicted_kl", x.predicted},
                        {"calib_kl", x.measured}, {"calib_kl_stderr", x.measured_stderr},
                        {"calib_kl_paired_stderr", paired_stderr(x.measured_windows, v.measured_windows)},
                        {"bits_spread", x.bits_spread}});
  PlanMetadata meta;
  meta.budget = r.budget.description;
  meta.fit = &r.budget;
  meta.predicted_kl = v.predicted;
  meta.method = fmt::format("optiq measured selection: {} (profile {}, damage {})", v.name, t.method,
                            damage_source_name(a.damage));
  meta.calib_kl = v.measured;
  meta.variants = &variants;
  meta.provenance = &a.provenance;
  if (!speed.is_null()) meta.decode_speed = &speed;
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
  const std::optional<SpeedBound> bound =
      a.baseline.empty() ? speed_bound(config, t, a, r.budget.weight_bytes) : std::nullopt;
  std::vector<SolverItem> items;
  for (const auto& m : modules) {
    auto it = damage.find(m.path);
    check(it != damage.end(), "the profile lacks {}: run `optiq profile` again", m.path);
    items.push_back(make_item(m, it->second, formats, bound ? bound->time_of : CandidateTime{}));
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
  SolverOptions so = solver_options(config, a);
  if (bound) {
    so.max_time = bound->max_ns;
    r.max_ns = bound->max_ns;
    try {
      r.solution = solve(items, r.budget.weight_bytes, so);
    } catch (const Error& e) {
      // Within the budget no plan of these candidates is that fast: plan for
      // quality alone and say so (llama.cpp's own mix needs formats outside the candidates).
      so.max_time = 0;
      r.max_ns = 0;
      r.solution = solve(items, r.budget.weight_bytes, so);
      r.notes.push_back(fmt::format(
          "no plan of these candidates within the budget is predicted to decode within {:.0f}% of llama.cpp's {} "
          "of this size ({}); planned without the speed bound",
          100 * bound->slowdown, bound->ref.mix, e.what()));
    }
  } else {
    r.solution = solve(items, r.budget.weight_bytes, so);
  }
  r.map = r.solution.precision_map();
  r.bits_per_weight = plan_bits_per_weight(config, r.map);
  record_speed(r, config, bound, a);
  const nlohmann::json speed = decode_speed_json(r, a.speed);
  PlanMetadata meta;
  meta.budget = r.budget.description;
  meta.fit = &r.budget;
  meta.predicted_kl = r.solution.damage;
  meta.method = fmt::format("optiq {} (profile {}, damage {})", r.solution.method, t.method, damage_source_name(a.damage));
  meta.lower_bound_kl = r.solution.lower_bound;
  meta.gap_kl = r.solution.gap;
  meta.provenance = &a.provenance;
  if (!speed.is_null()) meta.decode_speed = &speed;
  finish_plan(r.map, t, config, meta, out);
  return r;
}

}  // namespace optiq
