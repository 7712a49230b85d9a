#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "plan/budget.h"
#include "plan/solver.h"
#include "plan_test_util.h"

using namespace optiq;
using optiq::test::error_of;

namespace {

using optiq::test::kFormats;

// Random instance: n items, up to k candidates each (distinct formats), small byte counts.
std::vector<SolverItem> random_items(std::mt19937& rng, int n, int k, int max_bytes = 60) {
  std::vector<SolverItem> items;
  std::uniform_int_distribution<int> nb(1, max_bytes), nk(1, k);
  std::uniform_real_distribution<double> dmg(0.0, 1.0);
  for (int i = 0; i < n; ++i) {
    SolverItem it{fmt::format("m{}", i), {}};
    std::vector<TensorFormat> f = kFormats;
    std::shuffle(f.begin(), f.end(), rng);
    const int kk = nk(rng);
    for (int j = 0; j < kk; ++j) it.candidates.push_back({f[j], nb(rng), dmg(rng) * dmg(rng)});
    items.push_back(std::move(it));
  }
  return items;
}

struct Brute {
  double damage = INFINITY;
  bool feasible = false;
};

// Exhaustive optimum; `ok` filters allowed per-item candidates, `consistent` whole assignments.
Brute brute_force(const std::vector<SolverItem>& items, int64_t budget, int64_t fixed,
                  std::function<bool(int, const Candidate&)> ok = nullptr,
                  std::function<bool(const std::vector<int>&)> consistent = nullptr) {
  Brute best;
  std::vector<int> pick(items.size(), 0);
  std::function<void(size_t, int64_t, double)> rec = [&](size_t i, int64_t bytes, double dmg) {
    if (bytes > budget) return;
    if (i == items.size()) {
      if (consistent && !consistent(pick)) return;
      if (dmg < best.damage) best = {dmg, true};
      return;
    }
    for (size_t j = 0; j < items[i].candidates.size(); ++j) {
      const auto& c = items[i].candidates[j];
      if (ok && !ok(int(i), c)) continue;
      pick[i] = int(j);
      rec(i + 1, bytes + c.bytes, dmg + c.damage);
    }
  };
  rec(0, fixed, 0);
  return best;
}

// Checks a solution against the items: formats exist, bytes and damage add up.
void check_solution(const std::vector<SolverItem>& items, const Solution& s, int64_t budget, int64_t fixed) {
  int64_t bytes = fixed;
  double dmg = 0;
  ASSERT_EQ(s.formats.size(), items.size());
  for (const auto& it : items) {
    const TensorFormat f = s.formats.at(it.path);
    const Candidate* best = nullptr;
    for (const auto& c : it.candidates)
      if (c.format == f && (!best || c.damage < best->damage)) best = &c;
    ASSERT_NE(best, nullptr) << it.path;
    bytes += best->bytes;
    dmg += best->damage;
  }
  EXPECT_EQ(bytes, s.bytes);
  EXPECT_NEAR(dmg, s.damage, 1e-9);
  EXPECT_LE(s.bytes, budget);
  EXPECT_GE(s.gap, 0);
  EXPECT_NEAR(s.gap, s.damage - s.lower_bound, 1e-12);
}

}  // namespace

TEST(Solver, MatchesBruteForce) {
  std::mt19937 rng(7);
  int exact_count = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + trial % 6;
    auto items = random_items(rng, n, 5);
    const int64_t fixed = trial % 3 == 0 ? 17 : 0;
    int64_t lo = fixed, hi = fixed;
    for (const auto& it : items) {
      int64_t a = INT64_MAX, b = 0;
      for (const auto& c : it.candidates) a = std::min(a, c.bytes), b = std::max(b, c.bytes);
      lo += a;
      hi += b;
    }
    const int64_t budget = lo + int64_t(rng() % uint32_t(hi - lo + 1));
    SolverOptions o;
    o.fixed_bytes = fixed;
    const Solution s = solve(items, budget, o);
    check_solution(items, s, budget, fixed);
    const Brute b = brute_force(items, budget, fixed);
    ASSERT_TRUE(b.feasible);
    EXPECT_NEAR(s.damage, b.damage, 1e-9) << "trial " << trial << " method " << s.method;
    EXPECT_LE(s.lower_bound, b.damage + 1e-9);
    EXPECT_TRUE(s.exact);
    exact_count += s.damage - b.damage < 1e-9;
  }
  EXPECT_EQ(exact_count, 300);
}

