// DeviceWeights and WeightSwap (model/device_weights.h): a swapped matrix
// changes exactly what a model holding that matrix computes, the original
// comes back when the swap ends (also when an exception unwinds it), and the
// Model is never touched.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "model/device_weights.h"
#include "model/transformer.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;

const std::vector<int32_t> kIds = {1, 403, 407, 261, 378, 365, 266, 471, 320, 275};

std::vector<float> run(const DeviceWeights& w) {
  Transformer tf(w, 32);
  std::vector<float> logits(kIds.size() * w.model().config.vocab_size);
  tf.forward(kIds, logits.data(), 0);
  return logits;
}

Linear crushed(const Linear& l) {  // the weights plus noise: far enough from the original to show
  std::vector<float> w = l.to_f32();
  const std::vector<float> noise = test::random_floats(w.size(), 17, 0.05f);
  for (size_t i = 0; i < w.size(); ++i) w[i] += noise[i];
  return Linear::from_f32(std::move(w), l.rows(), l.cols());
}

TEST(WeightSwap, ActsLikeTheReplacedModelAndRestores) {
  const Model m = load_model(stories());
  const auto modules = quantizable_modules(m.config);
  DeviceWeights dw(m, default_backend());
  const std::vector<float> before = run(dw);
  for (const ModuleInfo& mod : {modules[1], modules.back()}) {  // a layer's matrix; the (tied) embedding or lm_head
    const Linear& orig = module_linear(m.weights, mod);
    const WeightView saved_view = orig.view();
    Model changed = load_model(stories());
    module_linear(changed.weights, mod) = crushed(orig);
    const std::vector<float> want = run(DeviceWeights(changed, default_backend()));
    {
      WeightSwap swap(dw, mod, crushed(orig));
      const std::vector<float> during = run(dw);
      EXPECT_EQ(during, want) << mod.path;
      EXPECT_NE(during, before) << mod.path;
    }
    EXPECT_EQ(run(dw), before) << mod.path << ": not restored";
    EXPECT_EQ(module_linear(m.weights, mod).view().as<F32Weights>()->data, saved_view.as<F32Weights>()->data);
  }
}

TEST(WeightSwap, RestoresOnExceptionAndRejectsWrongShapes) {
  const Model m = load_model(stories());
  DeviceWeights dw(m, default_backend());
  const std::vector<float> before = run(dw);
  const ModuleInfo mod = quantizable_modules(m.config)[2];
  try {
    WeightSwap swap(dw, mod, crushed(module_linear(m.weights, mod)));
    throw std::runtime_error("measurement failed");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(run(dw), before);
  const Linear wrong = Linear::from_f32(test::random_floats(6 * mod.cols, 3), 6, mod.cols);
  EXPECT_THROW(WeightSwap(dw, mod, wrong), Error);
  ModuleInfo missing = mod;
  missing.layer = 99;
  EXPECT_THROW(WeightSwap(dw, missing, crushed(module_linear(m.weights, mod))), Error);
  EXPECT_EQ(run(dw), before);
}

TEST(WeightSwap, SwapsMoveWithoutRestoringTwice) {
  const Model m = load_model(stories());
  DeviceWeights dw(m, default_backend());
  const std::vector<float> before = run(dw);
  const auto modules = quantizable_modules(m.config);
  {
    std::vector<WeightSwap> swaps;  // grows: moved swaps must not restore early
    for (size_t i = 1; i < modules.size(); ++i)
      swaps.emplace_back(dw, modules[i], crushed(module_linear(m.weights, modules[i])));
    EXPECT_NE(run(dw), before);
  }
  EXPECT_EQ(run(dw), before);
}

TEST(DeviceWeights, SharedByTransformersAndEqualToOwnUpload) {
  const Model m = load_model(stories());
  const DeviceWeights dw(m, default_backend());
  Transformer own(m, 32);
  std::vector<float> a(kIds.size() * m.config.vocab_size);
  own.forward(kIds, a.data(), 0);
  EXPECT_EQ(run(dw), a);
  EXPECT_EQ(run(dw), a);  // a second Transformer on the same weights
  EXPECT_EQ(&own.weights().model(), &m);
}

}  // namespace
}  // namespace optiq
