// Plan variants for measured selection use only the candidate formats, and a
// prediction never counts an unprofiled format as 0 (the `--candidates 4,8x64`
// bug: a "baseline Q5_K_M" variant with 5- and 6-bit formats, predicted 0.0).
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "plan/select.h"
#include "plan_test_util.h"

namespace optiq {
namespace {

TEST(PlanVariants, OnlyCandidateFormatsAndNoZeroPredictions) {
  const ModelConfig c = test::plan_test_config(8);
  const std::vector<TensorFormat> formats = {AffineFormat{4, 64}, AffineFormat{8, 64}};
  std::map<std::string, std::map<std::string, double>> damage;
  for (const auto& m : quantizable_modules(c)) {
    const double w = 1.0 + 0.1 * (m.layer + 2) + (m.kind == ModuleKind::VProj ? 2.0 : 0.0);
    damage[m.path]["affine-q4-g64"] = 0.01 * w;
    damage[m.path]["affine-q8-g64"] = 0.0001 * w;
  }
  const int64_t budget = (plan_bytes(c, uniform_plan(c, {4, 64})) + plan_bytes(c, uniform_plan(c, {8, 64}))) / 2;
  SolverOptions so;
  so.fixed_bytes = fixed_weight_bytes(c);
  const auto variants = plan_variants(c, damage, formats, budget, so, /*with_baselines=*/true);
  ASSERT_FALSE(variants.empty());
  std::set<std::string> names;
  for (const auto& v : variants) {
    names.insert(v.name);
    EXPECT_GT(v.predicted, 0.0) << v.name;
    EXPECT_LE(v.bytes, budget) << v.name;
    for (const auto& [path, f] : v.map.formats) {
      if (!f) continue;
      EXPECT_TRUE((*f == AffineFormat{4, 64}) || (*f == AffineFormat{8, 64}))
          << v.name << " " << path << " " << tensor_format_name(f);
    }
  }
  EXPECT_TRUE(names.count("baseline uniform affine-q4-g64")) << "the uniform baseline is made of candidates";

  // A plan with a format the profile lacks cannot be predicted.
  PrecisionMap q5 = uniform_plan(c, {5, 64});
  EXPECT_THROW(plan_predicted_damage(q5, damage), Error);
  PrecisionMap floats = uniform_plan(c, {4, 64});
  for (auto& [path, f] : floats.formats) f = std::nullopt;
  EXPECT_EQ(plan_predicted_damage(floats, damage), 0.0);
}

}  // namespace
}  // namespace optiq
