// Sensitivity profiling on stories260K with a few short windows: exact KL and
// fast proxies behave, the cache resumes, and profile -> plan -> quantize stays
// within budget.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/perplexity.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "plan/budget.h"
#include "plan/select.h"
#include "plan/solver.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;

// The first half of the TinyStories sample (calibration) as a temp file.
const std::string& calib_file() {
  static const std::string path = [] {
    std::ifstream in(test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt", std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string p = test::temp_dir() + "/calib.txt";
    std::ofstream(p, std::ios::binary) << text.substr(0, text.size() / 2);
    return p;
  }();
  return path;
}

CalibrationOptions calib_opts() {
  CalibrationOptions co;
  co.source = calib_file();
  co.samples = 4;
  co.seq = 64;
  co.progress = false;
  return co;
}

ProfileOptions opts(ProfileMethod m, const Model& model) {
  ProfileOptions o;
  o.method = m;
  o.candidates = {AffineFormat{2, 64}, AffineFormat{3, 64}, AffineFormat{4, 64}, AffineFormat{8, 64}};
  o.progress = false;
  o.source = make_profile_source(model.path, calib_opts());
  return o;
}

const FormatSensitivity& at(const ModuleSensitivity& ms, int bits) {
  return ms.formats.at(affine_format_name({bits, 64}));
}

// Fuzz finding (tests/fuzz/fuzz_profile_json): "size": 118446744073709551615185376
// (a float to nlohmann) went through get<int64_t>(), undefined behaviour
// (UBSan). Now one line naming the file and the key.
TEST(Profile, OutOfRangeIntegersAreRefusedByName) {
  const ModelConfig c = test::tiny("llama");
  const std::string path = test::temp_dir() + "/bad.profile.json";
  auto message = [&](const std::string& model, const std::string& calibration) {
    std::ofstream(path) << R"({"format": "optiq-profile", "candidates": ["4x64"], "model": )" << model
                        << R"(, "calibration": )" << calibration << R"(, "modules": {}})";
    try {
      (void)SensitivityTable::read(path, c);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      return m;
    }
    return std::string("accepted");
  };
  auto expect_has = [](const std::string& m, const std::string& part) {
    EXPECT_NE(m.find(part), std::string::npos) << m;
  };
  const std::string big = message(R"({"size": 118446744073709551615185376})", "{}");
  expect_has(big, "size = 1.18446744");
  expect_has(big, "e+26 is not an integer in range");
  expect_has(message("{}", R"({"seq": 4294967360})"), "seq = 4294967360 is out of range");
  expect_has(message("{}", R"({"seed": -1})"), "seed = -1 is out of range");
  EXPECT_EQ(message(R"({"size": 1185376, "mtime": 1})", R"({"seed": 18446744073709551615})"), "accepted");
  // A candidate whose bits overflow int (std::out_of_range from std::stoi escaped).
  std::ofstream(path) << R"({"format": "optiq-profile", "candidates": ["affine-q42949672964-g64"], "model": {},
                             "calibration": {}, "modules": {}})";
  try {
    (void)SensitivityTable::read(path, c);
    ADD_FAILURE() << "accepted an out-of-range candidate";
  } catch (const Error& e) {
    expect_has(e.what(), path + ": candidates: ");
    expect_has(e.what(), "affine-q42949672964-g64");
  }
}

TEST(Profile, ParseCandidates) {
  EXPECT_EQ(parse_candidates("2,3,4,5,6,8x32,64,128").size(), 18u);
  auto v = parse_candidates("q4g64, 8, affine-q3-g32");
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[1], (AffineFormat{8, 64}));
  EXPECT_EQ(v[2], (AffineFormat{3, 32}));
  EXPECT_THROW(parse_candidates("7x64"), Error);
  EXPECT_THROW(parse_candidates("q4g48"), Error);
  EXPECT_THROW(parse_candidates(""), Error);
  EXPECT_THROW(parse_profile_method("slow"), Error);
}

TEST(Profile, Spearman) {
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0, 1e-12);
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0, 1e-12);
  EXPECT_NEAR(spearman({1, 2, 3, 4, 5}, {1, 3, 2, 5, 4}), 0.8, 1e-12);
}

