// Batched products (prefill, n >= 4 activation rows) with int8 activations
// against packed weights of any width: MLX affine 2..8 bits (and the GGUF
// Q4_0/Q4_1/Q5_0/Q8_0 matrices loaded as affine) and GGUF k-quants.
//
// Every format is first written, 16 weight rows at a time, into one common
// tile: unsigned byte codes c and per-sub-block (16 or 32 inputs) fp32 scale
// s and bias b, so that w = s * c + b. The activations are rounded once per
// call to int8 blocks of 32 (kernels/act_quant.h, as the decode path), and
//   y[i][r] = sum_j  s[j][r] * sx[i][j] * dot(c, q_x)_j  +  b[j][r] * xs[i][j],
// xs[i][j] = sx[i][j] * sum(q_x over sub-block j) (the bias term's exact input).
// The tile's codes are interleaved the way AVX-512 VNNI wants them (4 inputs of
// 16 rows per 64-byte vector), so one vpdpbusd per 4 inputs serves 16 rows and
// one broadcast of 4 activation bytes; each tile is reused for all n rows.
//
// Used when int8 numerics are on (kernels::decode_int8_enabled(), the CLI's
// `--numerics fast`) and a SIMD kernel runs: AVX-512 VNNI, AVX-VNNI or AVX2
// (the same bits on each); with the scalar ISA the batched products stay fp32
// (dequantized tiles, kernels/matmul.h).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/act_quant.h"
#include "kernels/kquant_matmul.h"
#include "quant/affine.h"

namespace optiq {

// True when batched products with packed weights take the int8 path: int8
// numerics on and a SIMD ISA active (or OPTIQ_FORCE_INT8_PREFILL set: the
// scalar kernel, for tests on the scalar ISA).
bool int8_prefill_active();

// quantize_activation_rows / quantize_activations through the active ISA's
// rounding (AVX-512, AVX2 or the portable loop; the same bytes on each).
void quantize_activation_rows_simd(const float* X, int64_t i0, int64_t i1, Int8Activations& out);
void quantize_activations_simd(const float* X, int64_t n, int64_t cols, Int8Activations& out);

// Y[n x rows] = X[n x cols] . W^T through int8 tiles (any n >= 1; meant for
// n >= 4), whatever the numerics switch says. The kernel follows the active
// ISA (avx512 with AVX-512 VNNI, else AVX-VNNI or AVX2 maddubs; the scalar
// reference kernel under OPTIQ_ISA=scalar).
void affine_matmul_int8_gemm(const AffineMatrixView& W, const float* X, int64_t n, float* Y);
void kquant_matmul_int8_gemm(const KQuantView& W, const float* X, int64_t n, float* Y);

namespace kern {

constexpr int kTileRows = 16;

// Up to 16 weight rows in the common int8 form (see above).
struct Int8Tile {
  int64_t K = 0;  // inputs (a multiple of 32)
  int sub = 32;   // inputs per scale: 16 or 32
  int rows = 0;   // valid rows (the rest are zero)
  bool wide = false;  // codes may reach 255 (8-bit affine): the AVX2 kernel without VNNI shifts them
  std::vector<uint8_t> codes;      // (K/4) x 16 rows x 4 inputs
  std::vector<float> scale, bias;  // (K/sub) x 16 rows
  void reset(int64_t k, int sub_block, int valid_rows);
  uint8_t& code(int m, int64_t k) { return codes[(k / 4 * kTileRows + m) * 4 + k % 4]; }
};

void build_int8_tile(const AffineMatrixView& W, int64_t r0, int64_t r1, Int8Tile& t);
void build_int8_tile(const KQuantView& W, int64_t r0, int64_t r1, Int8Tile& t);

struct Int8GemmArgs {
  const Int8Activations* A;  // n rows
  const float* xs;           // n x (K / sub): sx * sum(q_x) per sub-block
  int64_t n;
  float* Y;  // row i, column r0 + m at Y[i * ldy + r0 + m]
  int64_t ldy;
};

// xs for sub-blocks of `sub` (16 or 32) inputs.
void activation_sub_sums(const Int8Activations& A, int sub, std::vector<float>& xs);

void int8_gemm_tile_scalar(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0);
void int8_gemm_tile_avx512(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0);  // AVX-512 VNNI
// The same sums in 256-bit registers (the same bits): AVX2 maddubs, and AVX-VNNI (VEX vpdpbusd).
void int8_gemm_tile_avx2(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0);
void int8_gemm_tile_avxvnni(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0);

// quantize_activation_rows with AVX-512 / AVX2: identical results (same rounding).
void quantize_activation_rows_avx512(const float* x, int64_t i0, int64_t i1, Int8Activations& out);
void quantize_activation_rows_avx2(const float* x, int64_t i0, int64_t i1, Int8Activations& out);

}  // namespace kern
}  // namespace optiq
