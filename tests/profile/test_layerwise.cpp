// Layer-wise profiling (ProfileOptions::layerwise): the same fast profile as
// the in-memory path, whether its activations stay in memory or go to disk,
// and its cache resumes like the other's.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "backend/backend.h"
#include "model/transformer.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"
#include "profile/spill_store.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;

std::vector<std::vector<int32_t>> stories_windows(const Model& m) {
  const std::string path = test::temp_dir() + "/lw_calib.txt";
  {
    std::ifstream in(test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt", std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(path, std::ios::binary) << text.substr(0, text.size() / 2);
  }
  CalibrationOptions co;
  co.source = path;
  co.samples = 4;
  co.seq = 64;
  co.progress = false;
  return calibration_windows(m, co);
}

ProfileOptions fast(std::vector<TensorFormat> candidates, int anchor_every) {
  ProfileOptions o;
  o.method = ProfileMethod::Fast;
  o.candidates = std::move(candidates);
  o.anchor_every = anchor_every;
  o.progress = false;
  return o;
}

// Proxies bit for bit; anchors too on the CPU (the same kernels on the same
// rows, in another order of windows and layers; its fused steps compose the
// plain ones), else to 1e-9 relative. Returns the number of anchors compared.
int expect_same(const SensitivityTable& a, const SensitivityTable& b) {
  int anchors = 0, proxies = 0;
  EXPECT_EQ(a.modules.size(), b.modules.size());
  for (size_t i = 0; i < a.modules.size(); ++i) {
    const auto& ma = a.modules[i];
    EXPECT_EQ(ma.formats.size(), b.modules[i].formats.size()) << ma.module.path;
    for (const auto& [name, fa] : ma.formats) {
      const FormatSensitivity& fb = b.modules[i].formats.at(name);
      EXPECT_EQ(fa.proxy, fb.proxy) << ma.module.path << " " << name;
      EXPECT_EQ(fa.method, fb.method) << ma.module.path << " " << name;
      proxies += fa.proxy.has_value();
      EXPECT_EQ(fa.kl.has_value(), fb.kl.has_value()) << ma.module.path << " " << name;
      if (!fa.kl || !fb.kl) continue;
      ++anchors;
      if (default_backend().host_memory())
        EXPECT_EQ(*fa.kl, *fb.kl) << ma.module.path << " " << name;
      else
        EXPECT_NEAR(*fa.kl, *fb.kl, 1e-9 * std::abs(*fa.kl)) << ma.module.path << " " << name;
      EXPECT_GT(*fa.kl, 0.0) << ma.module.path << " " << name;
    }
  }
  EXPECT_GT(proxies, 0);
  return anchors;
}

TEST(ProfileLayerwise, StoriesMatchesInMemory) {
  Model m = load_model(stories());
  const auto windows = stories_windows(m);
  ProfileOptions o = fast({AffineFormat{2, 64}, AffineFormat{3, 64}, AffineFormat{4, 64}, AffineFormat{8, 64}}, 2);
  const SensitivityTable mem = profile_model(m, windows, o);
  o.layerwise = true;
  const SensitivityTable lw = profile_model(m, windows, o);
  EXPECT_EQ(expect_same(mem, lw), 6 * 3 + 2);  // 6 kinds x layers 0, 2, 4 + embedding + lm_head
  EXPECT_EQ(lw.exact_measured, mem.exact_measured);
  EXPECT_EQ(lw.proxy_measured, mem.proxy_measured);
  EXPECT_EQ(lw.measured_with.value("layerwise", false), true);
  EXPECT_FALSE(mem.measured_with.contains("layerwise"));

  // Anchors on 2 of the 4 windows, and GPTQ's rounding: still the same.
  o.anchor_windows = 2;
  o.gptq = true;
  const SensitivityTable lw2 = profile_model(m, windows, o);
  o.layerwise = false;
  const SensitivityTable mem2 = profile_model(m, windows, o);
  expect_same(mem2, lw2);

  // GPTQ held out with anchors on 3 of the 4 windows (both halves: each
  // window measured with GPTQ fitted on the other half), bit for bit too.
  o.anchor_windows = 3;
  const SensitivityTable mem3 = profile_model(m, windows, o);
  o.layerwise = true;
  const SensitivityTable lw3 = profile_model(m, windows, o);
  expect_same(mem3, lw3);
  EXPECT_EQ(lw3.measured_with.at("gptq").value("heldout", false), true);
  int gptq_anchors = 0;
  for (const auto& ms : lw3.modules)
    for (const auto& [name, fs] : ms.formats) gptq_anchors += fs.method == "gptq" && fs.kl.has_value();
  EXPECT_GT(gptq_anchors, 0);
}

// Another family: Gemma 3's quirks (tied embedding, so the embedding's anchor
// runs through the head with its matrix too; sandwich norms, soft-caps,
// sliding windows, q/k norms), on a random model.
TEST(ProfileLayerwise, TinyGemmaMatchesInMemory) {
  ModelConfig c = test::tiny("gemma3");
  c.dim = 64, c.hidden_dim = 64, c.head_dim = 16, c.embed_scale = 8.0f;  // groups of 32 divide every matrix
  c.validate("gemma3");
  Model m = test::random_model(c, 7);
  std::vector<std::vector<int32_t>> windows;
  for (uint32_t s = 0; s < 3; ++s) windows.push_back(test::random_ids(24 + 4 * static_cast<int>(s), c.vocab_size, s));
  ProfileOptions o = fast({AffineFormat{2, 32}, AffineFormat{4, 32}, AffineFormat{8, 32}}, 1);
  const SensitivityTable mem = profile_model(m, windows, o);
  o.layerwise = true;
  const SensitivityTable lw = profile_model(m, windows, o);
  EXPECT_EQ(expect_same(mem, lw), 7 * 3 + 1);  // 7 kinds x 3 layers + the (tied) embedding
}

// The weighted rounding layer-wise: every matrix as the in-memory weighted
// profile has it, except the tied embedding, whose anchor starts before the
// lm_head's inputs are seen: rounded plainly (method ""), exactly as the
// plain profile has it.
TEST(ProfileLayerwise, WeightedMatchesInMemoryButTheTiedEmbedding) {
  ModelConfig c = test::tiny("gemma3");
  c.dim = 64, c.hidden_dim = 64, c.head_dim = 16, c.embed_scale = 8.0f;
  c.validate("gemma3");
  ASSERT_TRUE(c.tied_embeddings);
  Model m = test::random_model(c, 7);
  std::vector<std::vector<int32_t>> windows;
  for (uint32_t s = 0; s < 3; ++s) windows.push_back(test::random_ids(24 + 4 * static_cast<int>(s), c.vocab_size, s));
  ProfileOptions o = fast({AffineFormat{2, 32}, AffineFormat{4, 32}}, 1);
  const SensitivityTable plain = profile_model(m, windows, o);
  o.weighted = true;
  const SensitivityTable mem = profile_model(m, windows, o);
  o.layerwise = true;
  const SensitivityTable lw = profile_model(m, windows, o);
  ASSERT_EQ(lw.modules.size(), mem.modules.size());
  int weighted = 0;
  for (size_t i = 0; i < lw.modules.size(); ++i) {
    const bool embed = lw.modules[i].module.kind == ModuleKind::Embed;
    const SensitivityTable& want = embed ? plain : mem;
    for (const auto& [name, f] : lw.modules[i].formats) {
      const FormatSensitivity& g = want.modules[i].formats.at(name);
      EXPECT_EQ(f.proxy, g.proxy) << lw.modules[i].module.path << " " << name;
      EXPECT_EQ(f.kl, g.kl) << lw.modules[i].module.path << " " << name;
      EXPECT_EQ(f.method, embed ? "" : "weighted") << lw.modules[i].module.path << " " << name;
      weighted += f.method == "weighted";
    }
  }
  EXPECT_GT(weighted, 10);
}

// With a budget of nothing, every stream and the log-probabilities (bf16 here)
// go to a temporary file: the same numbers, and nothing left behind.
TEST(ProfileLayerwise, SpilledToDiskEqualsInMemory) {
  Model m = load_model(stories());
  const auto windows = stories_windows(m);
  ProfileOptions o = fast({AffineFormat{2, 64}, AffineFormat{4, 64}}, 2);
  o.layerwise = true;
  o.store_f32_limit = 1000;  // the log-probabilities in bf16
  const SensitivityTable mem = profile_model(m, windows, o);
  const std::string dir = test::temp_dir() + "/spill";
  std::filesystem::create_directories(dir);
  o.spill_dir = dir;
  o.layerwise_memory = 1;
  const SensitivityTable disk = profile_model(m, windows, o);
  EXPECT_EQ(expect_same(mem, disk), 6 * 3 + 2);
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "the spill file is unlinked when made";
  o.spill_dir = dir + "/missing";
  EXPECT_THROW(profile_model(m, windows, o), Error);
}

TEST(ProfileLayerwise, SpillStoreRoundTrips) {
  using profile_detail::SpillStore;
  const std::vector<float> x = {1.0f, -2.5f, 3.25f, 1e-3f, 7.0f};
  for (bool bf16 : {false, true})
    for (bool disk : {false, true}) {
      SpillStore s;
      s.init(8, bf16, disk, test::temp_dir());
      EXPECT_EQ(s.on_disk(), disk);
      s.put(3, x.data(), x.size());
      std::vector<float> y(8, -1.0f);
      s.get(0, 8, y.data());
      EXPECT_EQ(y[0], 0.0f);
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[3 + i], x[i], bf16 ? 4e-3 * std::abs(x[i]) : 0.0);
      EXPECT_THROW(s.put(6, x.data(), x.size()), Error);
    }
}

