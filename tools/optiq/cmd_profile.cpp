// optiq profile: per-tensor sensitivity (KL at each candidate format), cached.
#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "pipeline.h"
#include "backend/backend.h"
#include "core/error.h"
#include "plan/budget.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq::cli {



namespace {

std::string short_name(const std::string& path) {
  std::string s = path;
  for (const char* pre : {"model.layers.", "model."})
    if (s.rfind(pre, 0) == 0) {
      s = s.substr(std::string(pre).size());
      break;
    }
  for (const char* mid : {".self_attn.", ".mlp."}) {
    auto p = s.find(mid);
    if (p != std::string::npos) s = s.substr(0, p) + "." + s.substr(p + std::string(mid).size());
  }
  return s;
}

}  // namespace

CLI::Option* add_calibration_options(CLI::App& cmd, CalibrationOptions& c, const std::string& calib_help) {
  CLI::Option* calib = cmd.add_option("--calib", c.source, calib_help);
  cmd.add_option("--calib-samples", c.samples, "calibration windows")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--calib-seq", c.seq, "tokens per window (capped at the model's context)")
      ->capture_default_str()->check(CLI::Range(8, 1 << 20));
  cmd.add_option("--seed", c.seed, "seed for choosing calibration windows")->capture_default_str();
  return calib;
}

std::string default_candidates(const std::string& target) {
  if (target.empty() || target == "mlx") return "2,3,4,5,6,8x32,64,128";
  // iq4_nl/q5_0: 32-weight types for rows 256 does not divide (SmolLM2's 576,
  // Gemma 3 270M's 640), where the k-quants fall back to q4_0..q8_0; iq4_nl
  // has q4_0's size and speed in llama.cpp and less error. iq4_xs: 4.25 bits.
  if (target == "gguf") return "q2_k,q3_k,iq4_xs,q4_k,q5_k,q6_k,q8_0,iq4_nl,q5_0";
  fail("--target '{}': expected mlx or gguf", target);
}

void add_profile_step_options(CLI::App& cmd, ProfileStepArgs& a) {
  add_calibration_options(cmd, a.calib, "calibration text (.txt, or .jsonl with \"text\"; or 'self')")->required();
  cmd.add_option("--method", a.method,
                 "fast: Gram-matrix proxy scaled to KL by exact anchors; exact: KL of every module x format; "
                 "both: both, and their rank correlation")
      ->capture_default_str()->check(CLI::IsMember({"fast", "exact", "both"}));
  cmd.add_option("--target", a.target,
                 "runtime the plan is for, choosing the default --candidates: mlx (" + default_candidates("mlx") +
                     ") or gguf (" + default_candidates("gguf") + ")")
      ->check(CLI::IsMember({"mlx", "gguf"}));
  cmd.add_option("--candidates", a.candidates,
                 "formats: BITSxGROUPS (\"2,3,4x64,128\"), a list (\"q4g64,q8g32\"), GGUF blocks (q4_0, q4_1, q5_0, "
                 "q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k; a k-quant on rows 256 does not divide is stored as "
                 "llama.cpp's fallback, e.g. q4_k\u2192q5_0), 'source' (a GGUF source's tensor kept in the type it is "
                 "stored in, its blocks copied unchanged), or a mix (\"2,4x64,q8_0,q4_k,source\"); default: --target's");
  cmd.add_option("--anchors", a.anchors,
                 "fast: measure exact anchors on 'every' layer or every N-th (default: every layer up to 12 "
                 "layers, else every 3rd)")
      ->capture_default_str();
  cmd.add_option("--anchor-windows", a.anchor_windows,
                 "fast: measure the exact anchors on this many evenly spaced calibration windows (default 0: all); "
                 "the proxies always use every window. Anchors are most of a large model's fast profile")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--methods", a.methods,
                 "roundings to measure (fast method), the plan naming each tensor's so that quantize/auto export "
                 "it that way: search (plain), or weighted (the search weighing each input channel's error by its "
                 "mean x^2 on the calibration text, as quantize --calib does), each optionally with gptq (every "
                 "layer matrix also quantized with GPTQ from the proxies' Gram sums, the smaller proxy kept per "
                 "module and format): search, weighted, search,gptq or weighted,gptq (default: weighted; search with "
                 "--layerwise or --method exact|both)")
      ->check(CLI::IsMember({"search", "weighted", "search,gptq", "gptq,search", "weighted,gptq", "gptq,weighted"}));
  cmd.add_flag("--layerwise", a.layerwise,
               "fast method: run the calibration windows through the model one decoder layer at a time (each "
               "layer's weights read once per pass, not once per window; the exact anchors layer-major too), "
               "with the activations in memory up to --memory and in a temporary file beyond it. The same "
               "numbers as the default on the CPU (docs/scale.md)");
  cmd.add_option("--memory", a.memory,
                 "--layerwise: activations held in memory (e.g. 2GB); the rest goes to a temporary file next to "
                 "the profile (default: a quarter of the available memory)");
}