TEST(Profile, ExactKlGrowsAsBitsFallAndModelIsRestored) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  Transformer tf(m, 64);
  const std::vector<float> before = tf.forward_last(windows[0]);
  SensitivityTable t = profile_model(m, windows, opts(ProfileMethod::Exact, m));
  tf.reset();
  EXPECT_EQ(tf.forward_last(windows[0]), before);  // every Linear swapped back
  int checked = 0;
  for (const auto& ms : t.modules) {
    if (ms.formats.empty()) continue;  // down_proj: 172 inputs, no group fits
    const double k2 = *at(ms, 2).kl, k3 = *at(ms, 3).kl, k4 = *at(ms, 4).kl, k8 = *at(ms, 8).kl;
    EXPECT_LT(k8, 2e-4) << ms.module.path;
    EXPECT_GT(k2, k4) << ms.module.path;
    EXPECT_GT(k3, k8) << ms.module.path;
    EXPECT_GT(k4, k8) << ms.module.path;
    EXPECT_GE(k8, 0.0);
    ++checked;
  }
  EXPECT_GT(checked, 25);
  EXPECT_EQ(t.exact_measured, t.count_exact());
  EXPECT_EQ(t.proxy_measured, 0);
}

TEST(Profile, FastProxiesMonotoneAndCorrelateWithExact) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  SensitivityTable t = profile_model(m, windows, opts(ProfileMethod::Both, m));
  for (const auto& ms : t.modules) {
    if (ms.formats.empty()) continue;
    EXPECT_EQ(ms.anchor, "affine-q3-g64");
    const double p2 = *at(ms, 2).proxy, p3 = *at(ms, 3).proxy, p4 = *at(ms, 4).proxy, p8 = *at(ms, 8).proxy;
    EXPECT_GT(p2, p3) << ms.module.path;
    EXPECT_GT(p3, p4) << ms.module.path;
    EXPECT_GT(p4, p8) << ms.module.path;
    EXPECT_GT(p8, 0.0) << ms.module.path;
    // Anchored: at the anchor, the fast estimate is the exact KL.
    EXPECT_NEAR(*at(ms, 3).kl_fast, *at(ms, 3).kl, 1e-12);
  }
  auto rho = t.spearman_fast_exact();
  ASSERT_TRUE(rho.has_value());
  EXPECT_GT(*rho, 0.9);
}

TEST(Profile, FastUsesFewExactAnchors) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.anchor_every = 2;  // layers 0, 2, 4 (and the last) of 5
  SensitivityTable t = profile_model(m, windows, o);
  int exact = 0;
  for (const auto& ms : t.modules)
    for (const auto& [name, fs] : ms.formats) {
      exact += fs.kl.has_value();
      EXPECT_TRUE(fs.kl_fast.has_value()) << ms.module.path << " " << name;
      if (fs.kl) {
        EXPECT_EQ(name, ms.anchor);
        EXPECT_TRUE(ms.module.layer < 0 || ms.module.layer % 2 == 0) << ms.module.path;
      }
    }
  // 6 kinds with a fitting format x 3 anchor layers + embedding + lm_head
  EXPECT_EQ(exact, 6 * 3 + 2);
  EXPECT_NO_THROW(t.damage(DamageSource::Fast));
  EXPECT_THROW(t.damage(DamageSource::Exact), Error);
}

// Proxy-only modules are measured a block of rows at a time: blocks of a row
// or two give the proxies of the whole matrix.
TEST(Profile, ProxiesInRowBlocksEqualWholeMatrices) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.anchor_every = 4;
  const SensitivityTable whole = profile_model(m, windows, o);
  o.proxy_block_bytes = 300;  // 1-2 rows of 64..172 floats
  const SensitivityTable blocks = profile_model(m, windows, o);
  int compared = 0;
  for (size_t i = 0; i < whole.modules.size(); ++i)
    for (const auto& [name, fs] : whole.modules[i].formats) {
      const FormatSensitivity& b = blocks.modules[i].formats.at(name);
      ASSERT_TRUE(fs.proxy && b.proxy) << whole.modules[i].module.path << " " << name;
      EXPECT_NEAR(*b.proxy, *fs.proxy, 1e-6 * *fs.proxy) << whole.modules[i].module.path << " " << name;
      EXPECT_EQ(fs.kl, b.kl);
      ++compared;
    }
  EXPECT_GT(compared, 100);
}