// The cache: a layer-wise profile resumes from its own checkpoint or file
// (one missing anchor is measured again, alone, to the same value), but not
// from an in-memory profile's (measured_with differs).
TEST(ProfileLayerwise, CacheResumes) {
  Model m = load_model(stories());
  const auto windows = stories_windows(m);
  ProfileOptions o = fast({AffineFormat{2, 64}, AffineFormat{8, 64}}, 2);
  o.source = make_profile_source(m.path, CalibrationOptions{.source = "x", .samples = 4, .seq = 64});
  o.cache_path = test::temp_dir() + "/lw.profile.json";
  std::filesystem::remove(o.cache_path);
  const SensitivityTable mem = profile_model(m, windows, o);  // in memory, to the cache
  o.layerwise = true;
  const SensitivityTable t1 = profile_model(m, windows, o);  // not reused: measured otherwise
  EXPECT_EQ(t1.exact_measured, mem.exact_measured);
  EXPECT_EQ(t1.proxy_measured, mem.proxy_measured);
  const SensitivityTable t2 = profile_model(m, windows, o);
  EXPECT_EQ(t2.exact_measured + t2.proxy_measured, 0);

  nlohmann::json j;
  std::ifstream(o.cache_path) >> j;
  const std::string victim = "model.layers.2.self_attn.q_proj";
  auto& f = j["modules"][victim]["formats"];
  std::string anchor;
  for (auto it = f.begin(); it != f.end(); ++it)
    if (it.value().contains("kl")) anchor = it.key();
  ASSERT_FALSE(anchor.empty());
  const double old = f[anchor]["kl"].get<double>();
  f[anchor].erase("kl");
  std::ofstream(o.cache_path) << j.dump();
  const SensitivityTable t3 = profile_model(m, windows, o);
  EXPECT_EQ(t3.exact_measured, 1);
  EXPECT_EQ(t3.proxy_measured, 0);
  for (const auto& ms : t3.modules) {
    if (ms.module.path == victim) {
      EXPECT_EQ(*ms.formats.at(anchor).kl, old);
    }
  }
}

