// A tied embedding's GPTQ held out (BENCHMARKS.md §9): the embedding alone
// quantized (everything else float), its GPTQ fitted to the head Gram sums
// and token counts of half the calibration windows and its KL measured on the
// other half's scored tokens, both ways round (even windows / odd windows).
// Chooses GptqOptions::tied_embed_damp and tied_embed_lookup on calibration
// text only.
//
//   embed_gptq_heldout MODEL CALIB.jsonl FORMAT [plain|DAMP:LOOKUP ...]
//       --samples 16 --seq 256
// "plain": the weighted search (importance: the head's inputs' mean x^2);
// DAMP:LOOKUP: GptqOptions::tied_embed_damp and tied_embed_lookup, as the
// export quantizes; "U/S": ridge U for rows of tokens the fitting half never
// reads, S for the others.
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

int main(int argc, char **argv) {
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
  const auto windows = calibration_windows(
      model,
      {.source = calib, .samples = samples, .seq = seq, .progress = false});
  ModuleInfo embed;
  for (const auto &m : quantizable_modules(model.config))
    if (m.kind == ModuleKind::Embed)
      embed = m;
  PrecisionMap map;
  map.formats[embed.path] = parse_tensor_format(format);

  std::vector<std::vector<double>> kl(configs.size(), std::vector<double>(2)),
      se = kl;
  for (int fold = 0; fold < 2; ++fold) {
    std::vector<std::vector<int32_t>> fit, held;
    for (size_t w = 0; w < windows.size(); ++w)
      (static_cast<int>(w % 2) == fold ? fit : held).push_back(windows[w]);
    const GramMap grams = collect_grams(model, fit, false);
    const ImportanceMap importance = collect_importance(model, fit, false);
    const std::vector<float> counts = count_tokens(model.config, fit);
    std::vector<int32_t> tokens;
    for (const auto &w : held)
      tokens.insert(tokens.end(), w.begin(), w.end());
    const ReferenceScores ref = ReferenceScores::compute(
        model, tokens, seq, static_cast<int>(held.size()), int64_t{2} << 30,
        false);
    DeviceWeights weights(model, default_backend());
    for (size_t i = 0; i < configs.size(); ++i) {
      QuantizeModelOptions qo{.recipe = QuantizeRecipe::for_model(model.config),
                              .progress = false};
      Linear q;
      if (const auto slash = configs[i].find('/'); slash != std::string::npos) {
        GptqRowRidges ridges{{std::stod(configs[i].substr(0, slash)),
                              std::stod(configs[i].substr(slash + 1))},
                             {}};
        for (float n : counts)
          ridges.which.push_back(n > 0 ? 1 : 0);
        const TensorFormat f = map.formats[embed.path];
        const std::vector<float> &g = *grams.at(embed.path);
        const GptqRowHessians hs = gptq_prepare_rows(
            g.data(), embed.cols, gptq_uses_act_order(f, {}), ridges);
        const std::vector<float> w =
            module_linear(model.weights, embed).to_f32();
        q = Linear::from_quantized(
            gptq_quantize(f, w.data(), embed.rows, embed.cols, hs.pointers(),
                          hs.which_or_null(), qo.recipe.options())
                .q);
      } else {
        qo.importance = &importance;
        if (configs[i] == "plain") {
          map.methods[embed.path] = "weighted";
        } else {
          const auto colon = configs[i].find(':');
          qo.gptq.tied_embed_damp = std::stod(configs[i].substr(0, colon));
          qo.gptq.tied_embed_lookup =
              colon == std::string::npos
                  ? 0.0
                  : std::stod(configs[i].substr(colon + 1));
          qo.grams = &grams;
          qo.token_counts = &counts;
          map.methods[embed.path] = "gptq";
        }
        qo.importance_all = false;
        qo.gptq_all = false;
        ModuleQuantizer quantizer(model, map, qo);
        q = quantizer.quantize(embed, module_linear(model.weights, embed));
      }
      WeightSwap swap(weights, embed, std::move(q));
      PerplexityOptions po;
      po.ctx = seq;
      po.chunks = static_cast<int>(held.size());
      po.ref_scores = &ref;
      po.progress = false;
      const PerplexityResult r = evaluate_perplexity(weights, tokens, po);
      kl[i][fold] = r.kld;
      se[i][fold] = r.kld_stderr;
      fmt::print("fold {} {:>12}  KLD {:.4f} ± {:.4f}\n", fold, configs[i],
                 r.kld, r.kld_stderr);
      std::fflush(stdout);
    }
  }
  fmt::print("\n{:>12}  {:>8} {:>8} {:>8}\n", "config", "fold0", "fold1",
             "mean");
  for (size_t i = 0; i < configs.size(); ++i)
    fmt::print("{:>12}  {:.4f}   {:.4f}   {:.4f}\n", configs[i], kl[i][0],
               kl[i][1], 0.5 * (kl[i][0] + kl[i][1]));
}
