// The decode-speed model (plan/decode_speed.h) and the solver's time bound
// (SolverOptions::max_time): the bounded plan is feasible in bytes and time,
// never worse than it needs to be by much against brute force, its lower bound
// is a true bound, and an unreachable bound is an error.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "plan/budget.h"
#include "plan/decode_speed.h"
#include "plan/solver.h"
#include "plan_test_util.h"
#include "test_util.h"

using namespace optiq;
using optiq::test::error_of;

namespace {

using optiq::test::kFormats;

std::vector<SolverItem> random_timed_items(std::mt19937& rng, int n, int k) {
  std::vector<SolverItem> items;
  std::uniform_int_distribution<int> nb(1, 40), nk(2, k);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int i = 0; i < n; ++i) {
    SolverItem it{fmt::format("m{}", i), {}};
    std::vector<TensorFormat> f = kFormats;
    std::shuffle(f.begin(), f.end(), rng);
    const int kk = nk(rng);
    for (int j = 0; j < kk; ++j) it.candidates.push_back({f[j], nb(rng), u(rng) * u(rng), 0.5 + 2 * u(rng)});
    items.push_back(std::move(it));
  }
  return items;
}

struct Best {
  double damage = INFINITY;
};

Best brute(const std::vector<SolverItem>& items, int64_t budget, double max_time) {
  Best best;
  std::function<void(size_t, int64_t, double, double)> rec = [&](size_t i, int64_t b, double d, double t) {
    if (b > budget || t > max_time) return;
    if (i == items.size()) {
      best.damage = std::min(best.damage, d);
      return;
    }
    for (const auto& c : items[i].candidates) rec(i + 1, b + c.bytes, d + c.damage, t + c.time);
  };
  rec(0, 0, 0, 0);
  return best;
}

double time_of(const std::vector<SolverItem>& items, const Solution& s) {
  double t = 0;
  for (const auto& it : items)
    for (const auto& c : it.candidates)
      if (c.format == s.formats.at(it.path)) {
        t += c.time;
        break;
      }
  return t;
}

}  // namespace

TEST(SolverTimeBound, FeasibleAndCloseToBruteForce) {
  std::mt19937 rng(11);
  double worst = 0, sum_ratio = 0;
  int counted = 0;
  for (int trial = 0; trial < 60; ++trial) {
    auto items = random_timed_items(rng, 5, 4);
    int64_t min_b = 0, max_b = 0;
    double min_t = 0, max_t = 0;
    for (const auto& it : items) {
      int64_t lo = INT64_MAX, hi = 0;
      double tlo = INFINITY, thi = 0;
      for (const auto& c : it.candidates) {
        lo = std::min(lo, c.bytes), hi = std::max(hi, c.bytes);
        tlo = std::min(tlo, c.time), thi = std::max(thi, c.time);
      }
      min_b += lo, max_b += hi, min_t += tlo, max_t += thi;
    }
    const int64_t budget = (min_b + max_b) / 2;
    const double max_time = min_t + 0.4 * (max_t - min_t);
    const Best b = brute(items, budget, max_time);
    SolverOptions o;
    o.max_time = max_time;
    if (!std::isfinite(b.damage)) {
      // Nothing meets both limits: the solver says so.
      EXPECT_THROW(solve(items, budget, o), Error);
      continue;
    }
    const Solution s = solve(items, budget, o);
    EXPECT_LE(s.bytes, budget);
    EXPECT_LE(time_of(items, s), max_time * (1 + 1e-12));
    EXPECT_NEAR(s.time, time_of(items, s), 1e-9);
    EXPECT_GE(s.damage, b.damage - 1e-9);
    EXPECT_LE(s.lower_bound, b.damage + 1e-9) << "the certificate must bound the true optimum";
    EXPECT_NEAR(s.gap, s.damage - s.lower_bound, 1e-12);
    const double ratio = (s.damage + 1e-3) / (b.damage + 1e-3);
    worst = std::max(worst, ratio);
    sum_ratio += ratio;
    ++counted;
  }
  ASSERT_GT(counted, 20);
  // A Lagrangian heuristic over two constraints is not exact; on these small
  // instances it stays close on average.
  EXPECT_LT(sum_ratio / counted, 1.25) << "worst " << worst;
}