TEST(Solver, CoarseDpStaysWithinCertifiedGap) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    auto items = random_items(rng, 6, 6, 1000);
    int64_t lo = 0, hi = 0;
    for (const auto& it : items) {
      int64_t a = INT64_MAX, b = 0;
      for (const auto& c : it.candidates) a = std::min(a, c.bytes), b = std::max(b, c.bytes);
      lo += a, hi += b;
    }
    const int64_t budget = lo + int64_t(rng() % uint32_t(hi - lo + 1));
    SolverOptions o;
    o.max_dp_bins = 1 + trial % 9;  // deliberately coarse
    const Solution s = solve(items, budget, o);
    check_solution(items, s, budget, 0);
    const Brute b = brute_force(items, budget, 0);
    EXPECT_GE(s.damage, b.damage - 1e-9);
    EXPECT_LE(s.lower_bound, b.damage + 1e-9);  // certified: optimum within [lower_bound, damage]
  }
}

TEST(Solver, Unconstrained) {
  std::vector<SolverItem> items = {{"a", {{AffineFormat{4, 64}, 10, 0.5}, {std::nullopt, 40, 0.0}}},
                                   {"b", {{AffineFormat{4, 64}, 10, 0.5}, {AffineFormat{8, 64}, 20, 0.1}}}};
  const Solution s = solve(items, 1000);
  EXPECT_EQ(s.method, "unconstrained");
  EXPECT_EQ(s.formats.at("a"), std::nullopt);
  EXPECT_EQ(s.formats.at("b"), (TensorFormat{AffineFormat{8, 64}}));
  EXPECT_EQ(s.gap, 0);
  EXPECT_TRUE(s.exact);
}

TEST(Solver, Infeasible) {
  std::vector<SolverItem> items = {{"a", {{AffineFormat{4, 64}, 10, 0.5}, {std::nullopt, 40, 0.0}}}};
  SolverOptions o;
  o.fixed_bytes = 5;
  const std::string e = error_of([&] { solve(items, 14, o); });
  EXPECT_NE(e.find("smallest achievable"), std::string::npos) << e;
  EXPECT_NE(e.find("15 bytes"), std::string::npos) << e;
  EXPECT_NO_THROW(solve(items, 15, o));
  // Bad inputs.
  EXPECT_NE(error_of([] { solve({}, 100); }), "");
  EXPECT_NE(error_of([] { solve({{"a", {}}}, 100); }).find("no candidate"), std::string::npos);
  EXPECT_NE(error_of([] { solve({{"a", {{std::nullopt, 4, -1.0}}}}, 100); }).find("damage"), std::string::npos);
  EXPECT_NE(error_of([] { solve({{"a", {{std::nullopt, 4, NAN}}}}, 100); }).find("damage"), std::string::npos);
  EXPECT_NE(error_of([] { solve({{"a", {{std::nullopt, 0, 1.0}}}}, 100); }).find("bytes"), std::string::npos);
  EXPECT_NE(error_of([] { solve({{"a", {{std::nullopt, 4, 1.0}}}, {"a", {{std::nullopt, 4, 1.0}}}}, 100); })
                .find("twice"),
            std::string::npos);
}

TEST(Solver, ParsePinsAndFormats) {
  EXPECT_EQ(parse_format_spec("8"), (TensorFormat{AffineFormat{8, 64}}));
  EXPECT_EQ(parse_format_spec("q8g32"), (TensorFormat{AffineFormat{8, 32}}));
  EXPECT_EQ(parse_format_spec("Q4"), (TensorFormat{AffineFormat{4, 64}}));
  EXPECT_EQ(parse_format_spec("q4", 128), (TensorFormat{AffineFormat{4, 128}}));
  EXPECT_EQ(parse_format_spec("affine-q3-g32"), (TensorFormat{AffineFormat{3, 32}}));
  EXPECT_EQ(parse_format_spec("float"), std::nullopt);
  EXPECT_EQ(parse_format_spec("fp16"), std::nullopt);
  for (const char* bad : {"7", "q4g48", "", "q", "float16x", "g64"}) EXPECT_THROW(parse_format_spec(bad), Error) << bad;
  Pin p = parse_pin("lm_head=8");
  EXPECT_EQ(p.pattern, "lm_head");
  EXPECT_EQ(p.format, (TensorFormat{AffineFormat{8, 64}}));
  p = parse_pin(R"(layers\.(0|1)\.mlp=float)");
  EXPECT_EQ(p.pattern, R"(layers\.(0|1)\.mlp)");
  EXPECT_EQ(p.format, std::nullopt);
  for (const char* bad : {"lm_head", "=8", "lm_head=", "lm_head=9", "(=8"}) EXPECT_THROW(parse_pin(bad), Error) << bad;
}