ProfileStepOptions profile_step_options(const ProfileStepArgs& a, bool progress) {
  ProfileStepOptions o;
  o.calib = a.calib;
  o.calib.progress = o.calib.progress && progress;
  ProfileOptions& po = o.profile;
  po.method = parse_profile_method(a.method);
  po.candidates = parse_candidates(a.candidates.empty() ? default_candidates(a.target) : a.candidates);
  if (a.anchors == "every") {
    po.anchor_every = 1;
  } else if (a.anchors != "auto") {
    try {
      size_t used = 0;
      po.anchor_every = std::stoi(a.anchors, &used);
      check(used == a.anchors.size() && po.anchor_every > 0, "");
    } catch (const std::exception&) {
      fail("--anchors '{}': expected 'every', 'auto' or a positive number", a.anchors);
    }
  }
  po.anchor_windows = a.anchor_windows;
  // Default: the weighted search where it runs (the fast method, on the CPU
  // or a GPU); layer-wise keeps the plain search, so that its profile stays
  // the in-memory one's (a tied embedding is not weighted layer-wise).
  const bool weigh = po.method == ProfileMethod::Fast && !a.layerwise;
  const std::string methods = !a.methods.empty() ? a.methods : weigh ? "weighted" : "search";
  po.gptq = methods.find("gptq") != std::string::npos;
  po.weighted = methods.find("weighted") != std::string::npos;
  po.cache_path = a.cache;
  po.progress = progress;
  check(a.memory.empty() || a.layerwise, "--memory {} goes with --layerwise (the activations it bounds)", a.memory);
  po.layerwise = a.layerwise;
  if (!a.memory.empty()) {
    po.layerwise_memory = a.memory == "0" ? 0 : parse_byte_size(a.memory, "--memory");
    check(po.layerwise_memory >= 0, "--memory {}: expected a size such as 2GB", a.memory);
    if (po.layerwise_memory == 0) po.layerwise_memory = 1;  // "0": everything on disk
  }
  check(!a.layerwise || po.method == ProfileMethod::Fast, "--layerwise runs the fast method: --method fast");
  check(!(po.weighted || po.gptq) || po.method == ProfileMethod::Fast,
        "--methods {} is measured by the fast method (its Gram sums): --method fast", methods);
  return o;
}

