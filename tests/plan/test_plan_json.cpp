#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

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
