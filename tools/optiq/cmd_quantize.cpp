// optiq quantize: uniform or planned per-tensor quantization, exported as an
// MLX directory (default) or one GGUF file (--format gguf).
#include <cstdlib>
#include <algorithm>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "model/awq.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/exporter.h"
#include "pipeline/export_step.h"
#include "plan/budget.h"
#include "pipeline.h"
#include "profile/calibration.h"

namespace optiq::cli {

namespace {

struct QuantizeArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  std::string out;
  std::string format = "mlx";
  int bits = 4;
  int group_size = 0;  // 0: affine groups of 64, or for GGUF its own block types
  std::string plan;
  std::string method = "search";
  std::string dtype = "auto";
  CalibrationOptions calib;  // source empty: no activation weighting
  double damp = 0.01;
  int grid_passes = GptqOptions{}.grid_passes;
  bool no_act_order = false;
  bool sequential = false;
  bool asymmetric = false;
  int awq_grid = 10;
  std::string shard_size = "5GB";
  bool force = false;
  bool json = false;
};

// How a source read once was read (pipeline/export_step.h); null when it was read from its map.
nlohmann::json source_stream_json(const std::optional<ReadOnceStream::Stats>& st) {
  if (!st) return nullptr;
  return {{"matrices_read_once", st->kept}, {"matrices_passed", st->passed}, {"direct_io", st->direct},
          {"export_waited_s", st->consumer_wait}, {"reader_waited_s", st->reader_wait},
          {"reading_s", st->reading}, {"hashing_s", st->hashing}};
}

void run_quantize(const QuantizeArgs& a, const CLI::App& cmd) {
  check((a.method != "gptq" && a.method != "awq") || !a.calib.source.empty(),
        "--method {} needs calibration text (--calib FILE, or --calib self): it works from the inputs' statistics",
        a.method);
  check(!a.asymmetric || a.sequential, "--asymmetric aims GPTQ's sequential pass at the float model: add --sequential");
  check(!a.sequential || a.method == "gptq" || !a.plan.empty(),
        "--sequential is GPTQ's sequential mode: use it with --method gptq (or a plan naming gptq)");
  check(a.damp > 0 && a.damp < 10, "--damp {}: expected a fraction of the mean input energy, e.g. 0.01", a.damp);
  // The source is hashed (its provenance) on a thread of its own while the
  // model loads and the export reads it: read from disk once.
  std::shared_future<nlohmann::json> source;
  const nlohmann::json provenance = command_provenance_pending(cmd, a.model, source);
  Model m = a.model.load();
  // A uniform GGUF is llama.cpp's own type of those bits (Q4_K for 4, Q8_0 for
  // 8), unless --group-size asks for affine groups.
  const TensorFormat uniform =
      a.format == "gguf" && a.group_size == 0
          ? parse_tensor_format(a.bits == 8 ? std::string("q8_0") : fmt::format("q{}_k", a.bits))
          : TensorFormat(AffineFormat{a.bits, a.group_size > 0 ? a.group_size : 64});
  PrecisionMap map = a.plan.empty() ? PrecisionMap::uniform(m.config, uniform)
                                    : PrecisionMap::from_plan_file(a.plan, m.config);
  // GGUF blocks hold fp16 scales: affine groups headed there take fp16 ones
  // (losslessly Q4_1/Q5_1) unless --dtype says otherwise.
  const std::string dtype = a.format == "gguf" && a.dtype == "auto" ? "f16" : a.dtype;
  QuantizeModelOptions opt{.recipe = QuantizeRecipe::for_model(
                               m.config, a.method == "minmax" ? QuantMethod::MinMax : QuantMethod::Search, dtype)};
  ImportanceMap importance;
  GramMap grams, cross;
  // A plan names the rounding its profile measured per tensor (GPTQ, the
  // weighted search): both work from calibration statistics.
  auto count_method = [&](const char* method) {
    return std::count_if(map.methods.begin(), map.methods.end(), [&](const auto& kv) { return kv.second == method; });
  };
  const auto n_gptq = count_method("gptq"), n_weighted = count_method("weighted");
  const bool plan_gptq = n_gptq > 0;
  check(!plan_gptq || !a.calib.source.empty(),
        "{}: the plan rounds {} tensors with GPTQ (\"method\": \"gptq\"): give --calib, the text it was profiled on",
        a.plan, n_gptq);
  check(n_weighted == 0 || !a.calib.source.empty(),
        "{}: the plan weighs {} tensors' rounding by calibration activations (\"method\": \"weighted\"): give "
        "--calib, the text it was profiled on",
        a.plan, n_weighted);
  check(!a.sequential || a.method == "gptq" || plan_gptq,
        "{}: --sequential is GPTQ's sequential mode, and the plan names no tensor for GPTQ", a.plan);
  check(!plan_gptq || a.method != "awq",
        "{}: the plan rounds {} tensors with GPTQ, which --method awq does not combine with yet: drop --method awq",
        a.plan, n_gptq);
  check(a.method != "awq" || std::none_of(map.formats.begin(), map.formats.end(),
                                         [](const auto& kv) { return kv.second.is_source(); }),
        "{}: the plan keeps tensors in their source's GGUF blocks ('source'), which --method awq would rescale: drop "
        "--method awq",
        a.plan);
  if (!a.calib.source.empty()) {
    const auto windows = calibration_windows(m, calibration_for(m, a.calib));
    // The modules rounded on their own are weighted by their inputs' energies
    // (--method search --calib). Every matrix that has inputs is rounded by
    // GPTQ with --method gptq (weighted by diag H; an untied embedding has no
    // energies), so that needs no pass of its own (a second pass over the
    // calibration text: a second of the ~10 a 270M model takes on a GPU).
    if (a.method != "gptq" || a.sequential) importance = collect_importance(m, windows);
    opt.importance = &importance;
    // A plan that names weighted tensors is followed tensor by tensor (the
    // others were profiled plainly); else --calib weighs every matrix.
    opt.importance_all = n_weighted == 0;
    if (a.method == "gptq" || plan_gptq) {  // every matrix, or the ones the plan names
      opt.gptq_all = a.method == "gptq";
      opt.gptq = {.damp = a.damp, .act_order = !a.no_act_order, .grid_passes = a.grid_passes};
      if (a.sequential) {
        // Each layer's statistics on the layers before it quantized; the
        // embedding (no input statistics) keeps the float model's.
        CalibrationStats st = collect_sequential(m, map, windows, opt, a.asymmetric, !a.json);
        grams = std::move(st.grams);
        cross = std::move(st.cross);
        if (a.asymmetric) opt.cross = &cross;
        for (auto& [path, energy] : st.importance) importance[path] = std::move(energy);
      } else {
        grams = collect_grams(m, windows);
      }
      opt.grams = &grams;
    }
    if (a.method == "awq") {
      grams = collect_grams(m, windows);
      const auto sites = awq_transform(m, map, grams, opt.recipe, &importance, {.grid = a.awq_grid});
      grams.clear();  // the inputs are scaled now; nothing reads these again
      double plain = 0, scaled = 0;
      int moved = 0;
      for (const auto& s : sites) plain += s.error_plain, scaled += s.error, moved += s.alpha > 0;
      if (!a.json)
        fmt::print("awq: {} of {} input sites scaled; their summed output error {:.4g} -> {:.4g} ({:+.1f}%)\n", moved,
                   sites.size(), plain, scaled, plain > 0 ? 100.0 * (scaled / plain - 1) : 0.0);
    }
  }
  const ExportStepResult r = run_export_step(
      m, map, opt, a.out,
      {.format = a.format, .force = a.force, .shard_bytes = shard_bytes(a.shard_size), .progress = !a.json,
       .provenance = provenance, .source = source, .tokenizer_path = a.model.tokenizer});
  if (r.source_stream && std::getenv("OPTIQ_STREAM_STATS"))
    fmt::print(stderr, "source read once: {}\n", source_stream_json(r.source_stream).dump());
  const uint64_t bytes = r.matrix_bytes;
  const double bpw = r.bits_per_weight();
  if (a.json) {
    fmt::print("{}\n", nlohmann::json({{"out", a.out},
                                       {"bits_per_weight", bpw},
                                       {"matrix_bytes", bytes},
                                       {"seconds", r.seconds},
                                       {"source_stream", source_stream_json(r.source_stream)}})
                            .dump());
  } else {
    fmt::print("wrote {} ({:.2f} MB of weight matrices, {:.3f} bits per weight)\n", a.out, bytes / 1e6, bpw);
  }
}

}  // namespace

