// Calibration statistics (model/calibration_stats.h) and GPTQ's sequential
// mode: with nothing quantized the sequential statistics are the float
// model's; with GPTQ, layer 0 sees the float inputs, later layers the
// quantized model's, and they are exactly the statistics of the model that
// quantizing with them produces (the pass and the export agree).
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

std::vector<std::vector<int32_t>> windows_for(const Model& m) {
  std::vector<std::vector<int32_t>> w;
  for (uint32_t s = 0; s < 3; ++s) w.push_back(test::random_ids(20 + 3 * s, m.config.vocab_size, 300 + s));
  return w;
}

// A tiny model of the family whose matrices groups of 32 divide.
Model model_of(const std::string& family, uint32_t seed) {
  ModelConfig c = test::tiny(family);
  c.dim = 64, c.head_dim = 16, c.hidden_dim = 96;
  return test::random_model(c, seed);
}

bool same_grams(const GramMap& a, const GramMap& b, const std::string& path) {
  return a.count(path) && b.count(path) && *a.at(path) == *b.at(path);
}

class SequentialFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(SequentialFamily, NothingQuantizedGivesTheFloatStatistics) {
  const Model m = model_of(GetParam(), 401);
  const auto windows = windows_for(m);
  const CalibrationStats seq = collect_sequential(m, PrecisionMap{}, windows, {}, false, false);
  const GramMap grams = collect_grams(m, windows, false);
  const ImportanceMap energy = collect_importance(m, windows, false);
  ASSERT_EQ(seq.grams.size(), grams.size());
  for (const auto& [path, g] : grams) EXPECT_TRUE(same_grams(seq.grams, grams, path)) << path;
  ASSERT_EQ(seq.importance.size(), energy.size());
  for (const auto& [path, e] : energy) EXPECT_EQ(seq.importance.at(path), e) << path;
}

class SequentialMode : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(SequentialMode, GptqLayersSeeTheQuantizedModelTheExportMakes) {
  const auto& [family, asymmetric] = GetParam();
  const Model m = model_of(family, 402);
  const auto windows = windows_for(m);
  PrecisionMap map = PrecisionMap::uniform(m.config, AffineFormat{3, 32});
  // A tied embedding stays float in the pass (collect_sequential): the model compared below keeps it so too.
  if (m.config.tied_embeddings) map.formats.erase("model.embed_tokens");
  QuantizeModelOptions opt;
  opt.progress = false;
  const CalibrationStats seq = collect_sequential(m, map, windows, opt, asymmetric, false);
  EXPECT_EQ(seq.cross.empty(), !asymmetric);
  const GramMap float_grams = collect_grams(m, windows, false);
  int differing = 0;
  for (const auto& mod : quantizable_modules(m.config)) {
    if (mod.layer < 0 || !float_grams.count(mod.path)) continue;
    const bool same = same_grams(seq.grams, float_grams, mod.path);
    // A tied embedding stays float: layer 0's q/k/v read the float model's inputs.
    if (mod.layer == 0 && m.config.tied_embeddings && (mod.kind == ModuleKind::QProj || mod.kind == ModuleKind::QkvProj)) {
      EXPECT_TRUE(same) << mod.path;
    }
    differing += !same;
  }
  EXPECT_GT(differing, 0) << "later layers see the quantized layers before them";

  // Quantizing with these statistics gives the model the pass ran: its own
  // (float-model) statistics are the sequential ones, layer by layer.
  Model q = model_of(family, 402);
  opt.grams = &seq.grams;
  opt.cross = asymmetric ? &seq.cross : nullptr;
  opt.importance = &seq.importance;
  opt.fake = true;
  quantize_model(q, map, opt);
  const GramMap q_grams = collect_grams(q, windows, false);
  ASSERT_EQ(q_grams.size(), seq.grams.size());
  for (const auto& [path, g] : seq.grams) EXPECT_TRUE(same_grams(q_grams, seq.grams, path)) << path;
}

INSTANTIATE_TEST_SUITE_P(Families, SequentialFamily, ::testing::Values("llama", "qwen3", "phi3", "gemma3"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Families, SequentialMode,
                         ::testing::Combine(::testing::Values("llama", "qwen3", "phi3", "gemma3"), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + (std::get<1>(info.param) ? "_asymmetric" : "");
                         });

}  // namespace
}  // namespace optiq
