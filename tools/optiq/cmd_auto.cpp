// optiq auto: profile -> plan -> quantize -> (evaluate), in one command.
#include <filesystem>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "pipeline.h"
#include "core/error.h"
#include "eval/perplexity.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "pipeline/export_step.h"
#include "model/exporter.h"
#include "plan/budget.h"
#include "plan/solver.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq::cli {

namespace {

struct AutoArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  ProfileStepArgs profile;
  PlanStepArgs plan;
  std::string out;
  std::string format = "mlx";
  std::string text;
  int eval_ctx = 512;
  int chunks = -1;
  std::string shard_size = "5GB";
  bool force = false;
  bool json = false;
};

void run_auto(AutoArgs& a, const CLI::App& cmd) {
  std::string out = a.out;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  std::error_code ec;
  if (!a.text.empty()) {
    check(std::filesystem::is_regular_file(a.text, ec), "{}: evaluation text not found", a.text);
    if (a.profile.calib.source != "self" && same_file(a.text, a.profile.calib.source))
      fmt::print(stderr,
                 "optiq: warning: --text {} is the calibration file: the measured KL will be optimistic; "
                 "evaluate on held-out text\n",
                 a.text);
  }
  check(a.force || !std::filesystem::exists(out, ec), "{}: output exists (use --force to replace it)", out);
  if (a.profile.cache.empty()) a.profile.cache = out + ".profile.json";
  if (a.profile.target.empty()) a.profile.target = a.format;  // a GGUF export plans over GGUF's block types
  a.plan.runtime_default = runtime_for_output(a.format, a.profile.target, a.plan.runtime);
  const std::string plan_path = out + ".plan.json";

  Model m = a.model.load();
  // The profile, the plan and the export record how they were made, alike.
  const nlohmann::json provenance = command_provenance(cmd, a.model);
  // The plan step measures on the profile's windows: tokenized once.
  ProfileStepOptions po = profile_step_options(a.profile);
  po.profile.provenance = provenance;
  ProfileStepResult profiled = run_profile_step(m, po);
  const SensitivityTable& t = profiled.table;
  if (!a.json)
    fmt::print("profile       {} ({} exact KL, {} proxies; {:.1f}s)\n", a.profile.cache, t.count_exact(),
               t.count_proxy(), t.seconds);
  PlanStepOptions plo = plan_step_options(a.plan, !a.json);
  plo.provenance = provenance;
  // The roundings the profile measured (GPTQ, the weighted search): measured
  // selection and the export both quantize that way, from one collection of
  // the calibration statistics; except that selection among GPTQ'd plans fits
  // GPTQ to windows it does not measure (plan_step.h), so its statistics are
  // its own and the export's are collected after it (never both in memory).
  const bool selection_has_own_stats = plo.select == PlanSelection::Measured && profile_uses_method(t, "gptq");
  std::optional<CalibrationStats> stats;
  if (!selection_has_own_stats) stats = profiled_rounding_stats(m, t, profiled.windows, !a.json);
  // Measured selection checkpoints each plan's KL (<plan>.partial): a rerun
  // after an interruption (here or in the export) measures only the rest.
  const std::string plan_checkpoint = plan_path + ".partial";
  PlanStepResult r = run_plan_step(
      m, t, plo, plan_path,
      {.windows = &profiled.windows, .stats = stats ? &*stats : nullptr, .checkpoint = plan_checkpoint});
  if (!a.json) print_plan_summary(r, m.config, plan_path);
  if (!stats) stats = profiled_rounding_stats(m, t, profiled.windows, !a.json);

  // GGUF blocks hold fp16 scales (MLX Gemma exports take bf16 ones).
  QuantizeModelOptions qo{
      .recipe = QuantizeRecipe::for_model(m.config, QuantMethod::Search, a.format == "gguf" ? "f16" : "auto")};
  quantize_as_planned(qo, *stats);
  run_export_step(m, r.map, qo, out,
                  {.format = a.format, .force = a.force, .shard_bytes = shard_bytes(a.shard_size), .progress = !a.json,
                   .provenance = provenance});
  std::filesystem::remove(plan_checkpoint, ec);
  if (!a.json) fmt::print("wrote         {}\n", out);

  nlohmann::json j = {{"out", out},
                      {"plan", plan_path},
                      {"profile", a.profile.cache},
                      {"bits_per_weight", r.bits_per_weight},
                      {"bytes", r.solution.bytes},
                      {"predicted_kl", r.solution.damage},
                      {"gap_kl", r.solution.gap},
                      {"method", r.solution.method}};
  if (!a.text.empty()) {
    const std::string model_path = a.model.path;
    {
      Model drop = std::move(m);  // free the in-memory quantized copy before loading two models
    }
    LoadOptions lo;
    lo.tokenizer_path = a.model.tokenizer;
    Model q = load_model(out, lo);
    Model ref = load_model(model_path, lo);
    std::string text = read_text_file(a.text);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    check(!text.empty(), "{}: the text file is empty", a.text);
    const std::vector<int32_t> tokens = q.tokenizer->encode(text, /*add_bos=*/true);
    PerplexityOptions po;
    po.ctx = std::min(a.eval_ctx, ref.config.max_seq);
    po.chunks = a.chunks;
    po.ref = &ref;
    PerplexityResult e = evaluate_perplexity(q, tokens, po);
    j["text"] = a.text;
    j["ppl"] = e.ppl;
    j["ref_ppl"] = e.ref_ppl;
    j["kld"] = e.kld;
    j["kld_stderr"] = e.kld_stderr;
    j["top1"] = e.top1;
    j["tokens"] = e.tokens;
    if (!a.json) {
      fmt::print("evaluated     {} ({} windows x {}, {} scored tokens)\n", a.text, e.chunks, e.ctx, e.tokens);
      fmt::print("KL(ref||q)    measured {:.6f} +/- {:.6f}, predicted {:.6f}\n", e.kld, e.kld_stderr,
                 r.solution.damage);
      fmt::print("perplexity    {:.4f} (reference {:.4f}, {:+.2f}%)\n", e.ppl, e.ref_ppl,
                 100.0 * (e.ppl / e.ref_ppl - 1.0));
      fmt::print("top-1 agree   {:.3f}%\n", 100.0 * e.top1);
    }
  }
  if (a.json) fmt::print("{}\n", j.dump());
}

}  // namespace

