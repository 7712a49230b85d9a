// Integer decode path (affine_matmul_int8): int8 activation blocks x packed
// codes, on every bit width, group size and ISA path.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "core/parallel.h"
#include "kernels/act_quant.h"
#include "kernels/int8_gemm.h"
#include "kernels/matmul.h"
#include "quant/quantizer.h"
#include "test_util.h"

namespace optiq {
namespace {

struct Path {
  Isa isa;
  bool vnni;  // AVX-VNNI on the AVX2 path
  std::string name() const { return fmt::format("{}{}", isa_name(isa), isa == Isa::Avx2 ? (vnni ? "+vnni" : "-novnni") : ""); }
};

std::vector<Path> paths() {
  std::vector<Path> v{{Isa::Scalar, false}};
  if (isa_supported(Isa::Avx2)) {
    v.push_back({Isa::Avx2, false});
    if (set_avx_vnni(true)) v.push_back({Isa::Avx2, true});
  }
  if (isa_supported(Isa::Avx512)) v.push_back({Isa::Avx512, false});
  return v;
}

struct Guard {
  Isa isa = active_isa();
  bool vnni = avx_vnni_enabled();
  bool int8 = int8_decode();
  ~Guard() {
    set_isa(isa);
    set_avx_vnni(vnni);
    set_int8_decode(int8);
  }
};

void use(const Path& p) {
  set_isa(p.isa);
  set_avx_vnni(p.vnni);
}

// Checks Y against (1) the double-precision product of W with the same
// int8-rounded activations (only fp32 summation error: 1e-5 of sum |w x|) and
// (2) the fp32 product with the unrounded X, within the rounding bound:
// |x - s*q| <= s/2 per input, so |dy| <= sum_k |w_k| * s_b(k) / 2.
void check_int8(const std::vector<float>& Wf, int64_t rows, int64_t cols, const std::vector<float>& X, int64_t n,
                const std::vector<float>& Y, const std::string& what) {
  Int8Activations q;
  quantize_activations(X.data(), n, cols, q);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double ref_q = 0, mag = 0, ref = 0, bound = 0;
      for (int64_t k = 0; k < cols; ++k) {
        const double w = Wf[r * cols + k];
        const double s = q.row_scale(i)[k / 32];
        const double xq = s * q.row_q(i)[k];
        ref_q += w * xq;
        mag += std::abs(w * xq);
        ref += w * X[i * cols + k];
        bound += std::abs(w) * s * 0.5;
      }
      const double got = Y[i * rows + r];
      const double tol_q = 1e-5 * mag + 1e-30;
      if (!(std::abs(got - ref_q) <= tol_q) && bad++ < 5)
        ADD_FAILURE() << what << " Y[" << i << "," << r << "] = " << got << " int8 reference " << ref_q << " (mag "
                      << mag << ")";
      if (!(std::abs(got - ref) <= bound * 1.0001 + tol_q) && bad++ < 5)
        ADD_FAILURE() << what << " Y[" << i << "," << r << "] = " << got << " fp32 product " << ref
                      << " beyond the rounding bound " << bound;
    }
}

}  // namespace

TEST(Int8Decode, AllFormatsAllPaths) {
  Guard guard;
  const auto ps = paths();
  uint32_t seed = 11;
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int gs : {32, 64, 128})
      for (int64_t cols : {int64_t{gs}, int64_t{3 * gs}, int64_t{576}, int64_t{5 * gs}}) {
        if (cols % gs) continue;
        const int64_t rows = seed % 2 ? 37 : 13;  // not multiples of 16
        const bool bf16 = seed % 3 == 0;
        auto w = test::random_floats(rows * cols, seed++);
        QuantizeOptions o;
        o.method = QuantMethod::MinMax;
        o.bf16_scales = bf16;
        AffineMatrix m = quantize(w.data(), rows, cols, {bits, gs}, o);
        auto Wf = dequantize(m.view());
        for (int64_t n : {1, 2, 3}) {
          auto X = test::random_floats(n * cols, seed++);
          for (int64_t k = 0; k < n * cols; k += 7) X[k] *= 4.0f;  // uneven block ranges
          for (const Path& p : ps) {
            use(p);
            std::vector<float> Y(n * rows, NAN);
            affine_matmul_int8(m.view(), X.data(), n, Y.data());
            check_int8(Wf, rows, cols, X, n, Y,
                       fmt::format("{} q{} g{} {} {}x{} n={}", p.name(), bits, gs, bf16 ? "bf16" : "f16", rows, cols, n));
          }
        }
      }
}

