// optiq plan: one format per tensor from a sensitivity profile, under a budget.
#include <algorithm>
#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "pipeline.h"
#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "plan/plan_json.h"
#include "plan/solver.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq::cli {

void add_plan_step_options(CLI::App& cmd, PlanStepArgs& a) {
  cmd.add_option("--bpw", a.bpw, "budget: bits per weight over all parameters, e.g. 4.5 (plan: a list 3,4.5)");
  cmd.add_option("--size", a.size, "budget: weight bytes, e.g. 9.7GB or 350MiB (plan: a list)");
  cmd.add_option("--reduction", a.reduction, "budget: size reduction from fp16, e.g. 40%");
  cmd.add_option("--fit", a.fit, "budget: total memory incl. KV cache at --ctx, e.g. 8GB");
  cmd.add_option("--ctx", a.ctx, "context length for --fit")->check(CLI::PositiveNumber);
  cmd.add_option("--min-bits", a.min_bits, "no tensor below this many bits")->check(CLI::Range(0, 8));
  cmd.add_option("--pin", a.pins, "force formats: REGEX=FMT, e.g. lm_head=8, 'layers\\.0\\.'=q6g32 (repeatable)");
  cmd.add_option("--tie", a.tie, "share formats: qkv (q/k/v of a layer) or qkv+gate_up")
      ->check(CLI::IsMember({"qkv", "qkv+gate_up"}));
  cmd.add_option("--baseline", a.baseline,
                 "instead of optiq's solver, a baseline plan of the same budget, for honest comparisons: "
                 "uniform:q4g64 (one format); kquant (llama.cpp's Q*_K_M rule, the largest that fits), kquant:Q4_K_M "
                 "or kquant:b3u5[/g32] (one mix); dynamic (mlx-lm dynamic-quant style: the most sensitive tensors "
                 "one level up) or dynamic:q3g64/q5g64 (explicit levels)");
  cmd.add_option("--select", a.select,
                 "predicted: the solver's plan; measured: the best of several plans of this budget (solver "
                 "variants and baselines), measured on the profile's calibration text (loads the weights)")
      ->capture_default_str()->check(CLI::IsMember({"predicted", "measured"}));
  cmd.add_option("--select-windows", a.select_windows,
                 "measured selection: use the first N of the profile's calibration windows (0: all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--use", a.use, "damage numbers: auto (exact where measured, else fast), exact or fast")
      ->capture_default_str()->check(CLI::IsMember({"auto", "exact", "fast"}));
}


DamageSource damage_source(const std::string& use) {
  return use == "exact" ? DamageSource::Exact : use == "fast" ? DamageSource::Fast : DamageSource::Auto;
}

std::vector<TensorFormat> plan_formats(const SensitivityTable& t) {
  std::vector<TensorFormat> formats(t.candidates.begin(), t.candidates.end());
  formats.push_back(std::nullopt);
  return formats;
}

namespace {

SolverOptions solver_options(const ModelConfig& config, const PlanStepArgs& a) {
  SolverOptions so;
  so.fixed_bytes = fixed_weight_bytes(config);
  so.min_bits = a.min_bits;
  for (const auto& p : a.pins) so.pins.push_back(parse_pin(p));
  if (!a.tie.empty()) so.tie_groups = tie_qkv_groups(quantizable_modules(config), a.tie == "qkv+gate_up");
  return so;
}

}  // namespace

std::vector<std::vector<int32_t>> profile_calibration_windows(const Model& m, const SensitivityTable& t) {
  CalibrationOptions co = t.source.calib;
  check(!co.source.empty() && co.samples > 0 && co.seq > 0,
        "the profile does not record its calibration text: run `optiq profile` again");
  std::error_code ec;
  check(co.source == "self" || std::filesystem::is_regular_file(co.source, ec),
        "{}: the profile's calibration text is gone; measured selection needs it", co.source);
  return calibration_windows(m, co);
}

std::vector<std::vector<int32_t>> selection_windows(const Model& m, const SensitivityTable& t, const PlanStepArgs& a) {
  auto w = profile_calibration_windows(m, t);
  if (a.select_windows > 0 && static_cast<int>(w.size()) > a.select_windows) w.resize(a.select_windows);
  return w;
}