TEST(Profile, AnchorsOnFewerWindows) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());  // 4 windows
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.anchor_every = 2;
  const SensitivityTable all = profile_model(m, windows, o);
  o.anchor_windows = 4;  // as many as there are: the same measurements
  const SensitivityTable same = profile_model(m, windows, o);
  o.anchor_windows = 2;
  const SensitivityTable two = profile_model(m, windows, o);
  int anchors = 0, differ = 0;
  for (size_t i = 0; i < all.modules.size(); ++i)
    for (const auto& [name, fs] : all.modules[i].formats) {
      const FormatSensitivity& s = same.modules[i].formats.at(name);
      const FormatSensitivity& t = two.modules[i].formats.at(name);
      EXPECT_EQ(fs.proxy, t.proxy) << "proxies always use every window";
      EXPECT_EQ(fs.kl, s.kl);
      ASSERT_EQ(fs.kl.has_value(), t.kl.has_value());
      if (!fs.kl) continue;
      ++anchors;
      EXPECT_GT(*t.kl, 0.0);
      differ += *t.kl != *fs.kl;
    }
  EXPECT_GT(anchors, 0);
  EXPECT_GT(differ, 0) << "half of the windows should give other anchor values";
}

// GPTQ as a measured rounding: where it wins, its (smaller) proxy and the
// method are recorded, the anchors measure it, and the cache keeps it. (Its
// input statistics are kept in two halves by window, for the held-out proxy:
// the other roundings' proxies are their sums, equal to the plain profile's
// up to fp rounding.)
TEST(Profile, FastMeasuresGptqWhereItWins) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  const SensitivityTable plain = profile_model(m, windows, o);
  o.gptq = true;
  o.cache_path = test::temp_dir() + "/g.profile.json";
  const SensitivityTable g = profile_model(m, windows, o);
  EXPECT_EQ(g.rounding, "search,gptq");
  EXPECT_EQ(g.measured_with.at("gptq").value("heldout", false), true);
  EXPECT_EQ(g.measured_with.at("gptq").value("head", false), true) << "a profile without the head's GPTQ is redone";
  int won = 0, compared = 0, head_won = 0;
  for (size_t i = 0; i < g.modules.size(); ++i)
    for (const auto& [name, fs] : g.modules[i].formats) {
      const FormatSensitivity& p = plain.modules[i].formats.at(name);
      if (!fs.proxy || !p.proxy) continue;
      ++compared;
      EXPECT_LE(*fs.proxy, *p.proxy * (1 + 1e-6)) << g.modules[i].module.path << " " << name;
      if (fs.method == "gptq") {
        ++won;
        const ModuleKind k = g.modules[i].module.kind;
        EXPECT_NE(k, ModuleKind::Embed) << "stories260K's embedding is untied: a lookup, no inputs for GPTQ";
        head_won += k == ModuleKind::LmHead;
        EXPECT_LT(*fs.proxy, *p.proxy) << g.modules[i].module.path << " " << name;
      } else {
        EXPECT_NEAR(*fs.proxy, *p.proxy, 1e-6 * *p.proxy) << g.modules[i].module.path << " " << name;
      }
    }
  EXPECT_GT(won, compared / 4) << "GPTQ should lower many layer matrices' proxies, held out too";
  EXPECT_GT(head_won, 0) << "GPTQ of the lm_head from the head's inputs (the final norm's output)";
  const SensitivityTable back = SensitivityTable::read(o.cache_path, m.config);
  EXPECT_EQ(back.rounding, "search,gptq");
  for (const auto& [name, fs] : g.modules[3].formats) {
    EXPECT_EQ(back.modules[3].formats.at(name).method, fs.method) << name;
    EXPECT_EQ(back.modules[3].formats.at(name).proxy, fs.proxy) << name;
  }
  o.method = ProfileMethod::Exact;
  EXPECT_THROW(profile_model(m, windows, o), Error);
}

