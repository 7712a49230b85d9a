// A GGUF model run from its packed weights (Q4_1/Q8_0 re-laid as affine
// groups) gives the same logits as the fp32-dequantized model.
#include <gtest/gtest.h>

#include <cmath>

#include "model/transformer.h"
#include "test_util.h"

namespace optiq {
namespace {

TEST(GgufPacked, SmolLM2PackedEqualsDequantized) {
  const std::string path = test::cache_dir() + "/models/smollm2-135m-instruct-q4_1.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing: run scripts/fetch_models.py";
  LoadOptions packed_opt, f32_opt;
  f32_opt.dequantize = true;
  Model packed = load_model(path, packed_opt), f32 = load_model(path, f32_opt);
  ASSERT_TRUE(packed.weights.layers[0].wq.is_affine());
  ASSERT_FALSE(f32.weights.layers[0].wq.is_affine());
  EXPECT_LT(packed.weights.layers[0].w_up.bytes() * 5, f32.weights.layers[0].w_up.bytes());
  std::vector<int32_t> ids = packed.tokenizer->encode("The quick brown fox jumps over the lazy dog, and then", true);
  const int64_t n = ids.size(), vocab = packed.config.vocab_size;
  std::vector<float> a(n * vocab), b(n * vocab);
  Transformer ta(packed), tb(f32);
  ta.forward(ids, a.data(), 0);
  tb.forward(ids, b.data(), 0);
  double max_abs = 0, max_ref = 0;
  for (int64_t i = 0; i < n * vocab; ++i) {
    max_abs = std::max(max_abs, static_cast<double>(std::abs(a[i] - b[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::abs(b[i])));
  }
  EXPECT_LT(max_abs / max_ref, 1e-4);
}

}  // namespace
}  // namespace optiq
