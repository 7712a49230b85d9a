// Exporters are picked by name; the MLX one writes a directory that loads
// back with the same precision map, and never replaces output unasked.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "model/exporter.h"
#include "model/quantize_model.h"
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

}  // namespace
}  // namespace optiq