TEST(ProfileLayerwise, OnlyTheFastMethod) {
  Model m = load_model(stories());
  const auto windows = stories_windows(m);
  ProfileOptions o = fast({AffineFormat{4, 64}}, 2);
  o.layerwise = true;
  o.method = ProfileMethod::Exact;
  EXPECT_THROW(profile_model(m, windows, o), Error);
}

// The layer-range pass is forward_from_layer's arithmetic, a layer at a time.
TEST(ProfileLayerwise, ForwardLayersComposes) {
  const ModelConfig c = test::tiny("qwen3");
  Model m = test::random_model(c, 3);
  Transformer tf(m, 32);
  const auto ids = test::random_ids(20, c.vocab_size, 5);
  const int64_t n = 20;
  std::vector<float> h(static_cast<size_t>(n * c.dim)), whole(static_cast<size_t>(n * c.vocab_size)),
      parts(whole.size());
  tf.embed_rows(ids, h.data());
  tf.forward_from_layer(0, h.data(), n, whole.data(), 0);
  for (int l = 0; l < c.n_layers; ++l) {
    tf.reset();
    tf.forward_layers(l, l + 1, h.data(), n, h.data());
  }
  tf.reset();
  tf.forward_from_layer(c.n_layers, h.data(), n, parts.data(), 0);
  for (size_t i = 0; i < whole.size(); ++i) ASSERT_EQ(whole[i], parts[i]) << i;
}

}  // namespace
}  // namespace optiq
