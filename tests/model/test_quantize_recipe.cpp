// One quantization recipe for the export, the profile and measured selection:
// the export's scale type follows the model (bf16 for Gemma 3), a dtype
// overrides it, and the matrix quantizer gets exactly the recipe.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/quantize_model.h"

namespace optiq {
namespace {

TEST(QuantizeRecipe, FollowsTheModelUnlessTold) {
  ModelConfig c;
  c.prefers_bf16 = false;
  EXPECT_FALSE(QuantizeRecipe::for_model(c).bf16_scales);
  EXPECT_TRUE(QuantizeRecipe::for_model(c, QuantMethod::Search, "bf16").bf16_scales);
  c.prefers_bf16 = true;
  EXPECT_TRUE(QuantizeRecipe::for_model(c).bf16_scales);
  EXPECT_FALSE(QuantizeRecipe::for_model(c, QuantMethod::Search, "f16").bf16_scales);
  EXPECT_THROW(QuantizeRecipe::for_model(c, QuantMethod::Search, "f32"), Error);

  const QuantizeRecipe r = QuantizeRecipe::for_model(c, QuantMethod::MinMax);
  const float imp[2] = {1.0f, 2.0f};
  const QuantizeOptions o = r.options(imp);
  EXPECT_EQ(o.method, QuantMethod::MinMax);
  EXPECT_TRUE(o.bf16_scales);
  EXPECT_EQ(o.importance, imp);
  const QuantizeModelOptions mo{.recipe = r};
  EXPECT_EQ(mo.recipe.method, QuantMethod::MinMax);
  EXPECT_TRUE(mo.recipe.bf16_scales);
}

}  // namespace
}  // namespace optiq
