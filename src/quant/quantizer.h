// Affine group quantizers producing MLX-layout matrices (quant/affine.h).
//
//  - minmax: MLX's own rule (mx.quantize): scale from [min, max], the edge with
//    the larger magnitude is represented exactly (the scale is negative when
//    that edge is the max), codes rounded with the unrounded fp32 scale/bias,
//    then scale/bias stored as fp16/bf16. Reproduces mx.quantize bit for bit
//    for fp16/bf16 inputs.
//  - search: per group, a grid over shrunken clipping ranges [lo, hi] inside
//    [min, max], each followed by least-squares refits of scale and bias for the
//    chosen codes (re-rounding codes after each refit). Every candidate's error
//    is measured with scale and bias already rounded to the storage type, and
//    the best candidate wins; min/max is always among the candidates, so search
//    never does worse than the plain min/max range on the (weighted) error.
//
// With `importance` (length cols, >= 0, e.g. mean x^2 of calibration inputs
// per input channel), the error minimised is sum_j importance[j] (w - w^)^2.
#pragma once
#include <cstdint>

#include "quant/affine.h"

namespace optiq {

enum class QuantMethod { MinMax, Search };

struct QuantizeOptions {
  QuantMethod method = QuantMethod::Search;
  bool bf16_scales = false;           // store scales/biases as bf16 (else fp16)
  const float* importance = nullptr;  // optional, length cols
  int grid = 6;                       // search: number of clipping candidates
  int refit_iters = 3;                // search: least-squares refits per candidate
};

// Quantizes a row-major {rows, cols} fp32 matrix; parallel over rows (OpenMP).
AffineMatrix quantize(const float* w, int64_t rows, int64_t cols, AffineFormat fmt, const QuantizeOptions& opt = {});

// The words a matrix to round is stored in (fp32, or the fp16/bf16 words of a
// checkpoint, read as they are).
enum class SourceWords { F32, F16, BF16 };

// QuantMethod::MinMax rounding fused from the source words to the packed
// matrix: bit for bit quantize(widened rows, {.method = MinMax, .bf16_scales})
// on every CPU, without an fp32 copy of the rows (quantizer_minmax.inc),
// vectorised for AVX2 / AVX-512 where present. quantize_minmax_rows fills rows
// [r0, r1) of arrays laid out as AffineMatrix's (packed rows * cols*bits/32,
// scales and biases rows * cols/group_size) on the calling thread;
// quantize_minmax makes the whole matrix on the thread pool.
void quantize_minmax_rows(const void* w, SourceWords type, int64_t cols, int64_t r0, int64_t r1, AffineFormat fmt,
                          bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases);
AffineMatrix quantize_minmax(const void* w, SourceWords type, int64_t rows, int64_t cols, AffineFormat fmt,
                             bool bf16_scales);

struct QuantError {
  double mse = 0;           // mean (w - w^)^2
  double weighted_mse = 0;  // mean importance[j] (w - w^)^2 (== mse without importance)
  double rel_rmse = 0;      // sqrt(sum (w-w^)^2 / sum w^2)
};

// Reconstruction error of `q` against the fp32 matrix w (same shape).
QuantError quantization_error(const float* w, const AffineMatrixView& q, const float* importance = nullptr);

}  // namespace optiq