// A tied embedding (Gemma's): GPTQ fitted to its head role (the final
// norm's outputs), its proxy the held-out head error plus the lookup role's
// error as for the other roundings. The proxy adds two roles in different
// units, so the anchor decides: where GPTQ's proxy wins, the anchor is
// measured for both roundings, and GPTQ stays only if its KL is lower, else
// every format of the module goes back to the plain rounding (the plain
// profile's entries). On this random model, with the layers' dampening
// (0.01, not GptqOptions::tied_embed_damp), GPTQ's proxy wins (its head
// error is lower) but its KL is higher (0.059 against 0.042 at q3 g32: the
// lookup rows' larger errors cost more; GPTQ of an untied lm_head on the
// same model lowers the KL, 0.0104 -> 0.0074), so the plain rounding stays.
TEST(Profile, GptqOfATiedEmbeddingsHeadRoleIsCheckedByItsAnchor) {
  ModelConfig c = test::tiny("gemma3");
  c.dim = 64, c.hidden_dim = 64, c.head_dim = 16, c.embed_scale = 8.0f;  // groups of 32 divide every matrix
  c.validate("gemma3");
  ASSERT_TRUE(c.tied_embeddings);
  Model m = test::random_model(c, 11);
  std::vector<std::vector<int32_t>> windows;
  for (uint32_t s = 0; s < 16; ++s) windows.push_back(test::random_ids(60, c.vocab_size, 20 + s));
  ProfileOptions o;
  o.method = ProfileMethod::Fast;
  o.candidates = {AffineFormat{2, 32}, AffineFormat{3, 32}, AffineFormat{4, 32}, AffineFormat{8, 32}};
  o.anchor_every = 1;
  o.progress = false;
  const SensitivityTable plain = profile_model(m, windows, o);
  o.gptq = true;
  o.gptq_options.tied_embed_damp = 0.01;
  const SensitivityTable g = profile_model(m, windows, o);
  EXPECT_EQ(g.measured_with.at("gptq").value("tied_embed_damp", 0.0), 0.01);
  EXPECT_EQ(g.exact_measured, plain.exact_measured) << "the plain anchor beside GPTQ's is not an entry";
  ASSERT_EQ(g.modules[0].module.kind, ModuleKind::Embed);
  int kept = 0, anchors = 0;
  for (const auto& [name, fs] : g.modules[0].formats) {
    const FormatSensitivity& p = plain.modules[0].formats.at(name);
    ASSERT_TRUE(fs.proxy && p.proxy) << name;
    EXPECT_LE(*fs.proxy, *p.proxy * (1 + 1e-6)) << name;
    if (fs.method == "gptq") {
      EXPECT_LT(*fs.proxy, *p.proxy) << name;
      if (fs.kl && p.kl) {
        EXPECT_LT(*fs.kl, *p.kl) << name << ": GPTQ stays only where its anchor is lower";
      }
      continue;
    }
    ++kept;
    // The plain rounding (its head statistics summed in two halves here).
    EXPECT_NEAR(*fs.proxy, *p.proxy, 1e-6 * *p.proxy) << name;
    EXPECT_EQ(fs.kl, p.kl) << name;
    anchors += fs.kl.has_value();
  }
  EXPECT_EQ(kept, 4) << "the anchor sends the embedding back to the plain rounding";
  EXPECT_EQ(anchors, 1);
  // The layers' GPTQ is not affected.
  int layers_gptq = 0;
  for (const auto& ms : g.modules)
    for (const auto& [name, fs] : ms.formats) layers_gptq += ms.module.layer >= 0 && fs.method == "gptq";
  EXPECT_GT(layers_gptq, 0);
}

// GPTQ's held-out proxy (the default) against its in-sample one on the same
// windows: GPTQ fitted on one half of the windows and measured on the other
// (and the converse) is never measured below GPTQ fitted and measured on all
// of them, so a tensor that took GPTQ in-sample has a proxy at least as large
// held out, and fewer tensors take it; the other roundings' proxies are the
// same numbers (the same halves). Its anchors are held out too: other KLs.
TEST(Profile, GptqHeldOutProxyIsNoSmallerThanInSample) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ASSERT_GE(windows.size(), 2u);
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.gptq = true;
  o.gptq_heldout = false;
  const SensitivityTable in_sample = profile_model(m, windows, o);
  EXPECT_EQ(in_sample.measured_with.at("gptq").value("heldout", true), false);
  o.gptq_heldout = true;
  const SensitivityTable held = profile_model(m, windows, o);
  EXPECT_NE(held.measured_with, in_sample.measured_with) << "an in-sample cache is not reused";
  int gptq_in = 0, gptq_held = 0, higher = 0, anchors_differ = 0;
  for (size_t i = 0; i < held.modules.size(); ++i)
    for (const auto& [name, fh] : held.modules[i].formats) {
      const FormatSensitivity& fi = in_sample.modules[i].formats.at(name);
      const std::string where = held.modules[i].module.path + " " + name;
      ASSERT_TRUE(fh.proxy && fi.proxy) << where;
      gptq_in += fi.method == "gptq";
      gptq_held += fh.method == "gptq";
      if (fi.method == "gptq") {
        EXPECT_GE(*fh.proxy, *fi.proxy) << where;
        higher += *fh.proxy > *fi.proxy;
      } else if (fh.method != "gptq") {
        EXPECT_EQ(*fh.proxy, *fi.proxy) << where;  // the same rounding on the same statistics
      }
      if (fh.method == "gptq" && fh.kl && fi.kl) anchors_differ += *fh.kl != *fi.kl;
    }
  EXPECT_GT(gptq_in, 0);
  EXPECT_GT(higher, 0);
  EXPECT_LE(gptq_held, gptq_in);
  EXPECT_GT(anchors_differ, 0) << "a GPTQ anchor measures GPTQ fitted on the other half's windows";
}

