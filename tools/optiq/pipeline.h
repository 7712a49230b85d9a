// The command-line side of the pipeline steps (src/pipeline/): the options
// `optiq profile`, `optiq plan`, `optiq auto` and `optiq compare` share, parsed
// into the steps' typed options, and the printing of their results.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "model/model.h"
#include "pipeline/plan_step.h"
#include "pipeline/profile_step.h"

namespace optiq::cli {

// The one binder of --calib, --calib-samples, --calib-seq and --seed (profile,
// auto, compare, quantize) to CalibrationOptions.
CLI::Option* add_calibration_options(CLI::App& cmd, CalibrationOptions& c, const std::string& calib_help);

// --shard-size (quantize, auto): MLX exports in safetensors shards of at most that size.
void add_shard_size_option(CLI::App& cmd, std::string& shard_size);
// "5GB" -> bytes ("0": one file); throws naming the option.
uint64_t shard_bytes(const std::string& shard_size);

struct ProfileStepArgs {
  CalibrationOptions calib;
  std::string method = "fast";
  // The runtime the plan is for: picks the default candidates (empty: mlx).
  std::string target;
  std::string candidates;  // empty: default_candidates(target)
  std::string anchors = "auto";
  int anchor_windows = 0;  // 0: all
  std::string methods;  // roundings to measure ("search", "weighted", each maybe with ",gptq"); "": the default
  std::string cache;
  bool layerwise = false;  // --layerwise: the fast profile a decoder layer at a time
  std::string memory;      // --memory: activations held in memory (layer-wise); empty: the default
};
void add_profile_step_options(CLI::App& cmd, ProfileStepArgs& a);
// The default --candidates of a --target: "mlx" MLX's affine formats,
// "gguf" llama.cpp's block types (k-quants on rows their 256-blocks do not
// divide take llama.cpp's fallback, quant/format.h format_for_shape).
std::string default_candidates(const std::string& target);
// Parses the strings (method, candidates, anchors); progress bars unless quiet.
ProfileStepOptions profile_step_options(const ProfileStepArgs& a, bool progress = true);
void print_profile_table(const SensitivityTable& t);

struct PlanStepArgs {
  std::string bpw, size, reduction, fit;
  int64_t ctx = 0;
  // What runs the model, for --fit (plan/runtime_memory.h): as given (empty:
  // runtime_default, the command's choice), the KV cache type (empty: the
  // runtime's) and llama.cpp's flash attention ("on"/"off").
  std::string runtime, kv_cache, flash_attn;
  std::string runtime_default = "optiq-cpu";
  int min_bits = 0;
  std::vector<std::string> pins;
  std::string tie;
  std::string use = "auto";
  std::string baseline;  // empty: optiq's solver; else uniform:qBgG | kquant | dynamic
  // "predicted": the solver's plan; "measured": the best of plan/select.h's
  // variants, measured on the profile's calibration windows.
  std::string select = "predicted";
  int select_windows = 16;  // measured selection uses the first N calibration windows of the profile
  // Decode-speed bound against llama.cpp's own mix of the size: "auto" (10% for
  // GGUF candidates, else off), "off", "15%" or a fraction "0.15"; the cost
  // table (empty: the built-in one, plan/decode_speed.h).
  std::string max_slowdown = "auto";
  std::string speed_table;
};
// `runtime_default_help` says what --runtime defaults to for this command.
void add_plan_step_options(CLI::App& cmd, PlanStepArgs& a,
                           const std::string& runtime_default_help = "optiq-cpu");
// auto's --runtime default: llamacpp for a GGUF output (--format gguf or
// --target gguf), else mlx. Throws when the runtime `given` cannot read the
// output (llama.cpp an MLX directory, mlx-lm a GGUF file).
std::string runtime_for_output(const std::string& format, const std::string& target, const std::string& given);
// --use auto|exact|fast.
DamageSource parse_damage_source(const std::string& use);
// Parses the budget, pins, tie, damage source and selection. --runtime,
// --kv-cache and --flash-attn without --fit are an error (they only shape a
// --fit budget).
PlanStepOptions plan_step_options(const PlanStepArgs& a, bool progress = true);
// Budget, size, KL and the formats chosen (a k-quant stored as llama.cpp's
// fallback counted as such: "q4_k→q5_0 x12").
void print_plan_summary(const PlanStepResult& r, const ModelConfig& config, const std::string& out);

}  // namespace optiq::cli
