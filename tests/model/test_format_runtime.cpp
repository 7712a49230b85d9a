// A registry format runs: a model quantized to GGUF Q8_0 / Q4_0 blocks takes
// the packed (re-laid affine) kernels and gives the logits of its
// fake-quantized copy (the accuracy path equals the runtime path), and the
// packed matrix holds exactly the dequantized blocks.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/act_quant.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;

TEST(FormatRuntime, GgmlBlocksRunPackedAndEqualFakeQuant) {
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 365, 266, 471};
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    const TensorFormat f{GgmlFormat{t}};
    Model packed = load_model(stories()), fake = load_model(stories());
    const PrecisionMap map = PrecisionMap::uniform(packed.config, f);
    QuantizeModelOptions po{.recipe = QuantizeRecipe::for_model(packed.config)};
    quantize_model(packed, map, po);
    po.fake = true;
    quantize_model(fake, map, po);
    const ModuleInfo q0 = quantizable_modules(packed.config)[1];
    const Linear& l = module_linear(packed.weights, q0);
    ASSERT_TRUE(l.is_affine()) << "runs on the affine kernels";
    EXPECT_EQ(l.affine().biases, nullptr) << "symmetric: no biases kept";
    EXPECT_EQ(l.to_f32(), module_linear(fake.weights, q0).to_f32());
    EXPECT_EQ(packed.precision.formats.at(q0.path), f);

    Transformer a(packed, 16), b(fake, 16);
    std::vector<float> la(ids.size() * packed.config.vocab_size), lb(la.size());
    const bool int8 = kernels::decode_int8_enabled();
    kernels::set_decode_int8(false);  // exact numerics: fp32 activations on both paths
    a.forward(ids, la.data(), 0);
    b.forward(ids, lb.data(), 0);
    kernels::set_decode_int8(int8);
    for (size_t i = 0; i < la.size(); ++i) ASSERT_NEAR(la[i], lb[i], 2e-4f * (1 + std::fabs(lb[i]))) << i;
  }
}

}  // namespace
}  // namespace optiq

namespace optiq {
namespace {

// Every GGUF block type as a plan format: a random model wide enough for the
// 256-weight k-quants, quantized to each type, runs packed (k-quant kernels or
// the affine re-layout) with the logits of its fake-quantized fp32 copy.
TEST(FormatRuntime, EveryGgufTypeRunsPackedAndEqualsFakeQuant) {
  ModelConfig c = test::tiny("llama");
  c.dim = 256, c.hidden_dim = 512, c.head_dim = 64, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 97;
  c.validate("wide llama");
  const auto ids = test::random_ids(9, c.vocab_size, 5);
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_1, DType::Q5_0,
                  DType::Q5_1}) {
    const TensorFormat f{GgmlFormat{t}};
    Model packed = test::random_model(c, 31), fake = test::random_model(c, 31);
    const PrecisionMap map = PrecisionMap::uniform(packed.config, f);
    QuantizeModelOptions po{.recipe = QuantizeRecipe::for_model(packed.config), .progress = false};
    quantize_model(packed, map, po);
    po.fake = true;
    quantize_model(fake, map, po);
    const ModuleInfo down = quantizable_modules(packed.config)[7];
    const Linear& l = module_linear(packed.weights, down);
    EXPECT_EQ(l.is_kquant(), is_kquant(t)) << dtype_name(t) << ": k-quants run on their own kernels";
    EXPECT_EQ(l.to_f32(), module_linear(fake.weights, down).to_f32()) << dtype_name(t);
    Transformer a(packed, 16), b(fake, 16);
    std::vector<float> la(ids.size() * c.vocab_size), lb(la.size());
    const bool int8 = kernels::decode_int8_enabled();
    kernels::set_decode_int8(false);
    a.forward(ids, la.data(), 0);
    b.forward(ids, lb.data(), 0);
    kernels::set_decode_int8(int8);
    for (size_t i = 0; i < la.size(); ++i) ASSERT_NEAR(la[i], lb[i], 2e-4f * (1 + std::fabs(lb[i]))) << dtype_name(t);
  }
}

}  // namespace
}  // namespace optiq
