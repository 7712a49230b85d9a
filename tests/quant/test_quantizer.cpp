#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <random>

#include "core/cpu_features.h"
#include "core/half.h"
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

namespace {
// Words of `type` holding w (rounded to it), and the fp32 values they hold:
// the reference quantizes the latter, the fused path the former.
struct SourceRows {
  std::vector<uint16_t> half;
  std::vector<float> f32;  // the values (also the fp32 source)
  const void* words(SourceWords t) const { return t == SourceWords::F32 ? static_cast<const void*>(f32.data()) : half.data(); }
};
SourceRows source_rows(const std::vector<float>& w, SourceWords t) {
  SourceRows s;
  s.f32 = w;
  if (t != SourceWords::F32) {
    s.half.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      s.half[i] = t == SourceWords::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
      s.f32[i] = t == SourceWords::BF16 ? bf16_to_f32(s.half[i]) : f16_to_f32(s.half[i]);
    }
  }
  return s;
}
}  // namespace

// The fused min/max path (source words -> packed matrix, no fp32 rows) gives
// the reference quantizer's bits: odd row counts, every bit width, group size,
// scale type and source type; groups that are constant, all positive, all
// negative, or tiny, beside heavy-tailed ones.
TEST(Quantizer, MinMaxRowsEqualTheReference) {
  for (SourceWords t : {SourceWords::F32, SourceWords::F16, SourceWords::BF16})
    for (int gs : {32, 64, 128})
      for (int64_t rows : {1, 7, 37}) {
        const int64_t cols = gs * (rows % 5 + 3);  // 3..7 groups
        auto w = student_t(static_cast<size_t>(rows * cols), static_cast<uint32_t>(7 * gs + rows), 0.05f);
        std::mt19937 rng(static_cast<uint32_t>(rows * 131 + gs));
        for (int64_t r = 0; r < rows; ++r)  // special groups
          for (int64_t g = 0; g < cols / gs; ++g) {
            float* p = w.data() + r * cols + g * gs;
            switch (rng() % 8) {
              case 0: std::fill(p, p + gs, 0.75f); break;                                       // constant
              case 1: for (int j = 0; j < gs; ++j) p[j] = std::abs(p[j]) + 0.5f; break;         // positive
              case 2: for (int j = 0; j < gs; ++j) p[j] = -std::abs(p[j]) - 0.25f; break;       // negative
              case 3: for (int j = 0; j < gs; ++j) p[j] *= 1e-6f; break;                        // tiny
              case 4: std::fill(p, p + gs, 0.0f); break;                                         // zero
              default: break;
            }
          }
        const SourceRows src = source_rows(w, t);
        for (int bits : {2, 3, 4, 5, 6, 8})
          for (bool bf16 : {false, true}) {
            QuantizeOptions o;
            o.method = QuantMethod::MinMax;
            o.bf16_scales = bf16;
            const AffineFormat fmt{bits, gs};
            const AffineMatrix ref = quantize(src.f32.data(), rows, cols, fmt, o);
            const AffineMatrix fused = quantize_minmax(src.words(t), t, rows, cols, fmt, bf16);
            const std::string what = "type " + std::to_string(static_cast<int>(t)) + " gs " + std::to_string(gs) +
                                     " rows " + std::to_string(rows) + " bits " + std::to_string(bits) +
                                     (bf16 ? " bf16" : " f16");
            ASSERT_EQ(fused.packed, ref.packed) << what;
            ASSERT_EQ(fused.scales, ref.scales) << what;
            ASSERT_EQ(fused.biases, ref.biases) << what;
            ASSERT_EQ(fused.rows, ref.rows);
            ASSERT_EQ(fused.cols, ref.cols);
            ASSERT_EQ(fused.bf16_scales, bf16);
          }
      }
}

