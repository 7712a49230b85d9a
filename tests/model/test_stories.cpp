// stories260K end to end: both of its files load to the same model, greedy
// decoding reproduces llama2.c's known continuation, and batched prefill
// equals token-by-token decoding; greedy sampling's pick.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "core/error.h"
#include "eval/perplexity.h"
#include "model/sampler.h"
#include "model/transformer.h"
#include "test_util.h"

namespace optiq {
namespace {

std::string stories_dir() { return test::shared_dir() + "/models/stories260K"; }

Model load_bin() {
  LoadOptions o;
  o.tokenizer_path = stories_dir() + "/tok512.bin";
  return load_model(stories_dir() + "/stories260K.bin", o);
}
Model load_gguf() { return load_model(stories_dir() + "/stories260K.gguf"); }

std::string greedy(const Model& m, const std::string& prompt, int n) {
  Transformer tf(m);
  std::vector<int32_t> ids = m.tokenizer->encode(prompt, true);
  std::vector<float> logits = tf.forward_last(ids);
  Sampler s({.temperature = 0.0f});
  std::string out;
  for (int i = 0; i < n; ++i) {
    int32_t t = s.sample(logits);
    if (m.tokenizer->is_eog(t)) break;
    out += m.tokenizer->decode_token(t);
    logits = tf.forward_last(std::span<const int32_t>(&t, 1));
  }
  return out;
}

// Greedy sampling takes the first of equal logits; logits that are all NaN
// (broken weights) are an error that says so, not token -1.
TEST(Sampler, GreedyPicksTheFirstLargestAndRejectsAllNan) {
  Sampler s({.temperature = 0.0f});
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_EQ(s.sample(logits), 1);
  const std::vector<float> nan(7, std::numeric_limits<float>::quiet_NaN());
  try {
    s.sample(nan);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
}

// What sample() must do, written plainly: every non-NaN logit divided by
// the temperature, sorted best first (equal values by index), the first k,
// softmax, the smallest prefix reaching top_p, one uniform draw.
// Without top-k and top-p the draw walks the vocabulary in order instead.
int32_t reference_sample(const std::vector<float>& logits, const SamplerOptions& o, std::mt19937_64& rng) {
  if ((o.top_k <= 0 || static_cast<size_t>(o.top_k) >= logits.size()) && o.top_p >= 1.0f) {
    const float inv_t = 1.0f / o.temperature;
    float maxv = -std::numeric_limits<float>::infinity();
    int32_t best = -1;
    for (size_t i = 0; i < logits.size(); ++i)
      if (logits[i] > maxv) maxv = logits[i], best = static_cast<int32_t>(i);
    maxv *= inv_t;
    std::vector<float> w(logits.size());
    double sum = 0;
    for (size_t i = 0; i < w.size(); ++i)
      sum += (w[i] = std::isnan(logits[i]) ? 0.0f : std::exp(logits[i] * inv_t - maxv));
    double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
    for (size_t i = 0; i < w.size(); ++i) {
      if (w[i] == 0.0f) continue;
      r -= w[i];
      if (r <= 0) return static_cast<int32_t>(i);
    }
    return best;
  }
  std::vector<std::pair<float, int32_t>> c;
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isnan(logits[i])) c.emplace_back(logits[i] / o.temperature, static_cast<int32_t>(i));
  std::stable_sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < c.size()) c.resize(o.top_k);
  const float maxv = c[0].first;
  double sum = 0;
  for (auto& x : c) sum += (x.first = std::exp(x.first - maxv));
  if (o.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < c.size()) {
      cum += c[keep++].first / sum;
      if (cum >= o.top_p) break;
    }
    c.resize(keep);
    sum = 0;
    for (auto& x : c) sum += x.first;
  }
  double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
  for (auto& x : c) {
    r -= x.first;
    if (r <= 0) return x.second;
  }
  return c.back().second;
}