// One activation row against a matrix whose row count is a multiple of the
// four rows the AVX2 batch-1 kernels take a pass: their last pass ends at the
// matrix's last byte, where the 2/3/5/6-bit unpacking (which reads past a
// block) must copy the block out first (ASan checks the reads in CI). Tiny
// row counts (one pass) and one thread, so the last pass is the last rows.
TEST(Int8Decode, BatchOneLastPassEndsAtTheMatrixEnd) {
  Guard guard;
  const int threads = num_threads();
  set_num_threads(1);
  uint32_t seed = 301;
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int64_t rows : {4, 8})
      for (int64_t cols : {32, 96, 576}) {
        auto w = test::random_floats(rows * cols, seed++);
        const AffineMatrix m = quantize(w.data(), rows, cols, {bits, 32}, {});
        const auto Wf = dequantize(m.view());
        const auto X = test::random_floats(cols, seed++);
        for (const Path& p : paths()) {
          use(p);
          std::vector<float> Y(rows, NAN);
          affine_matmul_int8(m.view(), X.data(), 1, Y.data());
          check_int8(Wf, rows, cols, X, 1, Y, fmt::format("{} q{} {}x{}", p.name(), bits, rows, cols));
        }
      }
  set_num_threads(threads);
}

// Batched int8 products (kernels/int8_gemm.h, prefill): the tile kernel of
// every path (scalar reference, AVX2 maddubs, AVX-VNNI, AVX-512 VNNI); tails
// of rows (not a multiple of 16) and of activation rows (not a multiple of
// the 6, 3 or 2 a pass takes).
TEST(Int8Gemm, AffineMatchesReference) {
  Guard guard;
  const auto ps = paths();
  uint32_t seed = 71;
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int gs : {32, 64, 128})
      for (int64_t cols : {int64_t{gs}, int64_t{3 * gs}, int64_t{640}}) {
        if (cols % gs) continue;
        const int64_t rows = seed % 2 ? 37 : 16;
        const bool bf16 = seed % 3 == 0;
        auto w = test::random_floats(rows * cols, seed++);
        QuantizeOptions o;
        o.method = QuantMethod::MinMax;
        o.bf16_scales = bf16;
        AffineMatrix m = quantize(w.data(), rows, cols, {bits, gs}, o);
        auto Wf = dequantize(m.view());
        for (int64_t n : {4, 7, 8, 13}) {
          auto X = test::random_floats(n * cols, seed++);
          for (int64_t k = 0; k < n * cols; k += 7) X[k] *= 4.0f;
          for (const Path& p : ps) {
            use(p);
            std::vector<float> Y(n * rows, NAN);
            affine_matmul_int8_gemm(m.view(), X.data(), n, Y.data());
            check_int8(Wf, rows, cols, X, n, Y,
                       fmt::format("gemm {} q{} g{} {}x{} n={}", p.name(), bits, gs, rows, cols, n));
          }
        }
      }
}

// A prefill-sized batch: the activations are rounded in parallel (n * cols
// above the serial cut-off) and the row tiles spread over the threads.
TEST(Int8Gemm, LargeBatchMatchesReference) {
  Guard guard;
  const int threads = num_threads();
  set_num_threads(3);  // more workers than this machine may have: the bug class needs > 1
  const int64_t rows = 100, cols = 1536, n = 61;
  auto w = test::random_floats(rows * cols, 17);
  AffineMatrix m = quantize(w.data(), rows, cols, {4, 32}, {});
  auto Wf = dequantize(m.view());
  auto X = test::random_floats(n * cols, 18);
  for (const Path& p : paths()) {
    use(p);
    std::vector<float> Y(n * rows, NAN);
    affine_matmul_int8_gemm(m.view(), X.data(), n, Y.data());
    check_int8(Wf, rows, cols, X, n, Y, fmt::format("gemm {} n={}", p.name(), n));
  }
  set_num_threads(threads);
}

// With int8 numerics on, batched affine_matmul takes the int8 GEMM exactly
// when int8_prefill_active() says so; off, it is the fp32 product.
TEST(Int8Gemm, DispatchFollowsNumerics) {
  Guard guard;
  const int64_t rows = 20, cols = 256, n = 9;
  auto w = test::random_floats(rows * cols, 5);
  AffineMatrix m = quantize(w.data(), rows, cols, {4, 64}, {});
  auto X = test::random_floats(n * cols, 6);
  std::vector<float> y(n * rows), want(n * rows);
  set_int8_decode(true);
  affine_matmul(m.view(), X.data(), n, y.data());
  if (int8_prefill_active()) affine_matmul_int8_gemm(m.view(), X.data(), n, want.data());
  else affine_matmul_f32(m.view(), X.data(), n, want.data());
  EXPECT_EQ(y, want);
  set_int8_decode(false);
  EXPECT_FALSE(int8_prefill_active());
  affine_matmul(m.view(), X.data(), n, y.data());
  affine_matmul_f32(m.view(), X.data(), n, want.data());
  EXPECT_EQ(y, want);
}