namespace {

// Items for a small model from a synthetic damage model (more bits, less damage).
std::vector<SolverItem> model_items(const ModelConfig& c, std::mt19937& rng) {
  std::vector<SolverItem> items;
  std::uniform_real_distribution<double> u(0.2, 2.0);
  for (const auto& m : quantizable_modules(c)) {
    const double s = u(rng) * (m.kind == ModuleKind::VProj || m.kind == ModuleKind::DownProj ? 3.0 : 1.0);
    std::map<std::string, double> dmg;
    for (const auto& f : kFormats)
      if (f) dmg[tensor_format_name(f)] = s * std::exp2(-2.0 * f->bits) * (1 + f->group_size / 256.0) * u(rng);
    items.push_back(make_item(m, dmg, kFormats));
  }
  return items;
}

}  // namespace

TEST(Solver, PinsMinBitsTies) {
  const ModelConfig c = test::plan_test_config(4);
  std::mt19937 rng(3);
  auto items = model_items(c, rng);
  const auto mods = quantizable_modules(c);
  int64_t q4 = 0;
  for (const auto& m : mods) q4 += module_bytes(m, AffineFormat{4, 64});
  const int64_t budget = q4 + fixed_weight_bytes(c);
  SolverOptions o;
  o.fixed_bytes = fixed_weight_bytes(c);
  o.min_bits = 3;
  o.pins = {parse_pin("lm_head=8"), parse_pin(R"(layers\.0\.mlp\.down_proj=q6g32)"), parse_pin("embed=float")};
  o.tie_groups = tie_qkv_groups(mods);
  ASSERT_EQ(o.tie_groups.size(), 4u);
  const Solution s = solve(items, budget, o);
  check_solution(items, s, budget, o.fixed_bytes);
  EXPECT_EQ(s.formats.at("lm_head"), (TensorFormat{AffineFormat{8, 64}}));
  EXPECT_EQ(s.formats.at("model.layers.0.mlp.down_proj"), (TensorFormat{AffineFormat{6, 32}}));
  EXPECT_EQ(s.formats.at("model.embed_tokens"), std::nullopt);
  for (const auto& [path, f] : s.formats)
    if (f) {
      EXPECT_GE(f->bits, 3) << path;
    }
  for (int l = 0; l < 4; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    EXPECT_EQ(s.formats.at(p + "q_proj"), s.formats.at(p + "k_proj"));
    EXPECT_EQ(s.formats.at(p + "q_proj"), s.formats.at(p + "v_proj"));
  }
  EXPECT_LE(s.gap, 1e-3 * s.damage);

  // Pin to a format the module lacks, or matching nothing.
  SolverOptions bad = o;
  bad.pins = {parse_pin("lm_head=q4g32")};
  items.back().candidates.erase(
      std::remove_if(items.back().candidates.begin(), items.back().candidates.end(),
                     [](const Candidate& x) { return x.format == TensorFormat{AffineFormat{4, 32}}; }),
      items.back().candidates.end());
  EXPECT_NE(error_of([&] { solve(items, budget, bad); }).find("no candidate"), std::string::npos);
  bad.pins = {parse_pin("nonexistent=4")};
  EXPECT_NE(error_of([&] { solve(items, budget, bad); }).find("matches no module"), std::string::npos);
  // Tie group with contradictory pins; unknown path.
  bad = o;
  bad.pins = {parse_pin(R"(layers\.1\.self_attn\.q_proj=4)"), parse_pin(R"(layers\.1\.self_attn\.k_proj=8)")};
  EXPECT_NE(error_of([&] { solve(items, budget, bad); }).find("share no allowed format"), std::string::npos);
  bad = o;
  bad.tie_groups.push_back({"nope"});
  EXPECT_NE(error_of([&] { solve(items, budget, bad); }).find("nope"), std::string::npos);
  // min_bits too high for a module that has only low-bit candidates.
  EXPECT_NE(error_of([] {
              SolverOptions m;
              m.min_bits = 5;
              solve({{"a", {{AffineFormat{4, 64}, 10, 0.5}}}}, 100, m);
            }).find("min_bits"),
            std::string::npos);
}

