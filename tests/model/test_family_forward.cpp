// The pieces the model families add to the forward pass, each against a
// plain reference on random data, and tiny in-memory models of every family
// (batched prefill must equal token-by-token decoding; a sliding window must
// see exactly its last w tokens).
#include <gtest/gtest.h>

#include <cmath>

#include "core/half.h"
#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "model/transformer.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

TEST(FamilyOps, RmsNormMatchesDouble) {
  for (int dim : {1, 7, 64, 257}) {
    auto x = test::random_floats(dim, 1 + dim), w = test::random_floats(dim, 2 + dim);
    std::vector<float> out(dim);
    rms_norm(x.data(), w.data(), dim, 1e-6f, out.data());
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double r = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(out[i], x[i] * r * w[i], 1e-5 * (1 + std::abs(x[i] * r * w[i])));
  }
}

TEST(FamilyOps, GeluTanh) {
  auto x = test::random_floats(1000, 3, 4.0f);
  x.push_back(-12.0f);
  x.push_back(12.0f);
  for (float v : x) {
    const double d = v;
    const double ref = 0.5 * d * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (d + 0.044715 * d * d * d)));
    float g = v;
    const float one = 1.0f;
    gated_activation(GateAct::GeluTanh, &g, &one, 1);  // the model's GELU (kernels/activation.h)
    EXPECT_NEAR(g, ref, 1e-6 * (1 + std::abs(ref)));
    // The tanh form stays within 1e-3 of the exact (erf) GELU.
    EXPECT_NEAR(ref, 0.5 * d * (1.0 + std::erf(d / std::sqrt(2.0))), 1e-3 * (1 + std::abs(d)));
    // llama.cpp's fp16 table: fp16 precision of the same function.
    EXPECT_NEAR(gelu_tanh_llamacpp(v), ref, 2e-3 * (1 + std::abs(ref)));
  }
}

TEST(FamilyOps, Softcap) {
  auto x = test::random_floats(500, 4, 40.0f);
  std::vector<float> y = x;
  softcap(y.data(), static_cast<int64_t>(y.size()), 30.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(y[i], 30.0 * std::tanh(x[i] / 30.0), 1e-4);
    EXPECT_LT(std::abs(y[i]), 30.0f);
  }
}

TEST(FamilyOps, WindowStart) {
  EXPECT_EQ(window_start(0, 0), 0);
  EXPECT_EQ(window_start(100, 0), 0);
  EXPECT_EQ(window_start(3, 4), 0);   // positions 0..3: 4 keys
  EXPECT_EQ(window_start(4, 4), 1);   // positions 1..4
  EXPECT_EQ(window_start(10, 1), 10); // only itself
}

TEST(FamilyOps, PartialRopeWithScale) {
  const int heads = 3, hd = 10, rot = 6, pos = 7;
  const float mscale = 1.19f;
  std::vector<float> inv = {1.0f, 0.1f, 0.01f};
  auto v = test::random_floats(heads * hd, 5);
  std::vector<float> r = v;
  rope(r.data(), heads, hd, rot, pos, inv.data(), mscale);
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd; ++i) {
      const float* x = &v[h * hd];
      double want = x[i];
      if (i < rot) {
        const int j = i % (rot / 2);
        const double a = double(pos) * inv[j], c = std::cos(a) * mscale, s = std::sin(a) * mscale;
        want = i < rot / 2 ? x[j] * c - x[j + rot / 2] * s : x[j] * s + x[j + rot / 2] * c;
      }
      EXPECT_NEAR(r[h * hd + i], want, 1e-5) << h << " " << i;
    }
}

class FamilyForward : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyForward, BatchEqualsStepwise) {
  const ModelConfig c = test::tiny(GetParam());
  const Model m = test::random_model(c, 11);
  const int n = 13;
  const auto ids = test::random_ids(n, c.vocab_size, 3);
  std::vector<float> batched(static_cast<size_t>(n) * c.vocab_size), stepped(batched.size());
  Transformer a(m, 32);
  a.forward(ids, batched.data(), 0);
  Transformer b(m, 32);
  for (int i = 0; i < n; ++i) b.forward(std::span(&ids[i], 1), stepped.data() + i * c.vocab_size, 0);
  float worst = 0, scale = 0;
  for (size_t i = 0; i < batched.size(); ++i) {
    worst = std::max(worst, std::abs(batched[i] - stepped[i]));
    scale = std::max(scale, std::abs(batched[i]));
    ASSERT_TRUE(std::isfinite(batched[i]));
  }
  EXPECT_LT(worst, 1e-4f * (1 + scale));
  if (c.final_softcap > 0) {
    EXPECT_LT(scale, c.final_softcap);
  }
}

// Greedy steps pick what the host's argmax of the same step's logits picks.
TEST_P(FamilyForward, GreedyStepPicksTheLogitsArgmax) {
  const ModelConfig c = test::tiny(GetParam());
  const Model m = test::random_model(c, 12);
  const auto ids = test::random_ids(9, c.vocab_size, 4);
  Transformer with_logits(m, 32), greedy(m, 32);
  std::vector<float> logits(c.vocab_size);
  for (int32_t id : ids) {
    with_logits.forward(std::span(&id, 1), logits.data(), 0);
    EXPECT_EQ(greedy.forward_greedy(id), argmax(logits.data(), c.vocab_size));
  }
  EXPECT_EQ(greedy.pos(), with_logits.pos());
}

INSTANTIATE_TEST_SUITE_P(All, FamilyForward, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"));

// With one layer, a query behind a window of w keys computes what the same
// model without a window computes on only those w tokens (RoPE is relative).
TEST(FamilyForwardWindow, SeesExactlyItsWindow) {
  ModelConfig c = test::tiny("llama");
  c.n_layers = 1;
  const int w = 5, n = 12;
  const auto ids = test::random_ids(n, c.vocab_size, 9);
  ModelConfig cw = c;
  cw.layer_window = {w};
  const Model windowed = test::random_model(cw, 21), full = test::random_model(c, 21);
  Transformer tw(windowed, 32), tf(full, 32);
  std::vector<float> a = tw.forward_last(ids);
  std::vector<float> b = tf.forward_last(std::span(ids).subspan(n - w));
  for (int v = 0; v < c.vocab_size; ++v) EXPECT_NEAR(a[v], b[v], 2e-4f * (1 + std::abs(b[v])));
  // And the window does change the answer on the full sequence.
  Transformer tf2(full, 32);
  std::vector<float> d = tf2.forward_last(ids);
  float diff = 0;
  for (int v = 0; v < c.vocab_size; ++v) diff = std::max(diff, std::abs(a[v] - d[v]));
  EXPECT_GT(diff, 1e-3f);
}

TEST(FamilyForwardWindow, LongRopePicksFactorsByContext) {
  const ModelConfig c = test::tiny("phi3");
  const auto short_f = rope_inv_freq(c, 16), long_f = rope_inv_freq(c, 17);
  const double base0 = 1.0;  // i = 0: theta^0
  EXPECT_NEAR(short_f[0], base0 / 1.0, 1e-7);
  EXPECT_NEAR(long_f[0], base0 / 2.0, 1e-7);
  EXPECT_NEAR(long_f[3], std::pow(10000.0, -6.0 / 8) / 9.0, 1e-9);
}

}  // namespace
}  // namespace optiq