// quantize_activation_rows_avx512 and _avx2 round exactly as the portable code.
TEST(Int8Gemm, SimdActivationRoundingIsIdentical) {
  if (!isa_supported(Isa::Avx2)) GTEST_SKIP() << "no AVX2";
  using Rounder = void (*)(const float*, int64_t, int64_t, Int8Activations&);
  std::vector<std::pair<const char*, Rounder>> simd = {{"avx2", kern::quantize_activation_rows_avx2}};
  if (isa_supported(Isa::Avx512)) simd.emplace_back("avx512", kern::quantize_activation_rows_avx512);
  for (const auto& [name, round_rows] : simd)
    for (int64_t cols : {int64_t{7}, int64_t{32}, int64_t{100}, int64_t{640}, int64_t{1000}}) {
      const int64_t n = 5;
      auto X = test::random_floats(n * cols, static_cast<uint32_t>(cols));
      for (int64_t k = 0; k < n * cols; k += 5) X[k] *= 10.0f;
      X[3] = 0.5f;  // ties of x * inv are possible only by accident; keep a few exact halves
      Int8Activations a, b;
      quantize_activations(X.data(), n, cols, a);
      prepare_activations(n, cols, b);
      round_rows(X.data(), 0, n, b);
      EXPECT_EQ(std::vector<int8_t>(a.q.begin(), a.q.begin() + n * a.blocks * 32),
                std::vector<int8_t>(b.q.begin(), b.q.begin() + n * b.blocks * 32)) << name << " " << cols;
      EXPECT_EQ(std::vector<float>(a.scale.begin(), a.scale.begin() + n * a.blocks),
                std::vector<float>(b.scale.begin(), b.scale.begin() + n * b.blocks)) << name << " " << cols;
      EXPECT_EQ(std::vector<int32_t>(a.sum.begin(), a.sum.begin() + n * a.blocks),
                std::vector<int32_t>(b.sum.begin(), b.sum.begin() + n * b.blocks)) << name << " " << cols;
    }
}

// The SIMD tile kernels make the same sums in the same order: the same bits on
// every SIMD path, for affine tiles of several widths (8-bit codes up to 255
// included: the AVX2 kernel without VNNI shifts them by 128), at 1 to 7
// activation rows. (K-quant tiles, a scale per 16 inputs, are checked against
// their reference on every ISA in test_kquant_matmul.cpp.)
TEST(Int8Gemm, SimdPathsGiveTheSameBits) {
  Guard guard;
  std::vector<Path> simd;
  for (const Path& p : paths())
    if (p.isa != Isa::Scalar) simd.push_back(p);
  if (simd.size() < 2) GTEST_SKIP() << "one SIMD path on this CPU";
  uint32_t seed = 501;
  for (int bits : {2, 4, 5, 8})
    for (int64_t rows : {16, 21}) {
      const int64_t cols = 320;
      auto w = test::random_floats(rows * cols, seed++);
      const AffineMatrix m = quantize(w.data(), rows, cols, {bits, 64}, {});
      for (int64_t n : {1, 2, 5, 7}) {  // passes of 3 (VNNI) or 2 rows, and their tails
        auto X = test::random_floats(n * cols, seed++);
        for (int64_t k = 0; k < n * cols; k += 3) X[k] *= 5.0f;
        std::vector<std::vector<float>> ys;
        for (const Path& p : simd) {
          use(p);
          ys.emplace_back(n * rows, NAN);
          affine_matmul_int8_gemm(m.view(), X.data(), n, ys.back().data());
        }
        for (size_t i = 1; i < ys.size(); ++i)
          for (int64_t k = 0; k < n * rows; ++k)
            ASSERT_EQ(ys[i][k], ys[0][k]) << simd[i].name() << " vs " << simd[0].name() << " q" << bits << " "
                                          << rows << " rows n=" << n << " [" << k << "]";
      }
    }
}