// One calibration window has no held-out half: GPTQ's proxy is measured
// in-sample, with a warning, and measured_with says so.
TEST(Profile, GptqOnOneWindowIsInSampleWithAWarning) {
  Model m = load_model(stories());
  const std::vector<std::vector<int32_t>> one = {calibration_windows(m, calib_opts()).at(0)};
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.gptq = true;
  o.gptq_heldout = false;
  const SensitivityTable in_sample = profile_model(m, one, o);
  o.gptq_heldout = true;
  testing::internal::CaptureStderr();
  const SensitivityTable t = profile_model(m, one, o);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("no held-out half"), std::string::npos) << err;
  EXPECT_EQ(t.measured_with.at("gptq").value("heldout", true), false);
  int gptq = 0;
  for (size_t i = 0; i < t.modules.size(); ++i)
    for (const auto& [name, fs] : t.modules[i].formats) {
      const FormatSensitivity& fi = in_sample.modules[i].formats.at(name);
      EXPECT_EQ(fs.proxy, fi.proxy) << t.modules[i].module.path << " " << name;
      EXPECT_EQ(fs.method, fi.method);
      EXPECT_EQ(fs.kl, fi.kl);
      gptq += fs.method == "gptq";
    }
  EXPECT_GT(gptq, 0);
}

// The weighted rounding (--methods weighted): every matrix with inputs to
// weigh is measured with the search weighted by their energies, recorded per
// entry; weighting lowers the proxies (the output error on those inputs)
// overall, and a plain profile's cache is not reused for it.
TEST(Profile, FastMeasuresTheWeightedRounding) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ProfileOptions o = opts(ProfileMethod::Fast, m);
  o.cache_path = test::temp_dir() + "/w.profile.json";
  const SensitivityTable plain = profile_model(m, windows, o);
  o.weighted = true;
  testing::internal::CaptureStderr();
  const SensitivityTable w = profile_model(m, windows, o);
  EXPECT_NE(testing::internal::GetCapturedStderr().find("rounding search"), std::string::npos);
  EXPECT_EQ(w.rounding, "weighted");
  double sum_plain = 0, sum_weighted = 0;
  int weighted = 0, anchors_moved = 0;
  for (size_t i = 0; i < w.modules.size(); ++i) {
    const ModuleInfo& mod = w.modules[i].module;
    const bool has_inputs = mod.kind != ModuleKind::Embed || m.config.tied_embeddings;
    for (const auto& [name, fs] : w.modules[i].formats) {
      const FormatSensitivity& p = plain.modules[i].formats.at(name);
      if (!fs.proxy) continue;
      EXPECT_EQ(fs.method, has_inputs ? "weighted" : "") << mod.path << " " << name;
      weighted += fs.method == "weighted";
      sum_plain += *p.proxy, sum_weighted += *fs.proxy;
      if (fs.kl && p.kl && *fs.kl != *p.kl) ++anchors_moved;
    }
  }
  EXPECT_GT(weighted, 20);
  EXPECT_LT(sum_weighted, sum_plain);
  EXPECT_GT(anchors_moved, 0) << "the anchors measure the weighted rounding too";
}

