// AWQ-style scaling (model/awq.h): the search never loses to plain rounding
// and wins where a few input channels carry most of the energy; the folding
// leaves every family's float model computing the same logits.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "model/awq.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

TEST(Awq, SearchBeatsRoundingOnSalientChannels) {
  const int64_t rows = 24, cols = 256, tokens = 512;
  const auto w = test::random_floats(rows * cols, 81, 0.05f);
  std::mt19937 rng(82);
  std::normal_distribution<float> nd;
  std::vector<float> x(tokens * cols), gram(cols * cols, 0.0f);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) x[t * cols + c] = nd(rng) * (c % 29 == 0 ? 25.0f : 1.0f);  // salient channels
  cpu_backend().gram_add(x.data(), tokens, cols, gram.data());
  std::vector<float> rms(cols);
  for (int64_t c = 0; c < cols; ++c) rms[c] = std::sqrt(gram[c * cols + c]);
  for (const TensorFormat f : {TensorFormat{AffineFormat{3, 64}}, TensorFormat{AffineFormat{4, 32}},
                               TensorFormat{GgmlFormat{DType::Q4_K}}, TensorFormat{GgmlFormat{DType::IQ4_NL}}}) {
    const AwqMatrix m{w.data(), rows, f};
    const AwqSearch r = awq_search({&m, 1}, cols, gram.data(), rms, QuantizeOptions{});
    EXPECT_LE(r.error, r.error_plain) << tensor_format_short(f);
    EXPECT_LT(r.error, 0.9 * r.error_plain) << tensor_format_short(f);
    EXPECT_GT(r.alpha, 0.0) << tensor_format_short(f);
    ASSERT_EQ(r.scales.size(), static_cast<size_t>(cols));
    // Salient channels get the larger scales.
    EXPECT_GT(r.scales[0], r.scales[1]) << tensor_format_short(f);
  }
}

class AwqFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(AwqFamily, FoldingKeepsTheFloatModel) {
  Model m = test::random_model(test::tiny(GetParam()), 91);
  std::vector<std::vector<int32_t>> windows;
  for (uint32_t s = 0; s < 4; ++s) windows.push_back(test::random_ids(24, m.config.vocab_size, 100 + s));
  const auto ids = test::random_ids(20, m.config.vocab_size, 200);
  std::vector<float> before, after;
  {
    Transformer tf(m, 32);
    before = tf.forward_last(ids);
  }
  const GramMap grams = collect_grams(m, windows, false);
  const std::vector<float> norm0 = m.weights.layers[1].attn_norm;
  const auto sites = awq_transform(m, PrecisionMap{}, grams, QuantizeRecipe{}, nullptr, {.fixed_alpha = 0.5});
  EXPECT_EQ(sites.size(), static_cast<size_t>(4 * m.config.n_layers));
  EXPECT_NE(m.weights.layers[1].attn_norm, norm0) << "the scales went into the norm";
  {
    Transformer tf(m, 32);
    after = tf.forward_last(ids);
  }
  ASSERT_EQ(before.size(), after.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    num += (after[i] - before[i]) * (after[i] - before[i]);
    den += before[i] * before[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(All, AwqFamily, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"));

}  // namespace
}  // namespace optiq
