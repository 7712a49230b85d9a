#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "plan/plan_json.h"
#include "plan_test_util.h"
#include "test_util.h"

using namespace optiq;

PlanMetadata meta(std::string budget, std::optional<double> predicted, std::string method,
                  std::optional<double> lower = std::nullopt, std::optional<double> gap = std::nullopt) {
  PlanMetadata m;
  m.budget = std::move(budget);
  m.predicted_kl = predicted;
  m.method = std::move(method);
  m.lower_bound_kl = lower;
  m.gap_kl = gap;
  return m;
}

TEST(PlanJson, MetadataAndRoundTrip) {
  const ModelConfig c = test::plan_test_config(18);
  const PrecisionMap p = kquant_plan(c, KQuantMix::Q4_K_M, 32);
  const nlohmann::json j = plan_json(p, c, meta("--bpw 4.8: ...", 0.0123, "Q4_K_M g32", 0.01, 0.0023));
  EXPECT_EQ(j["format"], "optiq-plan");
  EXPECT_EQ(j["budget"], "--bpw 4.8: ...");
  EXPECT_DOUBLE_EQ(j["predicted_kl"].get<double>(), 0.0123);
  EXPECT_EQ(j["bytes"].get<int64_t>(), plan_bytes(c, p));
  EXPECT_DOUBLE_EQ(j["bits_per_weight"].get<double>(), plan_bits_per_weight(c, p));
  EXPECT_EQ(j["method"], "Q4_K_M g32");
  EXPECT_DOUBLE_EQ(j["gap_kl"].get<double>(), 0.0023);
  EXPECT_EQ(PrecisionMap::from_plan_json(j, c, "mem").formats, p.formats);
  EXPECT_TRUE(plan_json(p, c, meta("b", std::nullopt, "m"))["predicted_kl"].is_null());

  const std::string path = test::temp_dir() + "/plan.json";
  write_plan(path, p, c, meta("b", 0.5, "m"));
  EXPECT_EQ(PrecisionMap::from_plan_file(path, c).formats, p.formats);
  std::ifstream in(path);
  const auto back = nlohmann::json::parse(in);
  EXPECT_EQ(back["method"], "m");
  EXPECT_FALSE(test::file_exists(path + ".tmp"));
}

// A k-quant on rows its 256-blocks do not divide is stored as llama.cpp's
// fallback; the plan file says which tensors and what they became.
TEST(PlanJson, NamesKQuantFallbacks) {
  ModelConfig c = test::plan_test_config(2);
  c.dim = 576, c.hidden_dim = 1536, c.head_dim = c.dim / c.n_heads;
  const PrecisionMap p = PrecisionMap::uniform(c, parse_tensor_format("q4_k"));
  const nlohmann::json j = plan_json(p, c, meta("b", std::nullopt, "m"));
  ASSERT_TRUE(j.contains("fallbacks"));
  EXPECT_EQ(j["fallbacks"]["model.layers.0.self_attn.q_proj"], "q4_k\u2192q5_0");
  EXPECT_FALSE(j["fallbacks"].contains("model.layers.0.mlp.down_proj"));  // 1536 = 6 blocks of 256
  EXPECT_EQ(PrecisionMap::from_plan_json(j, c, "mem").formats, p.formats);
}

// Fuzz finding (tests/fuzz/fuzz_plan_json): a plan entry's "group_size":
// 6.92234e+20 went through get<int>(), undefined behaviour (UBSan); integers
// past int wrapped silently. Now one line naming the file and the key.
TEST(PlanJson, OutOfRangeIntegersAreRefusedByName) {
  const ModelConfig c = test::plan_test_config(2);
  const PrecisionMap p = PrecisionMap::uniform(c, AffineFormat{4, 64});
  const std::string path = test::temp_dir() + "/bad-plan.json";
  auto message = [&](const nlohmann::json& entry) {
    nlohmann::json j = p.to_plan_json();
    j["tensors"]["model.layers.0.mlp.up_proj"] = entry;
    std::ofstream(path) << j.dump();
    try {
      (void)PrecisionMap::from_plan_file(path, c);
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
  const std::string big = message(nlohmann::json::parse(R"({"bits": 4, "group_size": 6.92234e+20})"));
  expect_has(big, "model.layers.0.mlp.up_proj: group_size = 6.92");
  expect_has(big, "e+20 is not an integer in range");
  expect_has(message({{"bits", 4294967300ll}, {"group_size", 64}}), "bits = 4294967300 is out of range");
  expect_has(message({{"bits", "4"}}), "bits = \"4\" is not an integer");
  EXPECT_EQ(message({{"bits", 4.0}, {"group_size", 64}}), "accepted");  // a whole float is an integer
}

