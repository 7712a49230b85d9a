#include <gtest/gtest.h>

#include <random>
#include <set>

#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "plan_test_util.h"

using namespace optiq;

namespace {

std::set<int> more_bits_layers(int n) {
  std::set<int> s;
  for (int i = 0; i < n; ++i)
    if (llama_use_more_bits(i, n)) s.insert(i);
  return s;
}

int bits(const PrecisionMap& p, const std::string& path) {
  const auto& f = p.formats.at(path);
  return f ? f->bits : 16;
}

std::string layer(int i, const char* rest) { return "model.layers." + std::to_string(i) + "." + rest; }

}  // namespace

TEST(Baselines, UseMoreBitsLayers) {
  // n = 30: n/8 = 3, 7n/8 = 26; (i - 3) % 3 == 2 -> 5, 8, ..., 23.
  EXPECT_EQ(more_bits_layers(30), (std::set<int>{0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}));
  // n = 18: n/8 = 2, 7n/8 = 15; (i - 2) % 3 == 2 -> 4, 7, 10, 13 (16 is in the tail anyway).
  EXPECT_EQ(more_bits_layers(18), (std::set<int>{0, 1, 4, 7, 10, 13, 15, 16, 17}));
  // n = 32 (Llama 7B/8B): the commonly quoted 16 of 32.
  EXPECT_EQ(more_bits_layers(32).size(), 16u);
}

TEST(Baselines, Q4KM) {
  for (int n : {30, 18}) {
    const ModelConfig c = test::plan_test_config(n);
    const PrecisionMap p = kquant_plan(c, KQuantMix::Q4_K_M, 64);
    const auto more = more_bits_layers(n);
    EXPECT_EQ(bits(p, "lm_head"), 6);
    EXPECT_EQ(bits(p, "model.embed_tokens"), 4);
    std::set<int> v6, d6;
    for (int i = 0; i < n; ++i) {
      if (bits(p, layer(i, "self_attn.v_proj")) == 6) v6.insert(i);
      else EXPECT_EQ(bits(p, layer(i, "self_attn.v_proj")), 4);
      if (bits(p, layer(i, "mlp.down_proj")) == 6) d6.insert(i);
      else EXPECT_EQ(bits(p, layer(i, "mlp.down_proj")), 4);
      for (const char* k : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"})
        EXPECT_EQ(bits(p, layer(i, k)), 4);
    }
    EXPECT_EQ(v6, more);
    EXPECT_EQ(d6, more);
    for (const auto& [path, f] : p.formats) EXPECT_EQ(f->group_size, 64);
  }
  // Tied embeddings: the embedding is the output tensor -> 6 bits.
  const PrecisionMap t = kquant_plan(test::plan_test_config(18, true), KQuantMix::Q4_K_M);
  EXPECT_EQ(bits(t, "model.embed_tokens"), 6);
  EXPECT_EQ(t.formats.count("lm_head"), 0u);
}

TEST(Baselines, Q3KMAndQ5KM) {
  const int n = 30;
  const ModelConfig c = test::plan_test_config(n);
  const PrecisionMap q3 = kquant_plan(c, KQuantMix::Q3_K_M, 32);
  EXPECT_EQ(bits(q3, "lm_head"), 6);
  EXPECT_EQ(bits(q3, "model.embed_tokens"), 3);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(bits(q3, layer(i, "self_attn.v_proj")), i < 2 ? 5 : 4);
    EXPECT_EQ(bits(q3, layer(i, "mlp.down_proj")), i < n / 16 ? 5 : 4);  // n/16 = 1
    EXPECT_EQ(bits(q3, layer(i, "self_attn.o_proj")), 4);
    EXPECT_EQ(bits(q3, layer(i, "self_attn.q_proj")), 3);
    EXPECT_EQ(bits(q3, layer(i, "mlp.up_proj")), 3);
  }
  const PrecisionMap q5 = kquant_plan(c, KQuantMix::Q5_K_M, 128);
  const auto more = more_bits_layers(n);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(bits(q5, layer(i, "self_attn.v_proj")), more.count(i) ? 6 : 5);
    EXPECT_EQ(bits(q5, layer(i, "mlp.down_proj")), more.count(i) ? 6 : 5);
    EXPECT_EQ(bits(q5, layer(i, "mlp.gate_proj")), 5);
  }
  // Sizes are ordered Q3 < Q4 < Q5 at one group size.
  EXPECT_LT(plan_bytes(c, kquant_plan(c, KQuantMix::Q3_K_M)), plan_bytes(c, kquant_plan(c, KQuantMix::Q4_K_M)));
  EXPECT_LT(plan_bytes(c, kquant_plan(c, KQuantMix::Q4_K_M)), plan_bytes(c, kquant_plan(c, KQuantMix::Q5_K_M)));
  // Group size that does not divide a module leaves it in float (like uniform).
  ModelConfig odd = c;
  odd.hidden_dim = 1056;  // divisible by 32, not by 64
  const PrecisionMap po = kquant_plan(odd, KQuantMix::Q4_K_M, 64);
  EXPECT_EQ(po.formats.at(layer(0, "mlp.down_proj")), std::nullopt);
  EXPECT_EQ(bits(po, layer(0, "mlp.up_proj")), 4);
}