PlanStepResult run_plan_step(Model& model, const SensitivityTable& t, const PlanStepArgs& a, const std::string& out,
                             bool progress, PlanMeasurer* measurer) {
  if (a.select != "measured" || !a.baseline.empty()) return run_plan_step(model.config, t, a, out);
  const ModelConfig& config = model.config;
  PlanStepArgs predicted = a;
  predicted.select = "predicted";
  PlanStepResult r = run_plan_step(config, t, predicted, "");  // budget, solver certificate
  const auto damage = t.damage(damage_source(a.use));
  const std::vector<TensorFormat> formats = plan_formats(t);
  r.variants = plan_variants(config, damage, formats, r.budget.weight_bytes, solver_options(config, a));
  std::unique_ptr<PlanMeasurer> own;
  if (!measurer) {
    own = std::make_unique<PlanMeasurer>(model, selection_windows(model, t, a));
    measurer = own.get();
  }
  const size_t best = measure_variants(*measurer, r.variants, progress);
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
  meta.predicted_kl = v.predicted;
  meta.method = fmt::format("optiq measured selection: {} (profile {}, damage {})", v.name, t.method, a.use);
  meta.calib_kl = v.measured;
  meta.variants = &variants;
  if (!out.empty()) write_plan(out, r.map, config, meta);
  return r;
}

PlanStepResult run_plan_step(const ModelConfig& config, const SensitivityTable& t, const PlanStepArgs& a,
                             const std::string& out) {
  const auto damage = t.damage(damage_source(a.use));
  const std::vector<TensorFormat> formats = plan_formats(t);

  BudgetOptions bo;
  if (!a.bpw.empty()) bo.bpw = a.bpw;
  if (!a.size.empty()) bo.size = a.size;
  if (!a.reduction.empty()) bo.reduction = a.reduction;
  if (!a.fit.empty()) {
    check(a.ctx > 0, "--fit needs --ctx (the context length to reserve the KV cache for)");
    bo.fit = a.fit;
    bo.runtime.ctx = a.ctx;
  }
  PlanStepResult r;
  r.budget = resolve_budget(bo, config, formats);

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
    meta.predicted_kl = r.solution.damage;
    meta.method = "baseline " + b.name;
    if (!out.empty()) write_plan(out, r.map, config, meta);
    return r;
  }
  const SolverOptions so = solver_options(config, a);
  r.solution = solve(items, r.budget.weight_bytes, so);
  r.map = r.solution.precision_map();
  r.bits_per_weight = plan_bits_per_weight(config, r.map);
  PlanMetadata meta;
  meta.budget = r.budget.description;
  meta.predicted_kl = r.solution.damage;
  meta.method = "optiq " + r.solution.method + " (profile " + t.method + ", damage " + a.use + ")";
  meta.lower_bound_kl = r.solution.lower_bound;
  meta.gap_kl = r.solution.gap;
  if (!out.empty()) write_plan(out, r.map, config, meta);
  return r;
}

void print_plan_summary(const PlanStepResult& r, const std::string& out) {
  const Solution& s = r.solution;
  std::map<std::string, int> hist;
  for (const auto& [path, f] : s.formats) ++hist[f ? fmt::format("q{}g{}", f->bits, f->group_size) : "float"];
  std::string h;
  for (const auto& [k, n] : hist) h += fmt::format("{}{} x{}", h.empty() ? "" : ", ", k, n);
  fmt::print("budget        {}\n", r.budget.description);
  fmt::print("plan          {:.3f} bits/weight, {} ({} bytes)\n", r.bits_per_weight, format_bytes(s.bytes), s.bytes);
  if (r.variants.empty())
    fmt::print("predicted KL  {:.6f} nats/token (lower bound {:.6f}, gap {:.2e}{})\n", s.damage, s.lower_bound, s.gap,
               s.exact ? ", optimal" : "");
  else
    fmt::print("predicted KL  {:.6f} nats/token; measured on the calibration text {:.6f}\n", s.damage,
               r.variants.front().measured);
  fmt::print("formats       {}\n", h);
  for (size_t i = 0; i < r.variants.size(); ++i)
    fmt::print("{} {:<34} {:>8.3f} bits/weight, predicted KL {:.5f}, calibration KL {:.5f}\n",
               i == 0 ? "chosen       " : "             ", r.variants[i].name,
               r.variants[i].bits_per_weight, r.variants[i].predicted,
               r.variants[i].measured);
  if (!out.empty()) fmt::print("wrote         {}\n", out);
}