// The one-pass top-k selection picks what sorting every candidate picks
// (and with neither top-k nor top-p, the walk in vocabulary order):
// vocabularies of a few to 20k tokens with ties and NaNs, top-k of 1, 5, 40
// and all, top-p on and off, the same seeds (temperatures that divide
// exactly, so no two logits become equal).
TEST(Sampler, PicksAsThePlainReference) {
  for (int64_t n : {3, 70, 1000, 20000}) {
    std::vector<float> logits = test::random_floats(n, 40 + static_cast<uint32_t>(n), 4.0f);
    for (int64_t i = 5; i < n; i += 97) logits[i] = logits[i / 2];  // ties
    for (int64_t i = 11; i < n; i += 131) logits[i] = std::numeric_limits<float>::quiet_NaN();
    for (int k : {1, 5, 40, 0})
      for (float p : {1.0f, 0.9f})
        for (float t : {1.0f, 0.5f}) {
          const SamplerOptions o{.temperature = t, .top_k = k, .top_p = p, .seed = 7};
          Sampler s(o);
          std::mt19937_64 rng(o.seed);
          for (int draw = 0; draw < 20; ++draw)
            ASSERT_EQ(s.sample(logits), reference_sample(logits, o, rng))
                << "n " << n << " k " << k << " p " << p << " t " << t << " draw " << draw;
        }
  }
}

// Each mode draws tokens as often as their probability says.
TEST(Sampler, DrawsFollowTheDistribution) {
  const std::vector<float> logits = {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f, 2.5f, -1.0f};
  for (int k : {0, 4}) {
    const SamplerOptions o{.temperature = 0.7f, .top_k = k, .top_p = 1.0f, .seed = 3};
    std::vector<double> p(logits.size(), 0.0);
    double z = 0;
    std::vector<float> kept = logits;
    std::sort(kept.begin(), kept.end(), [](float a, float b) { return !std::isnan(a) && (std::isnan(b) || a > b); });
    const float kth = k > 0 ? kept[k - 1] : -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < logits.size(); ++i)
      if (!std::isnan(logits[i]) && logits[i] >= kth) z += (p[i] = std::exp(double(logits[i]) / o.temperature));
    Sampler s(o);
    std::vector<int> count(logits.size(), 0);
    const int draws = 40000;
    for (int d = 0; d < draws; ++d) ++count[static_cast<size_t>(s.sample(logits))];
    for (size_t i = 0; i < logits.size(); ++i)
      EXPECT_NEAR(double(count[i]) / draws, p[i] / z, 0.01) << "top-k " << k << " token " << i;
  }
}

TEST(Sampler, SamplingRejectsAllNan) {
  Sampler s({.temperature = 0.8f});
  const std::vector<float> nan(9, std::numeric_limits<float>::quiet_NaN());
  EXPECT_THROW(s.sample(nan), Error);
}

TEST(Stories260K, ConfigFromBothFiles) {
  Model a = load_bin(), b = load_gguf();
  for (const Model* m : {&a, &b}) {
    EXPECT_EQ(m->config.dim, 64);
    EXPECT_EQ(m->config.hidden_dim, 172);
    EXPECT_EQ(m->config.n_layers, 5);
    EXPECT_EQ(m->config.n_heads, 8);
    EXPECT_EQ(m->config.n_kv_heads, 4);
    EXPECT_EQ(m->config.vocab_size, 512);
  }
  EXPECT_TRUE(a.config.tied_embeddings);   // the .bin shares its classifier
  EXPECT_FALSE(b.config.tied_embeddings);  // the GGUF stores a copy as output.weight
}

TEST(Stories260K, GreedyContinuationMatchesLlama2c) {
  const std::string expected = ", there was a little girl named Lily. She loved to play outside in the park.";
  for (bool gguf : {false, true}) {
    Model m = gguf ? load_gguf() : load_bin();
    std::string out = greedy(m, "Once upon a time", 40);
    EXPECT_EQ(out.substr(0, expected.size()), expected) << (gguf ? "gguf" : "bin") << ": " << out;
  }
}

