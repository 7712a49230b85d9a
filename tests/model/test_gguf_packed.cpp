// A GGUF model run from its packed weights (Q4_1/Q8_0 re-laid as affine
// groups) gives the same logits as the fp32-dequantized model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <span>

#include "kernels/act_quant.h"
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
  const bool int8 = kernels::decode_int8_enabled();
  kernels::set_decode_int8(false);  // exact numerics: fp32 activations (the int8 paths: test_int8_decode)
  ta.forward(ids, a.data(), 0);
  kernels::set_decode_int8(int8);
  tb.forward(ids, b.data(), 0);
  double max_abs = 0, max_ref = 0;
  for (int64_t i = 0; i < n * vocab; ++i) {
    max_abs = std::max(max_abs, static_cast<double>(std::abs(a[i] - b[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::abs(b[i])));
  }
  EXPECT_LT(max_abs / max_ref, 1e-4);
}


// Gemma 3 270M Q4_K_M: its Q4_K/Q6_K matrices (attn_output, ffn_down: the
// 640-wide ones cannot be k-quants, so the file stores them and the embedding
// as Q5_0/Q8_0, re-laid as affine) run packed from the mapped file instead of
// dequantized to fp32.
// Exact mode (fp32 activations) equals the dequantized model; the int8 modes
// (decode on AVX2/AVX-512, prefill on AVX-512 VNNI) keep the greedy token at
// every position.
TEST(GgufPacked, Gemma3KQuantPackedEqualsDequantized) {
  const std::string path = test::cache_dir() + "/models/gemma-3-270m-q4_k_m.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing: run scripts/fetch_models.py";
  LoadOptions packed_opt, f32_opt;
  f32_opt.dequantize = true;
  Model packed = load_model(path, packed_opt), f32 = load_model(path, f32_opt);
  const Linear& down = packed.weights.layers[0].w_down;
  ASSERT_TRUE(down.is_kquant());
  ASSERT_TRUE(packed.weights.layers[0].wo.is_kquant());
  EXPECT_EQ(down.format(), "Q6_K");
  EXPECT_EQ(down.bytes() * 8 * 4, static_cast<size_t>(f32.weights.layers[0].w_down.bytes() * 6.5625));
  std::vector<int32_t> ids = packed.tokenizer->encode("The quick brown fox jumps over the lazy", true);
  const int64_t n = ids.size(), vocab = packed.config.vocab_size;
  auto rel_diff = [&](const std::vector<float>& a, const std::vector<float>& b) {
    double max_abs = 0, max_ref = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      max_abs = std::max(max_abs, static_cast<double>(std::abs(a[i] - b[i])));
      max_ref = std::max(max_ref, static_cast<double>(std::abs(b[i])));
    }
    return max_abs / max_ref;
  };
  auto argmax = [&](const float* l) { return std::max_element(l, l + vocab) - l; };
  // Token-by-token (the decode kernels, n = 1) and the whole prompt (batched).
  auto run = [&](const Model& m, bool one_by_one) {
    std::vector<float> logits(n * vocab);
    Transformer t(m);
    if (one_by_one)
      for (int64_t i = 0; i < n; ++i) t.forward(std::span<const int32_t>(&ids[i], 1), &logits[i * vocab], 0);
    else
      t.forward(ids, logits.data(), 0);
    return logits;
  };
  const std::vector<float> ref_seq = run(f32, true), ref_batch = run(f32, false);
  kernels::set_decode_int8(false);
  const std::vector<float> exact_seq = run(packed, true), exact_batch = run(packed, false);
  kernels::set_decode_int8(true);
  EXPECT_LT(rel_diff(exact_seq, ref_seq), 1e-5);
  EXPECT_LT(rel_diff(exact_batch, ref_batch), 1e-5);
  const std::vector<float> fast_seq = run(packed, true), fast_batch = run(packed, false);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(argmax(&fast_seq[i * vocab]), argmax(&ref_seq[i * vocab])) << "decode, position " << i;
    EXPECT_EQ(argmax(&fast_batch[i * vocab]), argmax(&ref_batch[i * vocab])) << "prefill, position " << i;
  }
  EXPECT_LT(rel_diff(fast_seq, ref_seq), 0.1);
  EXPECT_LT(rel_diff(fast_batch, ref_batch), 0.1);
}

}  // namespace
}  // namespace optiq