TEST(Profile, CacheResumesOnlyMissingEntries) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  ProfileOptions o = opts(ProfileMethod::Exact, m);
  o.candidates = {AffineFormat{2, 64}, AffineFormat{8, 64}};
  o.cache_path = test::temp_dir() + "/s.profile.json";
  SensitivityTable t1 = profile_model(m, windows, o);
  EXPECT_GT(t1.exact_measured, 20);

  SensitivityTable t2 = profile_model(m, windows, o);  // everything cached
  EXPECT_EQ(t2.exact_measured, 0);

  nlohmann::json j;
  std::ifstream(o.cache_path) >> j;
  const std::string victim = "model.layers.2.self_attn.v_proj";
  const double old = j["modules"][victim]["formats"]["affine-q2-g64"]["kl"].get<double>();
  j["modules"][victim]["formats"]["affine-q2-g64"].erase("kl");
  std::ofstream(o.cache_path) << j.dump();
  SensitivityTable t3 = profile_model(m, windows, o);
  EXPECT_EQ(t3.exact_measured, 1);
  for (const auto& ms : t3.modules)
    if (ms.module.path == victim) {
      EXPECT_NEAR(*at(ms, 2).kl, old, 1e-9 + 1e-6 * old);
    }

  // Other calibration settings: the cache is not reused.
  o.source.calib.samples = 5;
  SensitivityTable t4 = profile_model(m, windows, o);
  EXPECT_EQ(t4.exact_measured, t1.exact_measured);

  // Round trip through the file.
  SensitivityTable r = SensitivityTable::read(o.cache_path, m.config);
  EXPECT_EQ(r.count_exact(), t4.count_exact());
}

// stories260K profiled with the fast method, and the formats a plan may use.
struct ProfiledStories {
  Model model;
  std::vector<std::vector<int32_t>> windows;
  SensitivityTable table;
  std::vector<TensorFormat> formats;
};

ProfiledStories profile_stories_fast() {
  ProfiledStories p{load_model(stories()), {}, {}, {}};
  p.windows = calibration_windows(p.model, calib_opts());
  const ProfileOptions o = opts(ProfileMethod::Fast, p.model);
  p.table = profile_model(p.model, p.windows, o);
  p.formats.assign(o.candidates.begin(), o.candidates.end());
  p.formats.push_back(std::nullopt);
  return p;
}

Budget budget_at(const Model& m, const std::vector<TensorFormat>& formats, const std::string& bpw) {
  BudgetOptions bo;
  bo.bpw = bpw;
  return resolve_budget(bo, m.config, formats);
}

TEST(Profile, ProfilePlanQuantizeWithinBudget) {
  auto [m, windows, t, formats] = profile_stories_fast();
  const Budget b = budget_at(m, formats, "6");
  const auto dmg = t.damage();
  std::vector<SolverItem> items;
  for (const auto& mod : quantizable_modules(m.config)) items.push_back(make_item(mod, dmg.at(mod.path), formats));
  SolverOptions so;
  so.fixed_bytes = fixed_weight_bytes(m.config);
  Solution s = solve(items, b.weight_bytes, so);
  PrecisionMap map = s.precision_map();
  EXPECT_LE(plan_bytes(m.config, map), b.weight_bytes);
  EXPECT_GT(s.damage, 0.0);
  quantize_model(m, map, {.progress = false});
  for (const auto& mod : quantizable_modules(m.config)) {
    const auto& f = map.formats.at(mod.path);
    EXPECT_EQ(module_linear(m.weights, mod).format(), f ? affine_format_name(*f) : std::string("F32"));
  }
}