// The baseline, AVX2 and AVX-512 builds of the fused min/max rows give the
// same bits (an export does not depend on the CPU that made it).
TEST(Quantizer, MinMaxRowsAreTheSameOnEveryIsa) {
  struct Variant {
    const char* name;
    detail::MinMaxRowsFn fn;
    bool supported;
  };
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const Variant variants[] = {{"avx2", detail::minmax_rows_avx2, avx2}, {"avx512", detail::minmax_rows_avx512, avx512}};
  const int64_t rows = 19, cols = 640;
  auto w = student_t(static_cast<size_t>(rows * cols), 77, 0.03f);
  for (SourceWords t : {SourceWords::F32, SourceWords::F16, SourceWords::BF16}) {
    const SourceRows src = source_rows(w, t);
    for (int gs : {32, 64, 128})
      for (int bits : {2, 3, 4, 5, 6, 8})
        for (bool bf16 : {false, true}) {
          const int64_t wpr = cols * bits / 32, ng = rows * (cols / gs);
          std::vector<uint32_t> p0(rows * wpr), p1(rows * wpr);
          std::vector<uint16_t> s0(ng), b0(ng), s1(ng), b1(ng);
          detail::minmax_rows_base(src.words(t), static_cast<int>(t), cols, 0, rows, bits, gs, bf16, p0.data(),
                                   s0.data(), b0.data());
          for (const Variant& v : variants) {
            if (!v.supported) continue;
            v.fn(src.words(t), static_cast<int>(t), cols, 0, rows, bits, gs, bf16, p1.data(), s1.data(), b1.data());
            ASSERT_EQ(p1, p0) << v.name << " gs " << gs << " bits " << bits;
            ASSERT_EQ(s1, s0) << v.name << " gs " << gs << " bits " << bits;
            ASSERT_EQ(b1, b0) << v.name << " gs " << gs << " bits " << bits;
          }
        }
  }
}

// Speed of one core on bf16 rows at 4 bits g64 (printed: M weights/s of each
// ISA build the CPU has, and the reference path widening rows to fp32 first).
TEST(Quantizer, MinMaxRowsAreFast) {
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
  GTEST_SKIP() << "a speed check: only meaningful in an optimised, uninstrumented build";
#endif
  const int64_t rows = 2048, cols = 4096;
  const SourceRows src = source_rows(student_t(static_cast<size_t>(rows * cols), 5), SourceWords::BF16);
  const int64_t wpr = cols * 4 / 32, ng = rows * (cols / 64);
  std::vector<uint32_t> p(rows * wpr);
  std::vector<uint16_t> sc(ng), bi(ng);
  auto rate = [&](auto&& run) {
    run();  // warm
    const auto t0 = std::chrono::steady_clock::now();
    run();
    return rows * cols / 1e6 / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const double base = rate([&] { detail::minmax_rows_base(src.half.data(), 2, cols, 0, rows, 4, 64, false, p.data(), sc.data(), bi.data()); });
  std::printf("fused min/max q4 g64 from bf16, one thread: base %.0f M weights/s", base);
  if (avx2) std::printf(", avx2 %.0f", rate([&] { detail::minmax_rows_avx2(src.half.data(), 2, cols, 0, rows, 4, 64, false, p.data(), sc.data(), bi.data()); }));
  if (avx512) std::printf(", avx512 %.0f", rate([&] { detail::minmax_rows_avx512(src.half.data(), 2, cols, 0, rows, 4, 64, false, p.data(), sc.data(), bi.data()); }));
  QuantizeOptions o;
  o.method = QuantMethod::MinMax;
  std::vector<float> row(cols);
  const double ref = rate([&] {
    for (int64_t r = 0; r < rows; r += 64) {  // widened in blocks, as the export did
      std::vector<float> blk(src.f32.begin() + r * cols, src.f32.begin() + (r + 64) * cols);
      (void)quantize(blk.data(), 64, cols, {4, 64}, o);
    }
  });
  std::printf("; reference (fp32 rows, pool threads) %.0f\n", ref);
  EXPECT_GT(base, 1.0);
}

}  // namespace optiq
