// The search quantizer beats MLX's min/max rounding on real weights
// (SmolLM2-135M), at every bit width.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "model/model.h"
#include "quant/quantizer.h"
#include "test_util.h"

namespace optiq {
namespace {

TEST(QuantizerRealWeights, SearchBeatsMinMaxOnSmolLM2) {
  const std::string path = test::cache_dir() + "/models/smollm2-135m-instruct-q4_1.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing: run scripts/fetch_models.py";
  Model m = load_model(path);
  // One matrix of each kind, from early, middle and late layers.
  const std::vector<const Linear*> mats = {&m.weights.layers[0].wq, &m.weights.layers[15].wv,
                                           &m.weights.layers[29].w_down, &m.weights.layers[7].w_up};
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    double err_minmax = 0, err_search = 0;
    for (const Linear* l : mats) {
      std::vector<float> w = l->to_f32();
      const AffineFormat fmt{bits, 64};
      QuantizeOptions mm, se;
      mm.method = QuantMethod::MinMax;
      se.method = QuantMethod::Search;
      err_minmax += quantization_error(w.data(), quantize(w.data(), l->rows(), l->cols(), fmt, mm).view()).mse;
      err_search += quantization_error(w.data(), quantize(w.data(), l->rows(), l->cols(), fmt, se).view()).mse;
    }
    RecordProperty(fmt::format("q{}_search_over_minmax", bits), fmt::format("{:.3f}", err_search / err_minmax));
    // Q4_1's 4-bit g32 grid sits inside g64's, so 4-bit and up are nearly lossless
    // for both; the search must still never lose.
    EXPECT_LE(err_search, err_minmax) << bits << " bits";
    if (bits <= 3) {
      EXPECT_LT(err_search, 0.9 * err_minmax) << bits << " bits";
    }
  }
}

}  // namespace
}  // namespace optiq
