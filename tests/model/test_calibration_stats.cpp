// Calibration statistics (model/calibration_stats.h) and GPTQ's sequential
// mode: with nothing quantized the sequential statistics are the float
// model's; with GPTQ, layer 0 sees the float inputs, later layers the
// quantized model's, and they are exactly the statistics of the model that
// quantizing with them produces (the pass and the export agree).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "model/gptq.h"
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

// The head's inputs (the final norm's output) over the windows, summed as
// x x^T in double: what the lm_head, or a tied embedding's head role, multiplies.
std::vector<double> head_gram_of(const Model& m, const std::vector<std::vector<int32_t>>& windows) {
  struct Head : ActivationObserver {
    std::vector<double> g;
    void observe(int, Site site, const float* x, int64_t n, int64_t cols) override {
      if (site != Site::HeadIn) return;
      if (g.empty()) g.assign(static_cast<size_t>(cols * cols), 0.0);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < cols; ++i)
          for (int64_t j = 0; j < cols; ++j) g[i * cols + j] += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
    }
  } head;
  Transformer tf(m, 64);
  tf.set_observer(&head);
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  for (const auto& w : windows) {
    tf.reset();
    tf.forward(w, logits.data(), static_cast<int64_t>(w.size()) - 1);
  }
  return head.g;
}

// sum_t ||(W - W^) x_t||^2 over the head's inputs: trace((W - W^) G (W - W^)^T).
double head_error(const Linear& w, const Linear& what, const std::vector<double>& g) {
  const std::vector<float> a = w.to_f32(), b = what.to_f32();
  const int64_t rows = w.rows(), cols = w.cols();
  double e = 0;
  std::vector<double> d(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) d[j] = static_cast<double>(a[r * cols + j]) - b[r * cols + j];
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) e += d[i] * g[i * cols + j] * d[j];
  }
  return e;
}

// The head's Gram sums are collected for the lm_head (untied) or the tied
// embedding, and GPTQ from them (quantize --method gptq, or a plan naming
// "gptq" for the head matrix) lowers the head's output error against the
// plain rounding; it runs a block of rows at a time with the bits of GPTQ
// on the whole matrix.
class HeadGptq : public ::testing::TestWithParam<std::string> {};

TEST_P(HeadGptq, HeadGramAndGptqOfTheHeadMatrix) {
  const Model m = model_of(GetParam(), 403);
  const bool tied = m.config.tied_embeddings;
  const std::string head = tied ? "model.embed_tokens" : "lm_head";
  const auto windows = windows_for(m);
  const GramMap grams = collect_grams(m, windows, false);
  ASSERT_TRUE(grams.count(head)) << head;
  const std::vector<double> want = head_gram_of(m, windows);
  const std::vector<float>& got = *grams.at(head);
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(got[k], want[k], 1e-5 * scale) << k;
  if (tied) {
    EXPECT_FALSE(grams.count("lm_head"));
  }

  ModuleInfo mod;
  for (const auto& q : quantizable_modules(m.config))
    if (q.path == head) mod = q;
  ASSERT_EQ(mod.path, head);
  const Linear& w = module_linear(m.weights, mod);
  const TensorFormat f = AffineFormat{3, 32};
  PrecisionMap map;
  map.formats[head] = f;
  QuantizeModelOptions plain_opt;
  plain_opt.progress = false;
  const Linear plain = ModuleQuantizer(m, map, plain_opt).quantize(mod, w);
  QuantizeModelOptions gptq_opt = plain_opt;  // --method gptq: every matrix with a Gram sum
  gptq_opt.grams = &grams;
  gptq_opt.row_block_bytes = 4 * mod.cols * 5;  // blocks of 5 rows
  const Linear all = ModuleQuantizer(m, map, gptq_opt).quantize(mod, w);
  std::vector<double> g(want.size());
  std::copy(got.begin(), got.end(), g.begin());
  // (A tied embedding's GPTQ is dampened more: GptqOptions::tied_embed_damp.)
  EXPECT_LT(head_error(w, all, g), (tied ? 0.97 : 0.9) * head_error(w, plain, g));

  // The same bits as GPTQ on the whole matrix at once, with the module's dampening.
  const std::vector<float> wf = w.to_f32();
  const GptqResult whole = gptq_quantize(f, wf.data(), mod.rows, mod.cols, got.data(), gptq_opt.recipe.options(),
                                         {.damp = gptq_damp(gptq_opt.gptq, mod)});
  EXPECT_EQ(gptq_damp(gptq_opt.gptq, mod), tied ? 1.0 : 0.01);
  EXPECT_EQ(all.to_f32(), dequantize_matrix(whole.q));

  // A plan naming "gptq" for the head matrix (quantize --plan, auto): GPTQ too.
  map.methods[head] = "gptq";
  gptq_opt.gptq_all = false;
  EXPECT_EQ(ModuleQuantizer(m, map, gptq_opt).quantize(mod, w).to_f32(), all.to_f32());
  map.methods[head] = "weighted";
  EXPECT_EQ(ModuleQuantizer(m, map, gptq_opt).quantize(mod, w).to_f32(), plain.to_f32());
}

INSTANTIATE_TEST_SUITE_P(Families, HeadGptq, ::testing::Values("llama", "gemma3"),
                         [](const auto& info) { return info.param; });

INSTANTIATE_TEST_SUITE_P(Families, SequentialFamily, ::testing::Values("llama", "qwen3", "phi3", "gemma3"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Families, SequentialMode,
                         ::testing::Combine(::testing::Values("llama", "qwen3", "phi3", "gemma3"), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + (std::get<1>(info.param) ? "_asymmetric" : "");
                         });

}  // namespace
}  // namespace optiq