TEST(Solver, ConstraintsMatchBruteForce) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 150; ++trial) {
    auto items = random_items(rng, 5, 6);
    // Give items 0..2 a shared set of formats so they can be tied.
    for (int i = 1; i < 3; ++i) {
      items[i].candidates = items[0].candidates;
      for (auto& c : items[i].candidates) c.bytes = 1 + int64_t(rng() % 60), c.damage = double(rng() % 1000) / 1000;
    }
    SolverOptions o;
    o.min_bits = 3;
    o.tie_groups = {{"m0", "m1", "m2"}};
    o.pins = {Pin{"^m4$", items[4].candidates[0].format, "m4"}};
    auto ok = [&](int i, const Candidate& c) {
      if (i == 4) return c.format == items[4].candidates[0].format;
      return !c.format || c.format->bits >= 3;
    };
    auto consistent = [&](const std::vector<int>& pick) {
      return items[0].candidates[pick[0]].format == items[1].candidates[pick[1]].format &&
             items[0].candidates[pick[0]].format == items[2].candidates[pick[2]].format;
    };
    // Budget: something between the smallest and largest feasible.
    int64_t lo = INT64_MAX, hi = 0;
    std::vector<int> pick(items.size());
    std::function<void(size_t, int64_t)> rec = [&](size_t i, int64_t b) {
      if (i == items.size()) {
        if (consistent(pick)) lo = std::min(lo, b), hi = std::max(hi, b);
        return;
      }
      for (size_t j = 0; j < items[i].candidates.size(); ++j)
        if (ok(int(i), items[i].candidates[j])) pick[i] = int(j), rec(i + 1, b + items[i].candidates[j].bytes);
    };
    rec(0, 0);
    if (lo == INT64_MAX) {
      EXPECT_THROW(solve(items, 1 << 20, o), Error);
      continue;
    }
    const int64_t budget = lo + int64_t(rng() % uint32_t(hi - lo + 1));
    const Solution s = solve(items, budget, o);
    check_solution(items, s, budget, 0);
    const Brute b = brute_force(items, budget, 0, ok, consistent);
    ASSERT_TRUE(b.feasible);
    EXPECT_NEAR(s.damage, b.damage, 1e-9) << trial;
    EXPECT_THROW(solve(items, lo - 1, o), Error);
  }
}

TEST(Solver, FastOnModelSizedInstances) {
  // ~300 modules x 18 candidates (+ float), realistic byte counts (a 7B-like shape).
  ModelConfig c;
  c.dim = 4096;
  c.n_layers = 42;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_dim = 14336;
  c.vocab_size = 128256;
  std::mt19937 rng(9);
  const auto items = model_items(c, rng);
  ASSERT_GE(items.size(), 290u);
  SolverOptions o;
  o.fixed_bytes = fixed_weight_bytes(c);
  for (double bpw : {2.6, 3.5, 4.25, 5.0, 6.5}) {
    const int64_t budget = int64_t(bpw * double(total_weight_params(c)) / 8);
    const auto t0 = std::chrono::steady_clock::now();
    const Solution s = solve(items, budget, o);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    check_solution(items, s, budget, o.fixed_bytes);
#ifndef OPTIQ_SANITIZED  // a sanitizer's instrumentation is not the speed this bounds
    EXPECT_LT(sec, 1.0) << bpw;
#endif
    EXPECT_LE(s.gap, 1e-3 * s.damage) << bpw;
    std::printf("bpw %.2f: %.1f ms, %s, damage %.6g, gap %.3g (%.2e rel), slack %lld bytes\n", bpw, sec * 1e3,
                s.method.c_str(), s.damage, s.gap, s.gap / s.damage, (long long)(budget - s.bytes));
  }
}

TEST(Solver, ParetoFrontier) {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 40; ++trial) {
    auto items = random_items(rng, 4, 5, 40);
    const auto pts = solve_pareto(items, {}, 100000);
    ASSERT_FALSE(pts.empty());
    EXPECT_TRUE(pts.front().on_hull);
    EXPECT_TRUE(pts.back().on_hull);
    for (size_t i = 0; i < pts.size(); ++i) {
      if (i) {
        EXPECT_GT(pts[i].bytes, pts[i - 1].bytes);
        EXPECT_LT(pts[i].damage, pts[i - 1].damage);
      }
      // With one-byte bins every point is the exact optimum at its size.
      EXPECT_NEAR(pts[i].damage, brute_force(items, pts[i].bytes, 0).damage, 1e-9);
      ASSERT_EQ(pts[i].formats.size(), items.size());
    }
    // And every size's optimum is on the frontier: the best point at or below it.
    for (int64_t b = pts.front().bytes; b <= pts.back().bytes; b += 3) {
      double best = INFINITY;
      for (const auto& p : pts)
        if (p.bytes <= b) best = std::min(best, p.damage);
      EXPECT_NEAR(best, brute_force(items, b, 0).damage, 1e-9);
    }
  }
  // Model-sized: bounded number of points, fast.
  const ModelConfig c = test::plan_test_config(30);
  const auto items = model_items(c, rng);
  const auto t0 = std::chrono::steady_clock::now();
  const auto pts = solve_pareto(items, {}, 2000);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  EXPECT_GT(pts.size(), 100u);
  EXPECT_LT(pts.size(), 2000u + 4000u);
}
