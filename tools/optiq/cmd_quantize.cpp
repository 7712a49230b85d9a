// optiq quantize: uniform or planned per-tensor quantization to MLX layout.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "model/quantize_model.h"
#include "model/exporter.h"
#include "pipeline.h"
#include "profile/calibration.h"

namespace optiq::cli {

namespace {

struct QuantizeArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  std::string out;
  int bits = 4;
  int group_size = 64;
  std::string plan;
  std::string method = "search";
  std::string dtype = "auto";
  CalibrationOptions calib;  // source empty: no activation weighting
  bool force = false;
  bool json = false;
};

void run_quantize(const QuantizeArgs& a) {
  Model m = a.model.load();
  PrecisionMap map = a.plan.empty() ? PrecisionMap::uniform(m.config, {a.bits, a.group_size})
                                    : PrecisionMap::from_plan_file(a.plan, m.config);
  QuantizeModelOptions opt{.recipe = QuantizeRecipe::for_model(
                               m.config, a.method == "minmax" ? QuantMethod::MinMax : QuantMethod::Search, a.dtype)};
  ImportanceMap importance;
  if (!a.calib.source.empty()) {
    importance = collect_importance(m, calibration_windows(m, calibration_for(m, a.calib)));
    opt.importance = &importance;
  }
  quantize_model(m, map, opt);
  make_exporter("mlx")->write(m, a.out, {.bf16 = opt.recipe.bf16_scales, .force = a.force});
  size_t bytes = 0;
  for (const auto& mod : quantizable_modules(m.config)) {  // float modules are exported as 16-bit
    const Linear& l = module_linear(m.weights, mod);
    bytes += l.is_affine() ? l.bytes() : static_cast<size_t>(mod.numel()) * 2;
  }
  int64_t params = 0;
  for (const auto& mod : quantizable_modules(m.config)) params += mod.numel();
  const double bpw = 8.0 * bytes / params;
  if (a.json) {
    fmt::print("{}\n", nlohmann::json({{"out", a.out}, {"bits_per_weight", bpw}, {"matrix_bytes", bytes}}).dump());
  } else {
    fmt::print("wrote {} ({:.2f} MB of weight matrices, {:.3f} bits per weight)\n", a.out, bytes / 1e6, bpw);
  }
}

}  // namespace

Runner register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Quantize a model (uniformly, or per tensor with --plan) to MLX layout");
  auto a = std::make_shared<QuantizeArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("-o,--out", a->out, "output directory (MLX / Hugging Face layout)")->required();
  cmd->add_option("--bits", a->bits, "bits per weight: 2, 3, 4, 5, 6 or 8")->capture_default_str()
      ->check(CLI::IsMember({2, 3, 4, 5, 6, 8}));
  cmd->add_option("--group-size", a->group_size, "weights per scale/bias group: 32, 64 or 128")->capture_default_str()
      ->check(CLI::IsMember({32, 64, 128}));
  cmd->add_option("--plan", a->plan, "per-tensor plan JSON (docs/plan-format.md); overrides --bits/--group-size")
      ->check(CLI::ExistingFile);
  cmd->add_option("--method", a->method, "rounding: search (error-minimising) or minmax (MLX's)")->capture_default_str()
      ->check(CLI::IsMember({"search", "minmax"}));
  cmd->add_option("--dtype", a->dtype,
                  "float type of scales, biases and unquantized tensors (auto: bf16 for Gemma, whose activations "
                  "overflow fp16 in MLX, else f16)")->capture_default_str()
      ->check(CLI::IsMember({"auto", "f16", "bf16"}));
  add_calibration_options(*cmd,
                          a->calib,
                          "calibration text (.txt, or .jsonl with \"text\"; or 'self'): weights rounding errors by "
                          "input-activation statistics");
  cmd->add_flag("--force", a->force, "replace the output directory if it exists");
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a] { run_quantize(*a); };
}

}  // namespace optiq::cli