TEST(Baselines, KQuantForBudget) {
  const ModelConfig c = test::plan_test_config(18);
  const int64_t q4km = plan_bytes(c, kquant_plan(c, KQuantMix::Q4_K_M, 64));
  BaselinePlan b = kquant_plan_for_budget(c, q4km);
  EXPECT_EQ(b.bytes, q4km);  // exactly representable: the largest is the budget itself
  EXPECT_EQ(plan_bytes(c, b.map), b.bytes);
  b = kquant_plan_for_budget(c, q4km - 1);
  EXPECT_LT(b.bytes, q4km);
  // Largest within budget: nothing among the family lies in (b.bytes, budget].
  for (int64_t budget : {q4km * 7 / 10, q4km, q4km * 13 / 10}) {
    b = kquant_plan_for_budget(c, budget);
    EXPECT_LE(b.bytes, budget);
    for (int g : {32, 64, 128})
      for (int lo : {2, 3, 4, 5, 6, 8})
        for (int hi : {2, 3, 4, 5, 6, 8})
          if (hi >= lo) {
            const int64_t x = plan_bytes(c, kquant_shape_plan(c, lo, hi, g));
            EXPECT_FALSE(x > b.bytes && x <= budget) << lo << "/" << hi << " g" << g;
          }
  }
  EXPECT_THROW(kquant_plan_for_budget(c, 1000), Error);
}

TEST(Baselines, Uniform) {
  const ModelConfig c = test::plan_test_config(6);
  const PrecisionMap p = uniform_plan(c, {3, 128});
  for (const auto& [path, f] : p.formats) EXPECT_EQ(f, (TensorFormat{AffineFormat{3, 128}})) << path;
}