TEST(SolverTimeBound, LooseBoundChangesNothing) {
  std::mt19937 rng(3);
  auto items = random_timed_items(rng, 8, 5);
  const Solution plain = solve(items, 150);
  SolverOptions o;
  o.max_time = 1e9;
  const Solution bounded = solve(items, 150, o);
  EXPECT_EQ(plain.formats, bounded.formats);
  EXPECT_DOUBLE_EQ(plain.damage, bounded.damage);
  EXPECT_EQ(bounded.mu, 0);
}

TEST(SolverTimeBound, UnreachableBoundIsAnError) {
  std::mt19937 rng(5);
  auto items = random_timed_items(rng, 6, 4);
  SolverOptions o;
  o.max_time = 1e-3;  // every candidate takes at least 0.5
  const std::string e = error_of([&] { solve(items, 1000, o); });
  EXPECT_NE(e.find("time bound"), std::string::npos) << e;
  EXPECT_NE(e.find("fastest"), std::string::npos) << e;
}

TEST(DecodeSpeed, StorageTypesFollowTheGgufFile) {
  using S = DecodeSpeedModel;
  EXPECT_EQ(S::storage_type(TensorFormat(), 576), "F16");  // SmolLM2's width
  EXPECT_EQ(S::storage_type(GgmlFormat{DType::Q4_K}, 1024), "Q4_K");
  EXPECT_EQ(S::storage_type(GgmlFormat{DType::Q4_K}, 576), "Q5_0");  // llama.cpp's fallback
  EXPECT_EQ(S::storage_type(GgmlFormat{DType::IQ4_XS}, 640), "IQ4_NL");
  EXPECT_EQ(S::storage_type(AffineFormat{4, 32}, 576), "Q4_1");
  EXPECT_EQ(S::storage_type(AffineFormat{8, 32}, 576), "Q8_0");
  EXPECT_FALSE(S::storage_type(AffineFormat{4, 64}, 576).has_value());
}

TEST(DecodeSpeed, CostsWhatADecodeStepReads) {
  const DecodeSpeedModel& s = llamacpp_cpu_speed_model();
  for (const char* t : {"F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q5_1", "Q5_0", "Q4_1", "Q4_0",
                        "IQ4_NL", "IQ4_XS"})
    EXPECT_GT(s.ns_per_weight.count(t) ? s.ns_per_weight.at(t) : 0.0, 0.0) << t;
  const ModelConfig untied = test::plan_test_config(2, false), tied = test::plan_test_config(2, true);
  const TensorFormat q8 = GgmlFormat{DType::Q8_0};
  for (const auto& m : quantizable_modules(untied)) {
    const double ns = s.module_ns(untied, m, q8);
    if (m.kind == ModuleKind::Embed) EXPECT_EQ(ns, 0) << "an untied embedding is a lookup";
    else EXPECT_DOUBLE_EQ(ns, s.ns_per_weight.at("Q8_0") * double(m.numel())) << m.path;
  }
  for (const auto& m : quantizable_modules(tied)) {
    if (m.kind == ModuleKind::Embed) {
      EXPECT_GT(s.module_ns(tied, m, q8), 0) << "tied: it is the output product";
    }
  }
  const PrecisionMap all_q8 = PrecisionMap::uniform(untied, q8);
  double sum = 0;
  for (const auto& m : quantizable_modules(untied)) sum += s.module_ns(untied, m, q8);
  EXPECT_DOUBLE_EQ(s.plan_ns(untied, all_q8.formats), sum);
  // A format with no GGUF type has no cost: a clear error, not a guess.
  const ModuleInfo q = quantizable_modules(untied)[1];
  const std::string e = error_of([&] { s.module_ns(untied, q, AffineFormat{3, 64}); });
  EXPECT_NE(e.find(q.path), std::string::npos) << e;
  EXPECT_NE(e.find("GGUF"), std::string::npos) << e;
}

