// optiq plan: one format per tensor from a sensitivity profile, under a budget.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "plan/runtime_notes.h"
#include "commands.h"
#include "pipeline.h"
#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "plan/memory_fit.h"
#include "plan/runtime_memory.h"
#include "plan/select.h"
#include "plan/plan_json.h"
#include "plan/solver.h"
#include "model/provenance.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq::cli {

void add_plan_step_options(CLI::App& cmd, PlanStepArgs& a, const std::string& runtime_default_help) {
  cmd.add_option("--bpw", a.bpw, "budget: bits per weight over all parameters, e.g. 4.5 (plan: a list 3,4.5)");
  cmd.add_option("--size", a.size, "budget: weight bytes, e.g. 9.7GB or 350MiB (plan: a list)");
  cmd.add_option("--reduction", a.reduction, "budget: size reduction from fp16, e.g. 40%");
  cmd.add_option("--fit", a.fit,
                 "budget: the memory the model must run in at --ctx, e.g. 8GB: weights + the runtime's KV cache, "
                 "compute buffers and fixed cost (GPU memory for optiq-cuda and llamacpp-gpu)");
  cmd.add_option("--ctx", a.ctx, "context length for --fit")->check(CLI::PositiveNumber);
  cmd.add_option("--runtime", a.runtime,
                 fmt::format("what runs the model, for --fit: {} (default: {})", runtime_names(),
                             runtime_default_help));
  cmd.add_option("--kv-cache", a.kv_cache,
                 "KV cache type, for --fit: llamacpp/llamacpp-gpu f16 (default; llama.cpp's --cache-type-k/-v), "
                 "q8_0, q4_0, f32, bf16, q5_0, q5_1, q4_1, iq4_nl; optiq-cuda f16 (default, fast numerics) or f32; "
                 "optiq-cpu f32; mlx the model's dtype");
  cmd.add_option("--flash-attn", a.flash_attn,
                 "llama.cpp's flash attention, for --fit: on (default, as llama.cpp's auto on CPU, CUDA and Metal) or "
                 "off (llama-cpp-python's default; larger compute buffer, no quantized cache)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--min-bits", a.min_bits, "no tensor below this many bits")->check(CLI::Range(0, 8));
  cmd.add_option("--pin", a.pins, "force formats: REGEX=FMT, e.g. lm_head=8, 'layers\\.0\\.'=q6g32, down_proj=q6_k (repeatable)");
  cmd.add_option("--tie", a.tie, "share formats: qkv (q/k/v of a layer) or qkv+gate_up")
      ->check(CLI::IsMember({"qkv", "qkv+gate_up"}));
  cmd.add_option("--baseline", a.baseline,
                 "instead of optiq's solver, a baseline plan of the same budget, for honest comparisons: "
                 "uniform:q4g64 (one format); kquant (llama.cpp's Q*_K_M rule, the largest that fits), kquant:Q4_K_M "
                 "or kquant:b3u5[/g32] (one mix); dynamic (mlx-lm dynamic-quant style: the most sensitive tensors "
                 "one level up) or dynamic:q3g64/q5g64 (explicit levels)");
  cmd.add_option("--select", a.select,
                 "predicted: the solver's plan; measured: several plans of this budget (solver variants and "
                 "baselines) measured on the profile's calibration text (loads the weights): the lowest KL wins "
                 "unless a plan within two paired standard errors of it spreads its bits less")
      ->capture_default_str()->check(CLI::IsMember({"predicted", "measured"}));
  cmd.add_option("--select-windows", a.select_windows,
                 "measured selection: use the first N of the profile's calibration windows (0: all); with GPTQ in "
                 "the profile at most half of them, GPTQ fitted to the rest for the measurement")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--use", a.use, "damage numbers: auto (exact where measured, else fast), exact or fast")
      ->capture_default_str()->check(CLI::IsMember({"auto", "exact", "fast"}));
  cmd.add_option("--max-slowdown", a.max_slowdown,
                 "GGUF plans: keep llama.cpp's predicted decode time within this of its own file of the same size "
                 "(its Q3_K_M, IQ4_XS, Q4_K_M, ... mixes interpolated in bytes), e.g. 10% or 0.1; off: quality "
                 "alone; auto: 5% "
                 "when every candidate is a GGUF type, else off")
      ->capture_default_str();
  cmd.add_option("--speed-table", a.speed_table,
                 "llama.cpp decode cost per weight by GGUF type, for --max-slowdown: JSON written by "
                 "bench/llamacpp_speed_table.py on the machine that will run the model (default: the built-in "
                 "table: llama.cpp (noamx build), 2 threads, Intel Xeon, a 1024-wide model)")
      ->check(CLI::ExistingFile);
}

