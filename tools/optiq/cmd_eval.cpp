// optiq eval: perplexity (llama.cpp protocol), and KL/top-1 against a reference.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "model/quantize_model.h"
#include "plan/select.h"
#include "plan/budget.h"

namespace optiq::cli {

namespace {

struct EvalArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  std::string text;
  std::string ref;
  int ctx = 512;
  int chunks = -1;
  std::vector<std::string> plans;
  bool json = false;
};

// --plan: MODEL quantized per each plan (in memory, packed, as `optiq quantize
// --plan` would write it) against MODEL itself, whose scores are computed once.
void run_eval_plans(const EvalArgs& a, Model& ref, const std::vector<int32_t>& tokens) {
  check(a.ref.empty(), "--plan evaluates against MODEL itself: drop --ref");
  std::vector<PrecisionMap> maps;  // read every plan first: a bad one fails before any work
  for (const auto& p : a.plans) {
    maps.push_back(PrecisionMap::from_plan_file(p, ref.config));
    // GPTQ and the weighted search need calibration statistics, which
    // evaluation text must not supply.
    if (!maps.back().methods.empty())
      warn("{}: the plan names GPTQ or the weighted search for {} tensors; eval --plan rounds them plainly (for "
           "the shipped numbers: optiq quantize --plan ... --calib, then optiq eval OUT --ref MODEL)",
           p, maps.back().methods.size());
  }
  // The evaluation windows, measured like calibration windows: one reference
  // pass, and quantized tensors shared between plans.
  const EvalWindows ew = eval_windows(ref, tokens, a.ctx, a.chunks);
  std::vector<std::vector<int32_t>> windows(ew.chunks);
  for (int c = 0; c < ew.chunks; ++c) ew.fill(tokens, c, windows[c]);
  PlanMeasurer measurer(ref, windows);
  for (size_t i = 0; i < maps.size(); ++i) {
    const PerplexityResult r = measurer.evaluate(maps[i], !a.json);
    const double bpw = plan_bits_per_weight(ref.config, maps[i]);
    if (a.json) {
      const nlohmann::json j = {{"model", a.model.path}, {"plan", a.plans[i]}, {"bits_per_weight", bpw},
                                {"bytes", plan_bytes(ref.config, maps[i])}, {"text", a.text}, {"ctx", r.ctx},
                                {"chunks", r.chunks}, {"tokens", r.tokens}, {"ppl", r.ppl},
                                {"ppl_stderr", r.ppl_stderr}, {"ref_ppl", r.ref_ppl}, {"kld", r.kld},
                                {"kld_stderr", r.kld_stderr}, {"kld_p99", r.kld_p99}, {"top1", r.top1}};
      fmt::print("{}\n", j.dump());
      std::fflush(stdout);
      continue;
    }
    fmt::print("{}: {:.3f} bits/weight, perplexity {:.4f} ({:+.2f}%), KL {:.6f} +/- {:.6f}, top-1 {:.2f}%\n",
               a.plans[i], bpw, r.ppl, 100.0 * (r.ppl / r.ref_ppl - 1.0), r.kld, r.kld_stderr, 100.0 * r.top1);
  }
}

void run_eval(const EvalArgs& a) {
  Model m = a.model.load();
  std::unique_ptr<Model> ref;
  if (!a.ref.empty()) {
    LoadOptions o;
    o.tokenizer_path = a.model.tokenizer;
    o.llamacpp_numerics = a.model.numerics == "llamacpp";
    ref = std::make_unique<Model>(load_model(a.ref, o));
  }
  std::string text = read_text_file(a.text);
  // As llama.cpp's -f: one final newline is not part of the text.
  if (!text.empty() && text.back() == '\n') text.pop_back();
  check(!text.empty(), "{}: the text file is empty", a.text);
  std::vector<int32_t> tokens = m.tokenizer->encode(text, /*add_bos=*/true);
  if (!a.plans.empty()) return run_eval_plans(a, m, tokens);
  if (ref) {
    check(ref->tokenizer->encode(text.substr(0, std::min<size_t>(text.size(), 4096)), true) ==
              m.tokenizer->encode(text.substr(0, std::min<size_t>(text.size(), 4096)), true),
          "{}: the reference model tokenizes differently from {}; KL needs the same tokenizer", a.ref, a.model.path);
  }
  PerplexityOptions opt;
  opt.ctx = a.ctx;
  opt.chunks = a.chunks;
  opt.ref = ref.get();
  PerplexityResult r = evaluate_perplexity(m, tokens, opt);
  if (a.json) {
    nlohmann::json j = {{"model", a.model.path}, {"text", a.text}, {"ctx", r.ctx},
                        {"chunks", r.chunks},    {"tokens", r.tokens}, {"ppl", r.ppl},
                        {"ppl_stderr", r.ppl_stderr}, {"nll", r.nll}, {"seconds", r.seconds}};
    if (r.has_ref) {
      j["ref"] = a.ref;
      j["ref_ppl"] = r.ref_ppl;
      j["kld"] = r.kld;
      j["kld_stderr"] = r.kld_stderr;
      j["kld_p99"] = r.kld_p99;
      j["top1"] = r.top1;
    }
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("text         {} ({} tokens)\n", a.text, tokens.size());
  fmt::print("windows      {} x {} tokens, {} scored\n", r.chunks, r.ctx, r.tokens);
  fmt::print("perplexity   {:.4f} +/- {:.4f}\n", r.ppl, r.ppl_stderr);
  if (r.has_ref) {
    fmt::print("reference    {} (perplexity {:.4f}, {:+.2f}%)\n", a.ref, r.ref_ppl, 100.0 * (r.ppl / r.ref_ppl - 1.0));
    fmt::print("KL(ref||q)   {:.6f} +/- {:.6f} (p99 {:.4f})\n", r.kld, r.kld_stderr, r.kld_p99);
    fmt::print("top-1 agree  {:.3f}%\n", 100.0 * r.top1);
  }
  fmt::print("time         {:.1f}s ({:.0f} tok/s)\n", r.seconds, r.chunks * r.ctx / r.seconds);
}

}  // namespace

Runner register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Perplexity on a text file (llama.cpp protocol); KL and top-1 vs --ref");
  auto a = std::make_shared<EvalArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("--text", a->text, "text file to score (e.g. wiki.test.raw)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--ctx", a->ctx, "window size in tokens")->capture_default_str();
  cmd->add_option("--chunks", a->chunks, "score only the first N windows (default: all)");
  cmd->add_option("--ref", a->ref, "reference model for KL divergence and top-1 agreement");
  cmd->add_option("--plan", a->plans,
                  "evaluate MODEL quantized per this plan against MODEL itself (repeatable: the reference runs once)")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--json", a->json, "print one JSON object (ppl, tokens, and kld, top1 with --ref; one per --plan)");
  return [a] { run_eval(*a); };
}

}  // namespace optiq::cli
