// Exporters are picked by name; the MLX one writes a directory that loads
// back with the same precision map, and never replaces output unasked.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "model/exporter.h"
#include "model/quantize_model.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

TEST(Exporter, ByNameAndUnknownNamesAreErrors) {
  EXPECT_EQ(make_exporter("mlx")->name(), "mlx");
  try {
    make_exporter("onnx");
    ADD_FAILURE() << "no error for an unknown exporter";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("known: mlx"), std::string::npos) << e.what();
  }
}

TEST(Exporter, MlxWritesAPlanThatLoadsBack) {
  Model m = load_model(test::shared_dir() + "/models/stories260K/stories260K.gguf");
  const PrecisionMap map = PrecisionMap::uniform(m.config, {4, 32});
  quantize_model(m, map, {.progress = false});
  const std::string out = test::temp_dir() + "/mlx";
  const auto ex = make_exporter("mlx");
  ex->write(m, out, {});
  EXPECT_TRUE(std::filesystem::exists(out + "/config.json"));
  Model back = load_model(out);
  EXPECT_EQ(back.precision.formats, map.formats);
  EXPECT_THROW(ex->write(m, out, {}), Error);  // exists, no force
  ex->write(m, out, {.force = true});
}

// MLX cannot store GGUF k-quant blocks: the export says so instead of writing floats.
TEST(Exporter, MlxRefusesKQuants) {
  ModelConfig c = test::tiny("llama");
  c.dim = 256, c.hidden_dim = 256, c.head_dim = 64, c.n_heads = 4, c.n_kv_heads = 2;
  c.validate("wide llama");
  Model m = test::random_model(c, 4);
  m.path = "wide";
  quantize_model(m, PrecisionMap::uniform(m.config, parse_tensor_format("q4_k")), {.progress = false});
  const std::string out = test::temp_dir() + "/mlx";
  try {
    make_exporter("mlx")->write(m, out, {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K, a GGUF k-quant or IQ4 type, which MLX cannot store"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(out)) << "nothing half-written";
}

}  // namespace
}  // namespace optiq