double parse_max_slowdown(const std::string& text, bool& is_auto) {
  is_auto = text == "auto" || text.empty();
  if (is_auto || text == "off") return -1;
  std::string s = text;
  const bool pct = !s.empty() && s.back() == '%';
  if (pct) s.pop_back();
  double v = -1;
  try {
    size_t used = 0;
    v = std::stod(s, &used);
    if (used != s.size()) v = -1;
  } catch (const std::exception&) {
    v = -1;
  }
  check(v >= 0 && std::isfinite(v), "--max-slowdown {}: expected a percentage (10%), a fraction (0.1), off or auto",
        text);
  return pct ? v / 100 : v;
}


std::string runtime_for_output(const std::string& format, const std::string& target, const std::string& given) {
  if (!given.empty()) {
    const Runtime r = parse_runtime(given);
    check(format == "gguf" || (r != Runtime::LlamaCpp && r != Runtime::LlamaCppGpu),
          "--runtime {}: llama.cpp runs GGUF files; add --format gguf", given);
    check(format != "gguf" || r != Runtime::Mlx, "--runtime mlx: mlx-lm does not run GGUF files; use --format mlx");
  }
  return format == "gguf" || target == "gguf" ? "llamacpp" : "mlx";
}

DamageSource parse_damage_source(const std::string& use) {
  return use == "exact" ? DamageSource::Exact : use == "fast" ? DamageSource::Fast : DamageSource::Auto;
}

PlanStepOptions plan_step_options(const PlanStepArgs& a, bool progress) {
  PlanStepOptions o;
  if (!a.bpw.empty()) o.budget.bpw = a.bpw;
  if (!a.size.empty()) o.budget.size = a.size;
  if (!a.reduction.empty()) o.budget.reduction = a.reduction;
  if (!a.fit.empty()) {
    check(a.ctx > 0, "--fit needs --ctx (the context length to reserve the KV cache for)");
    o.budget.fit = a.fit;
    o.budget.runtime.ctx = a.ctx;
    o.budget.runtime.runtime = parse_runtime(a.runtime.empty() ? a.runtime_default : a.runtime);
    o.budget.runtime.kv_cache = a.kv_cache;
    o.budget.runtime.flash_attention = a.flash_attn != "off";
  } else {
    for (const auto& [opt, value] : {std::pair<const char*, const std::string*>{"--runtime", &a.runtime},
                                     {"--kv-cache", &a.kv_cache},
                                     {"--flash-attn", &a.flash_attn}})
      check(value->empty(), "{} {}: only shapes a --fit budget (the memory the model must run in); give --fit M --ctx C",
            opt, *value);
  }
  o.min_bits = a.min_bits;
  for (const auto& p : a.pins) o.pins.push_back(parse_pin(p));
  o.tie = a.tie.empty() ? TieGroups::None : a.tie == "qkv+gate_up" ? TieGroups::QkvGateUp : TieGroups::Qkv;
  o.damage = parse_damage_source(a.use);
  o.baseline = a.baseline;
  o.select = a.select == "measured" ? PlanSelection::Measured : PlanSelection::Predicted;
  o.select_windows = a.select_windows;
  o.max_slowdown = parse_max_slowdown(a.max_slowdown, o.max_slowdown_auto);
  if (!a.speed_table.empty()) o.speed = load_speed_model(a.speed_table);
  o.progress = progress;
  return o;
}