TEST(DecodeSpeed, LlamaCppMixesAndTheReferenceOfABudget) {
  const ModelConfig c = test::plan_test_config(16, true);
  const PrecisionMap q4km = llamacpp_mix_plan(c, "Q4_K_M");
  // 384-wide rows: Q4_K falls back to Q5_0 and the tied output's Q6_K to Q8_0;
  // the 1024-wide down projection keeps k-quants: Q6_K in the first layers.
  EXPECT_EQ(q4km.format_of("model.embed_tokens"), TensorFormat(GgmlFormat{DType::Q8_0}));
  EXPECT_EQ(q4km.format_of("model.layers.0.mlp.down_proj"), TensorFormat(GgmlFormat{DType::Q6_K}));
  EXPECT_EQ(q4km.format_of("model.layers.5.mlp.down_proj"), TensorFormat(GgmlFormat{DType::Q4_K}));
  EXPECT_EQ(q4km.format_of("model.layers.5.self_attn.q_proj"), TensorFormat(GgmlFormat{DType::Q5_0}));
  EXPECT_NE(error_of([&] { llamacpp_mix_plan(c, "Q7_K"); }).find("Q4_K_M"), std::string::npos);

  const DecodeSpeedModel& s = llamacpp_cpu_speed_model();
  const int64_t b_q4 = plan_bytes(c, q4km), b_q5 = plan_bytes(c, llamacpp_mix_plan(c, "Q5_K_M"));
  const double t_q4 = s.plan_ns(c, q4km.formats), t_q5 = s.plan_ns(c, llamacpp_mix_plan(c, "Q5_K_M").formats);
  ASSERT_LT(b_q4, b_q5);
  // At a mix's size: that mix. Between two: the line between them, so the
  // bound moves smoothly with the budget.
  const SpeedReference at_q4 = llamacpp_speed_reference(c, b_q4, s);
  EXPECT_EQ(at_q4.mix, "Q4_K_M");
  EXPECT_DOUBLE_EQ(at_q4.ns, t_q4);
  const SpeedReference mid = llamacpp_speed_reference(c, (b_q4 + b_q5) / 2, s);
  EXPECT_EQ(mid.mix, "Q4_K_M..Q5_K_M");
  EXPECT_NEAR(mid.ns, (t_q4 + t_q5) / 2, 1e-6 * t_q5);
  const SpeedReference below = llamacpp_speed_reference(c, b_q4 - 1, s);
  EXPECT_LT(std::abs(below.ns - t_q4), 1e-3 * t_q4) << below.mix << ": one byte less is nearly the same bound";
  EXPECT_EQ(llamacpp_speed_reference(c, 1, s).mix, "Q2_K") << "below every mix: the smallest";
  EXPECT_EQ(llamacpp_speed_reference(c, int64_t{1} << 40, s).mix, "Q8_0") << "above every mix: the largest";
}

TEST(DecodeSpeed, SpeedTableFileErrors) {
  const std::string dir = test::temp_dir();
  EXPECT_NE(error_of([&] { load_speed_model(dir + "/missing.json"); }).find("llamacpp_speed_table.py"),
            std::string::npos);
  auto write = [&](const std::string& text) {
    std::ofstream(dir + "/t.json") << text;
    return dir + "/t.json";
  };
  EXPECT_NE(error_of([&] { load_speed_model(write("{not json")); }).find("not JSON"), std::string::npos);
  EXPECT_NE(error_of([&] { load_speed_model(write("{\"x\": 1}")); }).find("ns_per_weight"), std::string::npos);
  EXPECT_NE(error_of([&] { load_speed_model(write("{\"ns_per_weight\": {\"Q4_K\": -1}}")); }).find("Q4_K"),
            std::string::npos);
  const DecodeSpeedModel m = load_speed_model(write("{\"runtime\": \"llamacpp-cpu\", \"ns_per_weight\": {\"Q4_K\": 0.5}}"));
  EXPECT_DOUBLE_EQ(m.ns_per_weight.at("Q4_K"), 0.5);
}