// Measured selection: every variant fits the budget, the best is the one
// with the least measured KL, and the model comes back unchanged.
TEST(Profile, MeasuredSelectionPicksTheBestAndRestoresTheModel) {
  auto [m, windows, t, formats] = profile_stories_fast();
  const Budget b = budget_at(m, formats, "5.5");
  SolverOptions so;
  so.fixed_bytes = fixed_weight_bytes(m.config);
  auto variants = plan_variants(m.config, t.damage(), formats, b.weight_bytes, so);
  ASSERT_GE(variants.size(), 3u);
  EXPECT_EQ(variants.front().name, "optiq");
  for (const auto& v : variants) {
    EXPECT_LE(v.bytes, b.weight_bytes) << v.name;
    EXPECT_DOUBLE_EQ(v.bits_spread, plan_bits_spread(m.config, v.map)) << v.name;
  }
  // The spread: 0 when every module has the same bits per weight (all float
  // here: stories' 172-wide matrices fit no group), more with one at 4 bits.
  PrecisionMap all_float;
  for (const auto& mod : quantizable_modules(m.config)) all_float.formats[mod.path] = std::nullopt;
  EXPECT_DOUBLE_EQ(plan_bits_spread(m.config, all_float), 0.0);
  PrecisionMap one_quantized = all_float;
  for (const auto& mod : quantizable_modules(m.config))
    if (mod.cols % 64 == 0) {
      one_quantized.formats[mod.path] = AffineFormat{4, 64};
      break;
    }
  EXPECT_GT(plan_bits_spread(m.config, one_quantized), 0.5);

  Transformer tf(m);
  const std::vector<int32_t> probe = {1, 403, 407, 261, 378};
  const std::vector<float> before = tf.forward_last(probe);
  size_t best = 0;
  {
    PlanMeasurer measurer(m, windows);
    best = measure_variants(measurer, variants, false);
    // Measuring restores the model, and a plan measures the same twice (tensors cached).
    EXPECT_DOUBLE_EQ(measurer.measure(variants[best].map).first, variants[best].measured);
  }
  size_t lowest = 0;
  for (size_t i = 0; i < variants.size(); ++i) {
    const PlanVariant& v = variants[i];
    EXPECT_GT(v.measured, 0.0) << v.name;
    ASSERT_EQ(v.measured_windows.size(), windows.size()) << v.name;
    double mean = 0;
    for (double w : v.measured_windows) mean += w / static_cast<double>(windows.size());
    EXPECT_NEAR(mean, v.measured, 1e-9 * v.measured) << v.name;  // equal windows: mean of means
    if (v.measured < variants[lowest].measured) lowest = i;
  }
  // The pick is the lowest or lies within two paired standard errors of it, spreading its bits less.
  EXPECT_EQ(best, choose_measured_variant(variants));
  if (best != lowest) {
    EXPECT_LE(variants[best].measured - variants[lowest].measured,
              2 * paired_stderr(variants[best].measured_windows, variants[lowest].measured_windows));
    EXPECT_LT(variants[best].bits_spread, variants[lowest].bits_spread);
  }
  tf.reset();
  EXPECT_EQ(tf.forward_last(probe), before);
}

// The one-standard-error rule: a plan that wins by less than two paired
// standard errors gives way to the one whose bits spread less; a clear win
// stands; windows that do not pair leave the lowest mean.
TEST(Profile, MeasuredSelectionKeepsTheEvenPlanWithinThePairedNoise) {
  auto variant = [](std::string name, double spread, std::vector<double> windows) {
    PlanVariant v;
    v.name = std::move(name);
    v.bits_spread = spread;
    v.measured_windows = std::move(windows);
    for (double w : v.measured_windows) v.measured += w / static_cast<double>(v.measured_windows.size());
    v.measured += 1;  // measured starts at -1 (not measured)
    return v;
  };
  // Large window-to-window variation, small and noisy paired differences.
  const std::vector<double> base = {0.50, 0.90, 0.62, 0.71, 0.44, 0.83, 0.58, 0.66};
  const std::vector<double> wiggle = {0.02, -0.015, 0.01, -0.02, 0.015, -0.005, 0.02, -0.01};
  std::vector<double> concentrated = base, even = base, clearly_worse = base;
  for (size_t i = 0; i < base.size(); ++i) {
    concentrated[i] -= 0.002;
    even[i] += wiggle[i];
    clearly_worse[i] += 0.05 + wiggle[i] / 4;
  }
  std::vector<PlanVariant> v = {variant("optiq", 0.9, concentrated), variant("uniform-ish", 0.1, even),
                                variant("worse but even", 0.0, clearly_worse)};
  ASSERT_LT(v[0].measured, v[1].measured);
  EXPECT_LE(v[1].measured - v[0].measured, 2 * paired_stderr(v[1].measured_windows, v[0].measured_windows));
  EXPECT_EQ(choose_measured_variant(v), 1u);
  // With a tighter rule (z = 0.1) the lowest stands.
  EXPECT_EQ(choose_measured_variant(v, 0.1), 0u);
  // A clear win stands: every window better by 0.03.
  for (auto& w : v[0].measured_windows) w -= 0.03;
  v[0].measured -= 0.03;
  EXPECT_EQ(choose_measured_variant(v), 0u);
  // Unpaired (another window count): no tie, the lowest mean wins.
  v[0].measured_windows.pop_back();
  v[0].measured = v[1].measured - 1e-6;
  EXPECT_EQ(choose_measured_variant(v), 0u);
  // Independent per-window draws give the plain standard error back.
  EXPECT_NEAR(paired_stderr({1, 2, 3}, {0, 0, 0}), std::sqrt(1.0 / 3.0), 1e-12);
  EXPECT_EQ(paired_stderr({1, 2}, {1}), 0.0);
}