// Extreme codes: all-0 and all-max weights, activations at +-127 (int32 sums,
// no int16 saturation on the AVX2 maddubs path).
TEST(Int8Decode, ExtremeCodes) {
  Guard guard;
  for (int bits : {4, 8, 6})
    for (int code : {0, (1 << bits) - 1}) {
      const int64_t rows = 5, cols = 160, gs = 32;
      std::vector<uint8_t> codes(rows * cols, static_cast<uint8_t>(code));
      std::vector<uint16_t> sc(rows * cols / gs, f32_to_scale(0.01f, false)), bi(rows * cols / gs, f32_to_scale(-0.5f, false));
      AffineMatrix m = pack(codes.data(), rows, cols, {bits, static_cast<int>(gs)}, sc, bi, false);
      auto Wf = dequantize(m.view());
      for (int64_t n : {1, 3}) {
        std::vector<float> X(n * cols);
        for (int64_t k = 0; k < n * cols; ++k) X[k] = (k / 32) % 2 ? 3.0f : -3.0f;
        for (const Path& p : paths()) {
          use(p);
          std::vector<float> Y(n * rows, NAN);
          affine_matmul_int8(m.view(), X.data(), n, Y.data());
          check_int8(Wf, rows, cols, X, n, Y, fmt::format("{} q{} code {} n={}", p.name(), bits, code, n));
        }
      }
    }
}

// affine_matmul: int8 decode for n < 4 by default, the int8 GEMM for n >= 4
// where int8_prefill_active() (else fp32), fp32 when int8 numerics are off.
TEST(Int8Decode, DispatchFollowsNumerics) {
  Guard guard;
  const int64_t rows = 19, cols = 192;
  auto w = test::random_floats(rows * cols, 5);
  AffineMatrix m = quantize(w.data(), rows, cols, {4, 64});
  for (int64_t n : {1, 3, 4, 6}) {
    auto X = test::random_floats(n * cols, 9 + n);
    std::vector<float> y(n * rows), yi(n * rows), yg(n * rows), yf(n * rows);
    affine_matmul_int8(m.view(), X.data(), n, yi.data());
    affine_matmul_int8_gemm(m.view(), X.data(), n, yg.data());
    affine_matmul_f32(m.view(), X.data(), n, yf.data());
    set_int8_decode(true);
    affine_matmul(m.view(), X.data(), n, y.data());
    EXPECT_EQ(y, n < 4 ? yi : int8_prefill_active() ? yg : yf) << "n=" << n;
    set_int8_decode(false);
    affine_matmul(m.view(), X.data(), n, y.data());
    EXPECT_EQ(y, yf) << "n=" << n;
  }
}

}  // namespace optiq

namespace optiq {
namespace {

// Symmetric matrices (no biases array; bias = -zero_point * scale, as GGUF's
// Q4_0/Q5_0/Q8_0 become) give bit-identical products to the same matrix with
// the biases written out, on every path: fp32, int8 decode, int8 GEMM.
TEST(AffineSymmetric, SameProductsAsExplicitBiases) {
  Guard guard;
  const auto ps = paths();
  uint32_t seed = 301;
  for (int bits : {4, 5, 8})
    for (int gs : {32, 64})
      for (bool bf16 : {false, true}) {
        const int64_t rows = 19, cols = 5 * gs;
        auto w = test::random_floats(rows * cols, seed++);
        QuantizeOptions o;
        o.method = QuantMethod::MinMax;
        o.bf16_scales = bf16;
        AffineMatrix expl = quantize(w.data(), rows, cols, {bits, gs}, o);
        const int32_t zp = 1 << (bits - 1);
        for (size_t g = 0; g < expl.scales.size(); ++g)  // exact: a power of two times the scale
          expl.biases[g] = f32_to_scale(-static_cast<float>(zp) * scale_to_f32(expl.scales[g], bf16), bf16);
        AffineMatrix sym = expl;
        sym.biases.clear();
        sym.zero_point = zp;
        ASSERT_TRUE(sym.view().symmetric());
        EXPECT_EQ(sym.bytes() + expl.biases.size() * 2, expl.bytes());
        EXPECT_EQ(dequantize(sym.view()), dequantize(expl.view()));
        for (int64_t n : {1, 3, 7}) {
          auto X = test::random_floats(n * cols, seed++);
          for (const Path& p : ps) {
            use(p);
            const std::string what = fmt::format("{} q{} g{} {} n={}", p.name(), bits, gs, bf16 ? "bf16" : "f16", n);
            std::vector<float> ys(n * rows, NAN), ye(n * rows, NAN);
            affine_matmul_f32(sym.view(), X.data(), n, ys.data());
            affine_matmul_f32(expl.view(), X.data(), n, ye.data());
            EXPECT_EQ(ys, ye) << "fp32 " << what;
            if (n < 4) {
              affine_matmul_int8(sym.view(), X.data(), n, ys.data());
              affine_matmul_int8(expl.view(), X.data(), n, ye.data());
              EXPECT_EQ(ys, ye) << "int8 decode " << what;
            } else {
              affine_matmul_int8_gemm(sym.view(), X.data(), n, ys.data());
              affine_matmul_int8_gemm(expl.view(), X.data(), n, ye.data());
              EXPECT_EQ(ys, ye) << "int8 gemm " << what;
            }
          }
        }
      }
}

}  // namespace
}  // namespace optiq