Runner register_auto(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "auto", "Profile, plan and quantize in one go (and evaluate on held-out text with --text)");
  auto a = std::make_shared<AutoArgs>();
  a->model.add_to(*cmd);
  add_profile_step_options(*cmd, a->profile);
  a->plan.select = "measured";
  add_plan_step_options(*cmd, a->plan, "llamacpp with --format gguf or --target gguf, else mlx");
  cmd->add_option("-o,--out", a->out,
                  "output: an MLX directory, or a .gguf file with --format gguf; the profile and plan go beside it")
      ->required();
  cmd->add_option("--format", a->format,
                  "mlx: MLX / Hugging Face directory; gguf: one GGUF file for llama.cpp (and --target gguf unless "
                  "--target or --candidates say otherwise)")
      ->capture_default_str()->check(CLI::IsMember(exporter_names()));
  cmd->add_option("--cache", a->profile.cache, "profile/cache JSON (default: OUT.profile.json)");
  cmd->add_option("--text", a->text, "held-out text to measure KL and perplexity against MODEL");
  cmd->add_option("--eval-ctx", a->eval_ctx, "evaluation window (capped at the model's context)")
      ->capture_default_str()->check(CLI::Range(8, 1 << 20));
  cmd->add_option("--chunks", a->chunks, "evaluate only the first N windows");
  add_shard_size_option(*cmd, a->shard_size);
  cmd->add_flag("--force", a->force, "replace OUT if it exists");
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a, cmd] { run_auto(*a, *cmd); };
}

}  // namespace optiq::cli