namespace {

struct PlanArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  std::string profile;
  std::string out;
  PlanStepArgs step;
  bool json = false;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

void print_plan_json(const PlanStepResult& r, const std::string& out) {
  nlohmann::json j = {{"out", out},
                      {"budget", r.budget.description},
                      {"budget_bytes", r.budget.weight_bytes},
                      {"bytes", r.solution.bytes},
                      {"bits_per_weight", r.bits_per_weight},
                      {"predicted_kl", r.solution.damage},
                      {"lower_bound_kl", r.solution.lower_bound},
                      {"gap_kl", r.solution.gap},
                      {"method", r.solution.method}};
  if (!r.variants.empty()) j["calib_kl"] = r.variants.front().measured;
  fmt::print("{}\n", j.dump());
  std::fflush(stdout);
}

void run_plan(const PlanArgs& a) {
  const bool measured = a.step.select == "measured" && a.step.baseline.empty();
  Model m = a.model.load(/*weights=*/measured);
  SensitivityTable t = SensitivityTable::read(a.profile, m.config);
  CalibrationOptions none;
  const ProfileSource here = make_profile_source(m.path, none);
  if (here.model_size != t.source.model_size || here.model_mtime != t.source.model_mtime)
    fmt::print(stderr, "optiq: warning: {}: profile made for {}, not this file ({})\n", a.profile,
               t.source.model_path, m.path);
  // Several budgets (--bpw 3,4.5 or --size 80MB,100MB): one plan each, written
  // to OUT/plan-<budget>.json, sharing one measurer.
  const auto bpws = split_list(a.step.bpw), sizes = split_list(a.step.size);
  if (a.step.bpw.find(',') != std::string::npos || a.step.size.find(',') != std::string::npos) {
    check(a.step.reduction.empty() && a.step.fit.empty() && (bpws.empty() || sizes.empty()),
          "several budgets: give a list to one of --bpw or --size only");
    std::filesystem::create_directories(a.out);
    std::unique_ptr<PlanMeasurer> measurer;
    if (measured) measurer = std::make_unique<PlanMeasurer>(m, selection_windows(m, t, a.step));
    for (const auto& b : bpws.empty() ? sizes : bpws) {
      PlanStepArgs step = a.step;
      (bpws.empty() ? step.size : step.bpw) = b;
      if (bpws.empty()) step.bpw.clear();
      else step.size.clear();
      const std::string out = (std::filesystem::path(a.out) / fmt::format("plan-{}{}.json", b, bpws.empty() ? "" : "bpw")).string();
      PlanStepResult r = run_plan_step(m, t, step, out, !a.json, measurer.get());
      if (a.json) print_plan_json(r, out);
      else print_plan_summary(r, out);
    }
    return;
  }
  PlanStepResult r = run_plan_step(m, t, a.step, a.out, !a.json);
  if (a.json) return print_plan_json(r, a.out);
  print_plan_summary(r, a.out);
}

}  // namespace

Runner register_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "Choose one format per tensor from a profile, under a memory budget");
  auto a = std::make_shared<PlanArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("--profile", a->profile, "profile JSON written by `optiq profile`")->required()
      ->check(CLI::ExistingFile);
  add_plan_step_options(*cmd, a->step);
  cmd->add_option("-o,--out", a->out,
                  "plan JSON to write (docs/plan-format.md); a directory when --bpw or --size lists several budgets")
      ->required();
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a] { run_plan(*a); };
}

}  // namespace optiq::cli