void print_plan_summary(const PlanStepResult& r, const ModelConfig& config, const std::string& out) {
  const Solution& s = r.solution;
  std::map<std::string, int64_t> cols;
  for (const auto& m : quantizable_modules(config)) cols[m.path] = m.cols;
  std::map<std::string, int> hist;
  for (const auto& [path, f] : s.formats) {
    auto c = cols.find(path);
    ++hist[c == cols.end() ? tensor_format_short(f) : tensor_format_label(f, c->second)];
  }
  std::string h;
  for (const auto& [k, n] : hist) h += fmt::format("{}{} x{}", h.empty() ? "" : ", ", k, n);
  fmt::print("budget        {}\n", r.budget.description);
  fmt::print("plan          {:.3f} bits/weight, {} ({} bytes)\n", r.bits_per_weight, format_bytes(s.bytes), s.bytes);
  if (r.budget.memory) fmt::print("memory        {}\n", memory_fit_line(r.budget, config, s.formats));
  if (r.variants.empty())
    fmt::print("predicted KL  {:.6f} nats/token (lower bound {:.6f}, gap {:.2e}{})\n", s.damage, s.lower_bound, s.gap,
               s.exact ? ", optimal" : "");
  else
    fmt::print("predicted KL  {:.6f} nats/token; measured on the calibration text {:.6f}\n", s.damage,
               r.variants.front().measured);
  fmt::print("formats       {}\n", h);
  if (r.speed_reference) {
    const SpeedReference& ref = *r.speed_reference;
    fmt::print("decode        predicted {:.2f}x the time of llama.cpp's own {} of this size ({}){}\n",
               r.predicted_ns / ref.ns, ref.mix, format_bytes(ref.bytes),
               r.max_ns > 0 ? fmt::format("; bound {:.2f}x", r.max_ns / ref.ns) : std::string());
  } else {
    for (const std::string& note : llamacpp_speed_notes(config, s.formats)) fmt::print("note          {}\n", note);
  }
  for (const std::string& note : r.notes) fmt::print("note          {}\n", note);
  for (size_t i = 0; i < r.variants.size(); ++i) {
    const PlanVariant& v = r.variants[i];
    fmt::print("{} {:<34} {:>8.3f} bits/weight, predicted KL {:.5f}, calibration KL {:.5f}{}, bits spread {:.2f}\n",
               i == 0 ? "chosen       " : "             ", v.name, v.bits_per_weight, v.predicted, v.measured,
               i == 0 ? std::string()
                      : fmt::format(" (±{:.5f} paired)", paired_stderr(v.measured_windows,
                                                                       r.variants.front().measured_windows)),
               v.bits_spread);
  }
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

void print_plan_json(const PlanStepResult& r, const ModelConfig& config, const std::string& out,
                     const DecodeSpeedModel& speed) {
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
  if (r.budget.memory) j["memory"] = memory_fit_json(r.budget, config, r.solution.formats);
  std::vector<std::string> notes = r.notes;
  if (r.speed_reference) {
    j["decode_speed"] = decode_speed_json(r, speed);
  } else {
    for (auto& n : llamacpp_speed_notes(config, r.solution.formats)) notes.push_back(std::move(n));
  }
  j["notes"] = notes;
  fmt::print("{}\n", j.dump());
  std::fflush(stdout);
}

void run_plan(const PlanArgs& a, const CLI::App& cmd) {
  const bool measured = a.step.select == "measured" && a.step.baseline.empty();
  Model m = a.model.load(/*weights=*/measured);
  SensitivityTable t = SensitivityTable::read(a.profile, m.config);
  CalibrationOptions none;
  const ProfileSource here = make_profile_source(m.path, none);
  if (here.model_size != t.source.model_size || here.model_mtime != t.source.model_mtime)
    fmt::print(stderr, "optiq: warning: {}: profile made for {}, not this file ({})\n", a.profile,
               t.source.model_path, m.path);
  // The source as the profile recorded it (hashed when it was profiled).
  PlanStepOptions base = plan_step_options(a.step, !a.json);
  base.provenance = provenance("plan",
                               t.provenance.is_object() && t.provenance.contains("source")
                                   ? t.provenance["source"]
                                   : source_record(a.model.path, a.model.tokenizer),
                               recorded_options(cmd));
  // Several budgets (--bpw 3,4.5 or --size 80MB,100MB): one plan each, written
  // to OUT/plan-<budget>.json, sharing one measurer.
  const auto bpws = split_list(a.step.bpw), sizes = split_list(a.step.size);
  if (a.step.bpw.find(',') != std::string::npos || a.step.size.find(',') != std::string::npos) {
    check(a.step.reduction.empty() && a.step.fit.empty() && (bpws.empty() || sizes.empty()),
          "several budgets: give a list to one of --bpw or --size only");
    std::filesystem::create_directories(a.out);
    std::unique_ptr<PlanMeasurer> measurer;
    if (measured)
      measurer = make_plan_measurer(m, t, plan_step_options(a.step, !a.json), {.profile_path = a.profile});
    for (const auto& b : bpws.empty() ? sizes : bpws) {
      PlanStepArgs step = a.step;
      (bpws.empty() ? step.size : step.bpw) = b;
      if (bpws.empty()) step.bpw.clear();
      else step.size.clear();
      const std::string out = (std::filesystem::path(a.out) / fmt::format("plan-{}{}.json", b, bpws.empty() ? "" : "bpw")).string();
      PlanStepOptions so = plan_step_options(step, !a.json);
      so.provenance = base.provenance;
      PlanStepResult r = run_plan_step(m, t, so, out, {.measurer = measurer.get()});
      if (a.json) print_plan_json(r, m.config, out, so.speed);
      else print_plan_summary(r, m.config, out);
    }
    return;
  }
  PlanStepResult r = run_plan_step(m, t, base, a.out, {.profile_path = a.profile});
  if (a.json) return print_plan_json(r, m.config, a.out, base.speed);
  print_plan_summary(r, m.config, a.out);
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
  return [a, cmd] { run_plan(*a, *cmd); };
}

}  // namespace optiq::cli