TEST(Stories260K, BatchedPrefillEqualsTokenByToken) {
  Model m = load_gguf();
  std::vector<int32_t> ids = m.tokenizer->encode("Once upon a time, there was a big dog named Max. He liked to run.", true);
  const int64_t n = ids.size(), vocab = m.config.vocab_size;
  std::vector<float> batched(n * vocab), single(n * vocab);
  Transformer a(m), b(m);
  a.forward(ids, batched.data(), 0);
  for (int64_t i = 0; i < n; ++i) b.forward(std::span<const int32_t>(&ids[i], 1), &single[i * vocab], 0);
  for (int64_t i = 0; i < n * vocab; ++i) ASSERT_NEAR(batched[i], single[i], 1e-4f) << i;
}

// A prompt longer than Transformer::kMicroBatch runs in micro-batches; an
// observer keeps the call whole. Both give the same logits, whatever row the
// scored part starts at (before, at and after a micro-batch boundary).
class NullObserver : public ActivationObserver {
 public:
  void observe(int, Site, const float*, int64_t, int64_t) override {}
};

TEST(Stories260K, MicroBatchedPrefillEqualsOneBatch) {
  Model m = load_gguf();
  const int64_t n = Transformer::kMicroBatch + 45, vocab = m.config.vocab_size;
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + 11) % vocab);
  NullObserver whole;
  for (int64_t from : {int64_t{0}, Transformer::kMicroBatch - 3, Transformer::kMicroBatch, n - 1, n}) {
    std::vector<float> chunked((n - from) * vocab + 1, NAN), one((n - from) * vocab + 1, NAN);
    Transformer a(m, static_cast<int>(n)), b(m, static_cast<int>(n));
    b.set_observer(&whole);
    a.forward(ids, chunked.data(), from);
    b.forward(ids, one.data(), from);
    EXPECT_EQ(a.pos(), n);
    for (int64_t i = 0; i < (n - from) * vocab; ++i)
      ASSERT_NEAR(chunked[i], one[i], 1e-4f) << "from " << from << " element " << i;
    EXPECT_TRUE(std::isnan(chunked[(n - from) * vocab])) << "wrote past the logits of from " << from;
  }
}

TEST(Stories260K, BinAndGgufGiveTheSamePerplexity) {
  Model a = load_bin(), b = load_gguf();
  std::string text = "Once upon a time, there was a little boy named Tim. Tim liked to play with his red ball. "
                     "One day, he kicked the ball very high and it landed in a tree. Tim was sad. ";
  std::string big;
  for (int i = 0; i < 6; ++i) big += text;
  std::vector<int32_t> ids = a.tokenizer->encode(big, true);
  ASSERT_EQ(ids, b.tokenizer->encode(big, true));
  PerplexityOptions opt;
  opt.ctx = 128;
  opt.progress = false;
  PerplexityResult ra = evaluate_perplexity(a, ids, opt), rb = evaluate_perplexity(b, ids, opt);
  EXPECT_GT(ra.tokens, 0);
  EXPECT_NEAR(ra.ppl, rb.ppl, 1e-4 * ra.ppl);
  EXPECT_LT(ra.ppl, 20.0);  // a trained model on in-domain text
  opt.ref = &a;
  PerplexityResult self = evaluate_perplexity(b, ids, opt);
  EXPECT_LT(self.kld, 1e-6);
  EXPECT_EQ(self.top1, 1.0);
}

TEST(Stories260K, ContextOverflowIsAnError) {
  Model m = load_gguf();
  Transformer tf(m, 16);
  std::vector<int32_t> ids(17, 1);
  EXPECT_THROW(tf.forward(ids, nullptr, static_cast<int64_t>(ids.size())), Error);
}

TEST(LoadModel, BadPathsGiveClearErrors) {
  auto msg = [](const std::string& path, const std::string& tok = "") -> std::string {
    try {
      LoadOptions o;
      o.tokenizer_path = tok;
      load_model(path, o);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(msg("/nonexistent/model.gguf").find("no such file"), std::string::npos);
  EXPECT_NE(msg(stories_dir() + "/stories260K.bin").find("--tokenizer"), std::string::npos);
  std::string dir = test::temp_dir();
  EXPECT_NE(msg(dir).find("config.json"), std::string::npos);
  EXPECT_NE(msg(stories_dir() + "/tok512.bin", stories_dir() + "/tok512.bin").find("tok512.bin"), std::string::npos);
}

}  // namespace
}  // namespace optiq
