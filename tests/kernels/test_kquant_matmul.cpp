// GGUF k-quant matrices multiplied packed (kernels/kquant_matmul.h): int8
// decode against a double reference over the dequantized weights and the
// int8-rounded activations, and the fp32 paths against dequantize+f32_matmul.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/half.h"
#include "kernels/act_quant.h"
#include "kernels/int8_gemm.h"
#include "kernels/kquant_matmul.h"
#include "kernels/matmul.h"
#include "model/linear.h"
#include "quant/ggml_dequant.h"
#include "isa_guard.h"

namespace optiq {
namespace {

using test::available_isas;
using test::IsaGuard;

constexpr DType kTypes[] = {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  p[0] = h & 0xff;
  p[1] = h >> 8;
}

// Valid random blocks: random bytes for codes and scales, sane fp16 d / dmin.
std::vector<uint8_t> random_blocks(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  const size_t bb = block_layout(t).block_bytes, nb = rows * (cols / 256);
  std::vector<uint8_t> b(bb * nb);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (auto& x : b) x = static_cast<uint8_t>(byte(rng));
  for (size_t i = 0; i < nb; ++i) {
    uint8_t* blk = b.data() + i * bb;
    const float d = u(rng) * 1e-3f, dmin = u(rng) * 2e-3f;
    switch (t) {
      case DType::Q2_K: put_f16(blk + 80, d * 4), put_f16(blk + 82, dmin); break;
      case DType::Q3_K: put_f16(blk + 108, d); break;
      case DType::Q4_K: case DType::Q5_K: put_f16(blk, d), put_f16(blk + 2, dmin); break;
      default: put_f16(blk + 208, d * 0.1f); break;  // Q6_K: scales are int8 up to 127
    }
  }
  return b;
}

std::vector<float> random_x(int64_t n, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n * cols);
  for (auto& v : x) v = g(rng) * (1.0f + 3.0f * (std::abs(g(rng)) > 2.0f));  // a few outliers
  return x;
}

std::vector<float> dequant(const KQuantView& v) {
  std::vector<float> w(v.rows * v.cols);
  for (int64_t r = 0; r < v.rows; ++r) kquant_dequantize_row(v, r, &w[r * v.cols]);
  return w;
}

TEST(KQuantMatmul, DecodeInt8MatchesReference) {
  IsaGuard guard;
  const int64_t rows = 37;
  for (Isa isa : available_isas()) {
    set_isa(isa);
    for (DType t : kTypes)
      for (int64_t cols : {256, 512, 768}) {
        const auto blocks = random_blocks(t, rows, cols, static_cast<uint32_t>(cols) * 7 + static_cast<int>(t));
        const KQuantView v{t, rows, cols, blocks.data()};
        const std::vector<float> w = dequant(v);
        for (int64_t n : {1, 2, 3}) {
          const std::vector<float> x = random_x(n, cols, static_cast<uint32_t>(n * 1000 + cols));
          std::vector<float> y(n * rows, NAN);
          kquant_matmul(v, x.data(), n, y.data(), /*int8=*/true);
          Int8Activations a;
          quantize_activations(x.data(), n, cols, a);
          int bad_tight = 0, bad_loose = 0;
          for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < rows; ++r) {
              double ref = 0, mag = 0, ref32 = 0, bound = 0;
              for (int64_t k = 0; k < cols; ++k) {
                const double wk = w[r * cols + k];
                const double xq = static_cast<double>(a.row_scale(i)[k / 32]) * a.row_q(i)[k];
                ref += wk * xq;
                mag += std::abs(wk * xq);
                ref32 += wk * x[i * cols + k];
                // |x - xq| <= scale / 2 per element (round to nearest).
                bound += std::abs(wk) * a.row_scale(i)[k / 32] * 0.5;
              }
              const double got = y[i * rows + r];
              // fp32 accumulation of ~cols/16 scaled partial sums.
              if (!(std::abs(got - ref) <= 2e-6 * mag + 1e-7)) ++bad_tight;
              // The int8 rounding moves the product by at most `bound`.
              if (!(std::abs(got - ref32) <= 1.0001 * bound + 2e-6 * mag + 1e-7)) ++bad_loose;
              if (bad_tight == 1 && !(std::abs(got - ref) <= 2e-6 * mag + 1e-7))
                ADD_FAILURE() << "first mismatch " << got << " vs " << ref << " mag " << mag;
            }
          EXPECT_EQ(bad_tight, 0) << isa_name(isa) << " " << dtype_name(t) << " cols " << cols << " n " << n;
          EXPECT_EQ(bad_loose, 0) << isa_name(isa) << " " << dtype_name(t) << " cols " << cols << " n " << n;
        }
      }
  }
}