void add_shard_size_option(CLI::App& cmd, std::string& shard_size) {
  cmd.add_option("--shard-size", shard_size,
                 "MLX export: safetensors shards of at most this size (model-0000i-of-0000n.safetensors with "
                 "model.safetensors.index.json, as Hugging Face and mlx-lm write them); 0: one file")
      ->capture_default_str();
}

uint64_t shard_bytes(const std::string& shard_size) {
  if (shard_size == "0") return 0;
  const int64_t b = parse_byte_size(shard_size, "--shard-size");
  check(b >= 1'000'000, "--shard-size {}: shards under 1 MB would split every tensor into its own file", shard_size);
  return static_cast<uint64_t>(b);
}

Runner register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "quantize", "Quantize a model (uniformly, or per tensor with --plan) to MLX layout or one GGUF file");
  auto a = std::make_shared<QuantizeArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("-o,--out", a->out, "output: a directory (--format mlx) or a .gguf file (--format gguf)")->required();
  cmd->add_option("--format", a->format,
                  "mlx: MLX / Hugging Face directory (mlx_lm.load); gguf: one GGUF file for llama.cpp, Ollama, LM "
                  "Studio (GGUF block types as they are, affine groups of 32 at 4/5 bits as Q4_1/Q5_1, floats F16)")
      ->capture_default_str()->check(CLI::IsMember(exporter_names()));
  cmd->add_option("--bits", a->bits,
                  "bits per weight: 2, 3, 4, 5, 6 or 8 (--format gguf: llama.cpp's q2_k..q6_k or q8_0, a k-quant "
                  "falling back as llama.cpp does on rows 256 does not divide)")->capture_default_str()
      ->check(CLI::IsMember({2, 3, 4, 5, 6, 8}));
  cmd->add_option("--group-size", a->group_size,
                  "affine (MLX) groups: 32, 64 or 128 weights per scale and bias (default 64; GGUF holds groups of "
                  "32 at 4 or 5 bits, as Q4_1/Q5_1)")
      ->check(CLI::IsMember({32, 64, 128}));
  cmd->add_option("--plan", a->plan, "per-tensor plan JSON (docs/plan-format.md); overrides --bits/--group-size")
      ->check(CLI::ExistingFile);
  cmd->add_option("--method", a->method,
                  "rounding: search (error-minimising), minmax (MLX's), gptq (error feedback through the "
                  "calibration inputs' second moments), or awq (per-input-channel scales searched on the calibration "
                  "inputs and folded into the norms / previous matrices, then search rounding); gptq and awq need "
                  "--calib; the format and layout are unchanged")
      ->capture_default_str()->check(CLI::IsMember({"search", "minmax", "gptq", "awq"}));
  cmd->add_option("--awq-grid", a->awq_grid, "awq: steps of the scale exponent alpha in [0, 1]")
      ->capture_default_str()->check(CLI::Range(1, 100));
  cmd->add_option("--damp", a->damp,
                  "gptq: dampening, a fraction of the mean input energy added to H's diagonal (a tied embedding's: 1)")
      ->capture_default_str();
  cmd->add_option("--grid-passes", a->grid_passes,
                  "gptq, MLX formats: refits of every group's scale and bias to the codes GPTQ chose (least squares "
                  "on the output error), each followed by GPTQ again on the refitted grid but the last; 0: plain "
                  "GPTQ (faster; the profile measures the default)")
      ->capture_default_str()->check(CLI::Range(0, 10));
  cmd->add_flag("--no-act-order", a->no_act_order,
                "gptq: columns in their own order (default: by decreasing input energy, groups' scales fixed "
                "first; MLX formats only)");
  cmd->add_flag("--sequential", a->sequential,
                "gptq: each layer's input statistics from the calibration text run through the layers before it "
                "already quantized: each matrix's rounding minimises its output error on the inputs the quantized "
                "model gives it (GPTQ's sequential mode; about five more partial passes of every layer)");
  cmd->add_flag("--asymmetric", a->asymmetric,
                "gptq --sequential: aim each matrix at the float model's outputs, min ||W x - W^ x~||^2 with x the "
                "float model's inputs and x~ the quantized model's (GPTAQ), so it also corrects what the matrices "
                "before it got wrong; runs the float model beside the pass");
  cmd->add_option("--dtype", a->dtype,
                  "float type of scales, biases and unquantized tensors (auto: bf16 for Gemma in MLX, whose "
                  "activations overflow fp16 there, else f16; GGUF blocks always hold fp16 scales)")->capture_default_str()
      ->check(CLI::IsMember({"auto", "f16", "bf16"}));
  add_calibration_options(*cmd,
                          a->calib,
                          "calibration text (.txt, or .jsonl with \"text\"; or 'self'): weights rounding errors by "
                          "input-activation statistics");
  add_shard_size_option(*cmd, a->shard_size);
  cmd->add_flag("--force", a->force, "replace the output if it exists");
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a, cmd] { run_quantize(*a, *cmd); };
}

}  // namespace optiq::cli
