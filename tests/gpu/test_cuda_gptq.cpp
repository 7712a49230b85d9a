// GPTQ on the GPU (Backend::gptq_factor / gptq_affine) against the host's
// (model/gptq.cpp) on random matrices with correlated inputs: the same
// algorithm, so nearly the same codes (fp32 sums in another order may round a
// code the other way, and GPTQ carries that forward) and the same output
// error, with and without grid refits, at odd shapes (rows not a multiple of
// a warp's block, columns not of the 128-column blocks). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "backend/backend.h"
#include "model/gptq.h"
#include "quant/format.h"
#include "test_util.h"

namespace optiq {
namespace {

#define REQUIRE_GPU()                                             \
  if (cuda_backend() == nullptr) GTEST_SKIP() << "no GPU visible"

struct Case {
  const char* format;
  int64_t rows, cols;
};

TEST(CudaGptq, EqualsTheHost) {
  REQUIRE_GPU();
  Backend* gpu = cuda_backend();
  for (const Case c : {Case{"q3g32", 70, 320}, Case{"q4g64", 70, 320}, Case{"q2g128", 37, 384},
                       Case{"q8g64", 37, 384}, Case{"q5g32", 9, 96}}) {
    const TensorFormat f = parse_tensor_format(c.format);
    const auto w = test::random_floats(static_cast<size_t>(c.rows * c.cols), 3, 0.05f);
    const auto h = test::gram(test::correlated_inputs(2 * c.cols, c.cols, 5), 2 * c.cols, c.cols);
    std::vector<float> diag(static_cast<size_t>(c.cols));
    for (int64_t j = 0; j < c.cols; ++j) diag[j] = h[j * c.cols + j];
    QuantizeOptions qo;
    qo.importance = diag.data();
    const double e_plain =
        test::output_error(w, dequantize_matrix(quantize_matrix(f, w.data(), c.rows, c.cols, qo)), h, c.rows, c.cols);
    for (const int passes : {0, 3}) {
      const std::string what = fmt::format("{} {}x{} refits {}", c.format, c.rows, c.cols, passes);
      const GptqHessian host = gptq_prepare(h.data(), c.cols, true, 0.01, passes);
      const GptqHessian dev = gptq_prepare(h.data(), c.cols, true, 0.01, passes, gpu);
      ASSERT_TRUE(dev.ok && dev.device) << what;
      EXPECT_TRUE(dev.u.empty()) << what;
      EXPECT_EQ(dev.damp_used, host.damp_used) << what;
      const GptqResult a = gptq_quantize(f, w.data(), c.rows, c.cols, host, {});
      const GptqResult b = gptq_quantize(f, w.data(), c.rows, c.cols, dev, {});
      ASSERT_FALSE(b.fallback) << what;
      ASSERT_TRUE(b.q.affine.has_value()) << what;
      const auto wa = dequantize_matrix(a.q), wb = dequantize_matrix(b.q);
      int64_t same = 0;
      for (size_t i = 0; i < wa.size(); ++i) same += wa[i] == wb[i];
      const double agree = static_cast<double>(same) / static_cast<double>(wa.size());
      const double ea = test::output_error(w, wa, h, c.rows, c.cols), eb = test::output_error(w, wb, h, c.rows, c.cols);
      RecordProperty(what, fmt::format("agree {:.4f} error {:.4g} vs {:.4g}", agree, eb, ea));
      EXPECT_GT(agree, 0.9) << what;
      EXPECT_NEAR(eb / ea, 1.0, 0.03) << what << ": " << eb << " vs " << ea;
      if (f.code_bits() < 8) {
        EXPECT_LT(eb, 0.9 * e_plain) << what;
      }
    }
  }
}

// A Hessian no dampening makes positive definite: the device's factor fails
// as the host's does, and GPTQ falls back to plain rounding.
TEST(CudaGptq, NotPositiveDefiniteFallsBackToRounding) {
  REQUIRE_GPU();
  const int64_t rows = 5, cols = 64;
  std::vector<float> h(static_cast<size_t>(cols * cols), 0.0f);
  for (int64_t j = 0; j < cols; ++j) h[j * cols + j] = 1.0f;
  for (int64_t j = 0; j + 1 < cols; j += 2) h[j * cols + j + 1] = h[(j + 1) * cols + j] = 300.0f;
  const GptqHessian dev = gptq_prepare(h.data(), cols, true, 0.01, 3, cuda_backend());
  EXPECT_FALSE(dev.ok);
  const auto w = test::random_floats(static_cast<size_t>(rows * cols), 4, 0.1f);
  const TensorFormat f = parse_tensor_format("q4g64");
  const GptqResult g = gptq_quantize(f, w.data(), rows, cols, dev, {});
  EXPECT_TRUE(g.fallback);
}

}  // namespace
}  // namespace optiq