void print_profile_table(const SensitivityTable& t) {
  // One column per affine bit width, at the group size closest to 64 that was
  // profiled, then one per other candidate (GGUF blocks).
  std::vector<int> bits, groups;
  std::vector<TensorFormat> others;
  for (const auto& f : t.candidates) {
    if (const AffineFormat* a = f.affine()) {
      if (std::find(bits.begin(), bits.end(), a->bits) == bits.end()) bits.push_back(a->bits);
      if (std::find(groups.begin(), groups.end(), a->group_size) == groups.end()) groups.push_back(a->group_size);
    } else {
      others.push_back(f);
    }
  }
  std::sort(bits.begin(), bits.end());
  std::sort(groups.begin(), groups.end(), [](int a, int b) { return std::abs(a - 64) < std::abs(b - 64); });
  const auto dmg = t.damage(DamageSource::Auto);
  fmt::print("{:<18}", "KL (nats/token)");
  for (int b : bits) fmt::print(" {:>9}", fmt::format("q{}", b));
  for (const auto& f : others) fmt::print(" {:>9}", tensor_format_short(f));
  fmt::print("{}\n", bits.empty() ? "" : "   group");
  for (const auto& ms : t.modules) {
    const auto& d = dmg.at(ms.module.path);
    auto cell = [&](const std::string& name) {
      auto it = d.find(name);
      fmt::print(" {:>9}", it == d.end() ? std::string("-") : fmt::format("{:.2e}", it->second));
    };
    int g = 0;
    for (int gs : groups)
      if (!bits.empty() &&
          (d.count(affine_format_name({bits.front(), gs})) || d.count(affine_format_name({bits.back(), gs})))) {
        g = gs;
        break;
      }
    fmt::print("{:<18}", short_name(ms.module.path));
    if (d.empty()) {
      fmt::print(" (no candidate fits {} inputs: stays float)\n", ms.module.cols);
      continue;
    }
    for (int b : bits) {
      if (g == 0) fmt::print(" {:>9}", "-");
      else cell(affine_format_name({b, g}));
    }
    for (const auto& f : others) cell(tensor_format_name(f));
    if (g) fmt::print("   g{}", g);
    fmt::print("\n");
  }
}

namespace {

struct ProfileArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  ProfileStepArgs step;
  bool json = false;
};

std::string default_cache(const std::string& model_path) {
  std::string s = model_path;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  std::string name = std::filesystem::path(s).filename().string();
  for (const char* ext : {".gguf", ".bin"})
    if (name.ends_with(ext)) name.resize(name.size() - std::string(ext).size());
  return name + ".profile.json";
}

void run_profile(ProfileArgs& a, const CLI::App& cmd) {
  Model m = a.model.load();
  if (a.step.cache.empty()) a.step.cache = default_cache(a.model.path);
  ProfileStepOptions po = profile_step_options(a.step);
  po.profile.provenance = command_provenance(cmd, a.model);
  SensitivityTable t = run_profile_step(m, po).table;
  const auto rho = t.spearman_fast_exact();
  if (a.json) {
    nlohmann::json j = t.to_json();
    j["cache"] = a.step.cache;
    j["exact_measured"] = t.exact_measured;
    j["proxy_measured"] = t.proxy_measured;
    j["seconds"] = t.seconds;
    j["phase_seconds"] = t.phase_seconds;  // where the time went (measured now)
    fmt::print("{}\n", j.dump());
    return;
  }
  print_profile_table(t);
  fmt::print("\nprofile      {} ({} exact KL, {} proxies; {} + {} measured now)\n", a.step.cache, t.count_exact(),
             t.count_proxy(), t.exact_measured, t.proxy_measured);
  if (rho) fmt::print("fast vs exact: Spearman rank correlation {:.4f} (anchors excluded)\n", *rho);
  std::string phases;  // where the time went: reference pass, statistics, rounding, proxies, exact KL
  for (const auto& [phase, sec] : t.phase_seconds) phases += fmt::format("{}{} {:.1f}s", phases.empty() ? "" : ", ", phase, sec);
  fmt::print("time         {:.1f}s{}\n", t.seconds, phases.empty() ? "" : " (" + phases + ")");
}

}  // namespace

Runner register_profile(CLI::App& app) {
  auto* cmd = app.add_subcommand("profile", "Measure each tensor's sensitivity (KL) at each candidate format");
  auto a = std::make_shared<ProfileArgs>();
  a->model.add_to(*cmd);
  add_profile_step_options(*cmd, a->step);
  cmd->add_option("--cache", a->step.cache,
                  "profile/cache JSON, resumed if present (default: <model name>.profile.json)");
  cmd->add_flag("--json", a->json, "print the profile as one JSON object");
  return [a, cmd] { run_profile(*a, *cmd); };
}

}  // namespace optiq::cli
