#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <random>

#include "core/cpu_features.h"
#include "quant/quantizer.h"
#include "quant/quantizer_impl.h"
#include "test_util.h"

namespace optiq {

namespace {
// Student-t (3 degrees of freedom) samples: heavy tails like real weights.
std::vector<float> student_t(size_t n, uint32_t seed, float scale = 0.02f) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(3.0f);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = d(rng) * scale;
    if (x == 0.0f) x = scale * 1e-3f;
  }
  return v;
}
}  // namespace

TEST(Quantizer, SearchBeatsMinMaxOnHeavyTails) {
  const int64_t rows = 48, cols = 512;
  auto w = student_t(rows * cols, 11);
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int gs : {32, 64, 128})
      for (bool bf16 : {false, true}) {
        QuantizeOptions mm;
        mm.method = QuantMethod::MinMax;
        mm.bf16_scales = bf16;
        QuantizeOptions se = mm;
        se.method = QuantMethod::Search;
        AffineMatrix a = quantize(w.data(), rows, cols, {bits, gs}, mm);
        AffineMatrix b = quantize(w.data(), rows, cols, {bits, gs}, se);
        const double ea = quantization_error(w.data(), a.view()).mse;
        const double eb = quantization_error(w.data(), b.view()).mse;
        EXPECT_LT(eb, ea) << bits << " bits, group " << gs << (bf16 ? " bf16" : " fp16");
        if (bits <= 4) {
          EXPECT_LT(eb, 0.95 * ea) << bits << " bits, group " << gs;
        }
      }
}

TEST(Quantizer, ImportanceReducesWeightedError) {
  const int64_t rows = 64, cols = 256;
  auto w = student_t(rows * cols, 5);
  std::mt19937 rng(3);
  std::lognormal_distribution<float> ln(0.0f, 1.5f);
  std::vector<float> imp(cols);
  for (auto& x : imp) x = ln(rng);
  for (int bits : {2, 3, 4}) {
    QuantizeOptions plain;
    QuantizeOptions weighted;
    weighted.importance = imp.data();
    AffineMatrix a = quantize(w.data(), rows, cols, {bits, 64}, plain);
    AffineMatrix b = quantize(w.data(), rows, cols, {bits, 64}, weighted);
    const double ea = quantization_error(w.data(), a.view(), imp.data()).weighted_mse;
    const double eb = quantization_error(w.data(), b.view(), imp.data()).weighted_mse;
    EXPECT_LT(eb, 0.97 * ea) << bits << " bits";
  }
}

TEST(Quantizer, ConstantAndTinyGroups) {
  std::vector<float> w(2 * 64, 0.25f);
  for (int j = 64; j < 128; ++j) w[j] = 1e-9f * (j - 90);
  for (auto method : {QuantMethod::MinMax, QuantMethod::Search}) {
    QuantizeOptions o;
    o.method = method;
    AffineMatrix m = quantize(w.data(), 2, 64, {4, 64}, o);
    auto d = dequantize(m.view());
    for (int j = 0; j < 64; ++j) EXPECT_NEAR(d[j], 0.25f, 1e-3f);
    for (int j = 64; j < 128; ++j) {
      EXPECT_TRUE(std::isfinite(d[j]));
      EXPECT_NEAR(d[j], w[j], 1e-6f);
    }
  }
}

// Throughput guard: 2M weights (1.5% of a 135M model) must take well under a second.
TEST(Quantizer, SearchIsFast) {
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
  GTEST_SKIP() << "a speed check: only meaningful in an optimised, uninstrumented build";
#endif
  const int64_t rows = 1024, cols = 2048;
  auto w = student_t(rows * cols, 9);
  auto t0 = std::chrono::steady_clock::now();
  AffineMatrix m = quantize(w.data(), rows, cols, {4, 64});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("seconds", std::to_string(s));
  std::printf("search quantize 2M weights q4 g64: %.3f s\n", s);
  EXPECT_LT(s, 2.0);
}



// The search's sums run in fixed lanes folded in a fixed order, so the
// baseline, AVX2 and AVX-512 builds of it pick the same scale, bias and codes
// (profiles and exports do not depend on the CPU), with and without
// importance, for whole and ragged group lengths.
TEST(Quantizer, SearchIsTheSameOnEveryIsa) {
  struct Variant {
    const char* name;
    detail::SearchFn fn;
    bool supported;
  };
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const Variant variants[] = {{"avx2", detail::quantize_group_search_avx2, avx2},
                              {"avx512", detail::quantize_group_search_avx512, avx512}};
  for (int gs : {32, 40, 64, 128}) {
    const auto w = student_t(static_cast<size_t>(gs) * 64, 90 + gs);
    auto imp = student_t(static_cast<size_t>(gs) * 64, 190 + gs, 1.0f);
    for (auto& v : imp) v = v * v;
    for (int bits : {2, 3, 4, 8})
      for (bool bf16 : {false, true})
        for (bool weighted : {false, true})
          for (int g = 0; g < 64; ++g) {
            const float* wg = w.data() + g * gs;
            std::vector<float> ones(gs, 1.0f);
            const float* ig = weighted ? imp.data() + g * gs : ones.data();
            std::vector<uint8_t> q0(gs), q1(gs);
            uint16_t s0, b0, s1, b1;
            detail::quantize_group_search_base(wg, ig, gs, bits, bf16, 6, 3, q0.data(), &s0, &b0);
            for (const Variant& v : variants) {
              if (!v.supported) continue;
              v.fn(wg, ig, gs, bits, bf16, 6, 3, q1.data(), &s1, &b1);
              ASSERT_EQ(s1, s0) << v.name << " gs " << gs << " bits " << bits << " group " << g;
              ASSERT_EQ(b1, b0) << v.name << " gs " << gs << " bits " << bits << " group " << g;
              ASSERT_EQ(q1, q0) << v.name << " gs " << gs << " bits " << bits << " group " << g;
            }
          }
  }
}

}  // namespace optiq
