// A tied embedding's GPTQ held out (BENCHMARKS.md §9): the embedding alone
// quantized (everything else float), its GPTQ fitted to the head Gram sums of
// half the calibration windows and its KL measured on the other half's scored
// tokens, both ways round (fold 0: fitted on the even windows, measured on the
// odd ones; fold 1 the converse). How GptqOptions::tied_embed_damp was chosen,
// on calibration text only.
//
//   embed_gptq_heldout MODEL CALIB.jsonl FORMAT [plain|DAMP ...] [--samples 16] [--seq 256]
// "plain": the weighted search (importance: the head's inputs' mean x^2);
// DAMP: GPTQ with that tied_embed_damp, quantized as the export does.
// (The per-row ridges of BENCHMARKS.md §9 were measured with this program at
// commit 42c2300, where it also took DAMP:LOOKUP and U/S.)
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "core/error.h"
#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "model/calibration_stats.h"
#include "model/device_weights.h"
#include "model/model.h"
#include "model/quantize_model.h"
#include "profile/calibration.h"

using namespace optiq;

int main(int argc, char** argv) {
  CLI::App app{"a tied embedding's GPTQ, held out"};
  std::string model_path, calib, format;
  std::vector<std::string> configs;
  int samples = 16, seq = 256;
  app.add_option("model", model_path)->required();
  app.add_option("calib", calib)->required();
  app.add_option("format", format)->required();
  app.add_option("configs", configs)->required();
  app.add_option("--samples", samples);
  app.add_option("--seq", seq);
  CLI11_PARSE(app, argc, argv);

  Model model = load_model(model_path);
  check(model.config.tied_embeddings, "{}: no tied embedding", model_path);
  const auto windows = calibration_windows(model, {.source = calib, .samples = samples, .seq = seq, .progress = false});
  ModuleInfo embed;
  for (const auto& m : quantizable_modules(model.config))
    if (m.kind == ModuleKind::Embed) embed = m;
  PrecisionMap map;
  map.formats[embed.path] = parse_tensor_format(format);

  std::vector<std::vector<double>> kl(configs.size(), std::vector<double>(2));
  for (int fold = 0; fold < 2; ++fold) {
    std::vector<std::vector<int32_t>> fit, held;
    for (size_t w = 0; w < windows.size(); ++w) (static_cast<int>(w % 2) == fold ? fit : held).push_back(windows[w]);
    const GramMap grams = collect_grams(model, fit, false);
    const ImportanceMap importance = collect_importance(model, fit, false);
    std::vector<int32_t> tokens;
    for (const auto& w : held) tokens.insert(tokens.end(), w.begin(), w.end());
    const ReferenceScores ref =
        ReferenceScores::compute(model, tokens, seq, static_cast<int>(held.size()), int64_t{2} << 30, false);
    DeviceWeights weights(model, default_backend());
    for (size_t i = 0; i < configs.size(); ++i) {
      QuantizeModelOptions qo{.recipe = QuantizeRecipe::for_model(model.config), .progress = false};
      qo.importance = &importance;
      qo.importance_all = false;
      qo.gptq_all = false;
      if (configs[i] == "plain") {
        map.methods[embed.path] = "weighted";
      } else {
        qo.gptq.tied_embed_damp = std::stod(configs[i]);
        qo.grams = &grams;
        map.methods[embed.path] = "gptq";
      }
      ModuleQuantizer quantizer(model, map, qo);
      WeightSwap swap(weights, embed, quantizer.quantize(embed, module_linear(model.weights, embed)));
      PerplexityOptions po;
      po.ctx = seq;
      po.chunks = static_cast<int>(held.size());
      po.ref_scores = &ref;
      po.progress = false;
      const PerplexityResult r = evaluate_perplexity(weights, tokens, po);
      kl[i][fold] = r.kld;
      fmt::print("fold {} {:>8}  KLD {:.4f} ± {:.4f}\n", fold, configs[i], r.kld, r.kld_stderr);
      std::fflush(stdout);
    }
  }
  fmt::print("\n{:>8}  {:>7} {:>7} {:>7}\n", "config", "fold 0", "fold 1", "mean");
  for (size_t i = 0; i < configs.size(); ++i)
    fmt::print("{:>8}  {:.4f}  {:.4f}  {:.4f}\n", configs[i], kl[i][0], kl[i][1], 0.5 * (kl[i][0] + kl[i][1]));
}