// Measured selection quantizes the tensors a plan names "gptq" with GPTQ from
// the Gram sums it is given and those named "weighted" with the weighted
// search, exactly as the export does: its measurement is the evaluation of
// the model quantize_model makes with those statistics, and (on the
// calibration windows they came from) better than plain rounding.
TEST(Profile, MeasuredSelectionQuantizesAsTheExport) {
  Model m = load_model(stories());
  const auto windows = calibration_windows(m, calib_opts());
  const GramMap grams = collect_grams(m, windows, false);
  const ImportanceMap importance = collect_importance(m, windows, false);
  PrecisionMap map;  // GPTQ for the layers' attention, the weighted search elsewhere
  for (const auto& mod : quantizable_modules(m.config)) {
    const TensorFormat f = AffineFormat{3, 32};
    map.formats[mod.path] = format_fits(f, mod.cols) ? f : TensorFormat{};
    if (!map.formats[mod.path]) continue;
    if (mod.layer >= 0 && mod.path.find("self_attn") != std::string::npos) map.methods[mod.path] = "gptq";
    else if (importance.count(mod.path)) map.methods[mod.path] = "weighted";
  }
  ASSERT_GT(map.methods.size(), 10u);
  double measured = 0, rounded = 0;
  {
    PlanMeasurer measurer(m, windows, std::nullopt, CalibrationStats{.grams = grams, .importance = importance, .cross = {}});
    measured = measurer.measure(map).first;
    PlanMeasurer without(m, windows);  // no statistics: rounded plainly, as the export without --calib
    rounded = without.measure(map).first;
  }
  EXPECT_LT(measured, rounded);

  Model q = load_model(stories());
  quantize_model(q, map, {.importance = &importance, .grams = &grams, .gptq_all = false, .progress = false});
  std::vector<int32_t> tokens;
  for (const auto& w : windows) tokens.insert(tokens.end(), w.begin(), w.end());
  PerplexityOptions po;
  po.ctx = static_cast<int>(windows.front().size());
  po.chunks = static_cast<int>(windows.size());
  po.ref = &m;
  po.progress = false;
  const PerplexityResult e = evaluate_perplexity(q, tokens, po);
  EXPECT_NEAR(measured, e.kld, 1e-4 * e.kld);
}

using test::RunResult;
RunResult run(const std::string& args, bool merge_stderr = true) { return test::run_optiq(args, merge_stderr); }

TEST(ProfileCli, AutoWarnsWhenTextIsCalibration) {
  if (!test::file_exists(std::string(OPTIQ_BINARY_DIR) + "/optiq")) GTEST_SKIP() << "optiq binary not built";
  const std::string dir = test::temp_dir();
  RunResult r = run(fmt::format(
      "auto {} --calib {} --text {} --calib-samples 2 --calib-seq 32 --candidates 4,8x64 --bpw 8 -o {}/out "
      "--eval-ctx 32 --chunks 2",
      stories(), calib_file(), calib_file(), dir));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("warning: --text"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("predicted"), std::string::npos) << r.out;
  EXPECT_TRUE(test::file_exists(dir + "/out/config.json"));
  EXPECT_TRUE(test::file_exists(dir + "/out.plan.json"));
  EXPECT_TRUE(test::file_exists(dir + "/out.profile.json"));

  RunResult e = run(fmt::format("plan {} --profile {}/out.profile.json --bpw 1 -o {}/p.json", stories(), dir, dir));
  EXPECT_EQ(e.code, 1);
  EXPECT_NE(e.out.find("optiq: error: --bpw 1"), std::string::npos) << e.out;
}

}  // namespace
}  // namespace optiq