TEST(Baselines, DynamicMeetsBudget) {
  const ModelConfig c = test::plan_test_config(30);
  const auto mods = quantizable_modules(c);
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> u(0, 1);
  std::map<std::string, double> scores;
  for (const auto& m : mods) scores[m.path] = u(rng);
  const AffineFormat lo{4, 64}, hi{8, 64};
  const int64_t all_lo = plan_bytes(c, PrecisionMap::uniform(c, lo));
  const int64_t all_hi = plan_bytes(c, PrecisionMap::uniform(c, hi));
  for (double frac : {0.0, 0.1, 0.37, 0.5, 0.9, 1.0}) {
    const int64_t budget = all_lo + int64_t(frac * double(all_hi - all_lo));
    const BaselinePlan b = dynamic_plan(c, scores, budget, lo, hi);
    EXPECT_EQ(plan_bytes(c, b.map), b.bytes);
    EXPECT_LE(b.bytes, budget);
    // Threshold property: every high module scores above every low one, and
    // the most sensitive low module would not fit.
    double min_high = INFINITY, max_low = -INFINITY;
    std::string next;
    for (const auto& m : mods) {
      const double s = scores[m.path];
      if (b.map.formats.at(m.path) == TensorFormat{hi}) min_high = std::min(min_high, s);
      else {
        EXPECT_EQ(b.map.formats.at(m.path), TensorFormat{lo});
        if (s > max_low) max_low = s, next = m.path;
      }
    }
    EXPECT_GT(min_high, max_low);
    if (!next.empty()) {
      const ModuleInfo& m = *std::find_if(mods.begin(), mods.end(), [&](const ModuleInfo& x) { return x.path == next; });
      EXPECT_GT(b.bytes + module_bytes(m, hi) - module_bytes(m, lo), budget);
    }
    if (frac == 1.0) {
      EXPECT_EQ(b.bytes, all_hi);
    }
  }
  // Missing scores rank lowest; NaN and too-small budgets are errors.
  std::map<std::string, double> partial = {{"lm_head", 1.0}};
  const BaselinePlan b = dynamic_plan(c, partial, all_lo + module_bytes(mods.back(), hi), lo, hi);
  EXPECT_EQ(b.map.formats.at("lm_head"), TensorFormat{hi});
  EXPECT_THROW(dynamic_plan(c, scores, all_lo - 1, lo, hi), Error);
  scores["lm_head"] = NAN;
  EXPECT_THROW(dynamic_plan(c, scores, all_hi, lo, hi), Error);
}

TEST(Baselines, FromSpec) {
  const ModelConfig c = test::plan_test_config(18);
  const std::map<std::string, std::map<std::string, double>> no_damage;
  const int64_t big = int64_t{1} << 40;
  // A named mix equals kquant_plan; an explicit shape equals kquant_shape_plan.
  BaselinePlan q4 = baseline_plan_from_spec(c, "kquant:Q4_K_M", big, no_damage);
  EXPECT_EQ(q4.map.formats, kquant_plan(c, KQuantMix::Q4_K_M, 64).formats);
  EXPECT_EQ(q4.bytes, plan_bytes(c, q4.map));
  BaselinePlan shape = baseline_plan_from_spec(c, "kquant:b3u5/g32", big, no_damage);
  EXPECT_EQ(shape.map.formats, kquant_shape_plan(c, 3, 5, 32).formats);
  BaselinePlan u = baseline_plan_from_spec(c, "uniform:q3g32", big, no_damage);
  EXPECT_EQ(u.map.formats, uniform_plan(c, {3, 32}).formats);
  // Over budget, malformed specs and bad levels are errors, not silent fallbacks.
  EXPECT_THROW(baseline_plan_from_spec(c, "kquant:Q4_K_M", q4.bytes - 1, no_damage), Error);
  EXPECT_NO_THROW(baseline_plan_from_spec(c, "kquant:Q4_K_M", q4.bytes, no_damage));
  for (const char* bad : {"kquant:Q9_K_M", "kquant:b5u3", "kquant:b3u5/g48", "dynamic:q3g64", "dynamic:float/q4",
                          "uniform:float", "fancy"})
    EXPECT_THROW(baseline_plan_from_spec(c, bad, big, no_damage), Error) << bad;
  // Explicit dynamic levels: with a budget halfway between all-low and all-high,
  // the most damaged modules (at the low format) go high.
  std::map<std::string, std::map<std::string, double>> damage;
  const auto modules = quantizable_modules(c);
  for (size_t i = 0; i < modules.size(); ++i) damage[modules[i].path]["affine-q3-g64"] = double(i);
  const int64_t lo = plan_bytes(c, uniform_plan(c, {3, 64})), hi = plan_bytes(c, uniform_plan(c, {5, 64}));
  BaselinePlan d = baseline_plan_from_spec(c, "dynamic:q3g64/q5g64", (lo + hi) / 2, damage);
  EXPECT_LE(d.bytes, (lo + hi) / 2);
  EXPECT_EQ(d.map.formats.at(modules.back().path)->bits, 5);
  EXPECT_EQ(d.map.formats.at(modules.front().path)->bits, 3);
}