// Batched int8 products (kernels/int8_gemm.h): the same two bounds as decode,
// on the tile kernel of every ISA (AVX2's; AVX-512 VNNI's where the CPU has
// it) and the scalar reference.
TEST(KQuantMatmul, BatchedInt8MatchesReference) {
  IsaGuard guard;
  const int64_t rows = 37;
  for (Isa isa : available_isas()) {
    set_isa(isa);
    for (DType t : kTypes)
      for (int64_t cols : {256, 768}) {
        const auto blocks = random_blocks(t, rows, cols, static_cast<uint32_t>(cols) * 3 + static_cast<int>(t));
        const KQuantView v{t, rows, cols, blocks.data()};
        const std::vector<float> w = dequant(v);
        for (int64_t n : {4, 9}) {
          const std::vector<float> x = random_x(n, cols, static_cast<uint32_t>(n * 31 + cols));
          std::vector<float> y(n * rows, NAN);
          kquant_matmul_int8_gemm(v, x.data(), n, y.data());
          Int8Activations a;
          quantize_activations(x.data(), n, cols, a);
          int bad_tight = 0, bad_loose = 0;
          for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < rows; ++r) {
              double ref = 0, mag = 0, ref32 = 0, bound = 0;
              for (int64_t k = 0; k < cols; ++k) {
                const double wk = w[r * cols + k];
                const double xq = static_cast<double>(a.row_scale(i)[k / 32]) * a.row_q(i)[k];
                ref += wk * xq;
                mag += std::abs(wk * xq);
                ref32 += wk * x[i * cols + k];
                bound += std::abs(wk) * a.row_scale(i)[k / 32] * 0.5;
              }
              const double got = y[i * rows + r];
              if (!(std::abs(got - ref) <= 4e-6 * mag + 1e-7)) ++bad_tight;
              if (!(std::abs(got - ref32) <= 1.0001 * bound + 4e-6 * mag + 1e-7)) ++bad_loose;
            }
          EXPECT_EQ(bad_tight, 0) << isa_name(isa) << " " << dtype_name(t) << " cols " << cols << " n " << n;
          EXPECT_EQ(bad_loose, 0) << isa_name(isa) << " " << dtype_name(t) << " cols " << cols << " n " << n;
        }
      }
  }
}

// Batched (n >= 4) and exact mode reuse the fp32 tile GEMM on the dequantized
// tile: the same bits as dequantize-then-f32_matmul.
TEST(KQuantMatmul, Fp32PathsEqualDequantizedProduct) {
  IsaGuard guard;
  const int64_t rows = 37;
  for (Isa isa : available_isas()) {
    set_isa(isa);
    for (DType t : kTypes)
      for (int64_t cols : {256, 512, 768}) {
        const auto blocks = random_blocks(t, rows, cols, 99 + static_cast<uint32_t>(cols));
        const KQuantView v{t, rows, cols, blocks.data()};
        const std::vector<float> w = dequant(v);
        for (int64_t n : {1, 2, 3, 5}) {
          const std::vector<float> x = random_x(n, cols, static_cast<uint32_t>(n + cols));
          std::vector<float> y(n * rows), ref(n * rows);
          kquant_matmul(v, x.data(), n, y.data(), /*int8=*/false);
          f32_matmul(w.data(), rows, cols, x.data(), n, ref.data());
          int bad = 0;
          for (int64_t j = 0; j < n * rows; ++j) bad += y[j] != ref[j];
          EXPECT_EQ(bad, 0) << isa_name(isa) << " " << dtype_name(t) << " cols " << cols << " n " << n;
        }
      }
  }
}

TEST(KQuantMatmul, LinearView) {
  const int64_t rows = 37, cols = 512;
  for (DType t : kTypes) {
    const auto blocks = random_blocks(t, rows, cols, 5);
    Linear l = Linear::from_ggml_view(t, blocks.data(), rows, cols);
    EXPECT_TRUE(l.is_kquant());
    EXPECT_EQ(l.bytes(), blocks.size());
    EXPECT_EQ(l.format(), std::string(dtype_name(t)));
    std::vector<float> full(rows * cols);
    dequantize_row(t, blocks.data(), full.data(), rows * cols);
    EXPECT_EQ(l.to_f32(), full);
    std::vector<float> r(cols);
    l.row(11, r.data());
    EXPECT_EQ(r, std::vector<float>(full.begin() + 11 * cols, full.begin() + 12 * cols));
    // Exact mode: fp32 activations also for decode.
    const std::vector<float> x = random_x(1, cols, 3);
    std::vector<float> y(rows), ref(rows);
    kernels::set_decode_int8(false);
    weight_matmul(l.view(), x.data(), 1, y.data());
    kernels::set_decode_int8(true);
    f32_matmul(full.data(), rows, cols, x.data(), 1, ref.data());
    EXPECT_EQ(y, ref);
  }
  EXPECT_THROW(Linear::from_ggml_view(DType::Q4_K, nullptr, 4, 320), Error);
}

}  // namespace
}  // namespace optiq
