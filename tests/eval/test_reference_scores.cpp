// Evaluating against precomputed reference scores equals evaluating against
// the reference model itself (fp32 rows exactly; bf16 rows to 1e-3).
#include <gtest/gtest.h>

#include "core/error.h"
#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "model/quantize_model.h"
#include "test_util.h"

namespace optiq {
namespace {

struct Fixture {
  Model ref, q;
  std::vector<int32_t> tokens;
};

Fixture load() {
  const std::string path = test::shared_dir() + "/models/stories260K/stories260K.gguf";
  Fixture f{load_model(path), load_model(path), {}};
  quantize_model(f.q, PrecisionMap::uniform(f.q.config, {3, 32}), {.progress = false});
  const std::string text = "Once upon a time, there was a little girl named Lily. She loved to play outside. ";
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += text;
  f.tokens = f.ref.tokenizer->encode(long_text, true);
  return f;
}

TEST(ReferenceScores, EqualsEvaluatingAgainstTheModel) {
  Fixture f = load();
  PerplexityOptions with_model{.ctx = 64, .chunks = 3, .ref = &f.ref, .progress = false};
  const PerplexityResult a = evaluate_perplexity(f.q, f.tokens, with_model);
  ASSERT_GT(a.kld, 1e-3);  // a real difference to measure

  const ReferenceScores f32 = ReferenceScores::compute(f.ref, f.tokens, 64, 3, int64_t{1} << 30, false);
  const ReferenceScores bf16 = ReferenceScores::compute(f.ref, f.tokens, 64, 3, /*f32_limit=*/0, false);
  EXPECT_EQ(f32.rows(), a.tokens);
  EXPECT_LT(bf16.bytes(), f32.bytes());
  PerplexityOptions with_scores{.ctx = 64, .chunks = 3, .ref_scores = &f32, .progress = false};
  const PerplexityResult b = evaluate_perplexity(f.q, f.tokens, with_scores);
  EXPECT_DOUBLE_EQ(b.ppl, a.ppl);
  EXPECT_NEAR(b.kld, a.kld, 1e-6 * a.kld);
  EXPECT_DOUBLE_EQ(b.top1, a.top1);
  EXPECT_NEAR(b.ref_ppl, a.ref_ppl, 1e-9 * a.ref_ppl);
  with_scores.ref_scores = &bf16;
  const PerplexityResult c = evaluate_perplexity(f.q, f.tokens, with_scores);
  EXPECT_NEAR(c.kld, a.kld, 1e-3 * a.kld + 1e-4);
  EXPECT_DOUBLE_EQ(c.top1, a.top1);
}

TEST(ReferenceScores, MismatchedWindowsAreAnError) {
  Fixture f = load();
  const ReferenceScores s = ReferenceScores::compute(f.ref, f.tokens, 64, 2, int64_t{1} << 30, false);
  PerplexityOptions o{.ctx = 64, .chunks = 3, .ref_scores = &s, .progress = false};
  EXPECT_THROW(evaluate_perplexity(f.q, f.tokens, o), Error);
  o.chunks = 2;
  o.ctx = 32;
  EXPECT_THROW(evaluate_perplexity(f.q, f.tokens, o), Error);
}

}  // namespace
}  // namespace optiq
