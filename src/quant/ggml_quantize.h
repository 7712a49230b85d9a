// Quantizers for GGUF's block types, writing blocks in llama.cpp's layouts
// (the ones quant/ggml_dequant.h reads, byte for byte as gguf-py and
// llama.cpp decode them):
//   32-weight blocks  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//   256-weight k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
//   non-linear 4-bit IQ4_NL (32) and IQ4_XS (256): quant/ggml_iq4.h
//
// The algorithms are llama.cpp's, written again here: per sub-block a scale
// (and for the asymmetric types a min) fitted by weighted least squares over a
// grid of candidate scales, the sub-block scales then quantized against a
// super-block scale (6, 4 or 8 bits), and the codes rounded once more with the
// scales as stored. The weight of each input in the fit is what llama.cpp
// uses: without importance, |x|-based (the reference "ref" quantizers);
// with importance (mean x^2 of the calibration activations, as llama.cpp's
// imatrix), importance[j] * sqrt(sigma^2 + x_j^2).
//
// `thorough` widens the scale grid and adds a coordinate-descent pass on the
// codes (optiq's search, QuantMethod::Search); without it the grid is
// llama.cpp's reference one, and Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 blocks are
// exactly those of llama.cpp's reference quantizers (quantize_row_*_ref).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace optiq {

// True for the block types this file writes.
bool ggml_can_quantize(DType t);

// Quantizes n weights (a multiple of the type's block size) into blocks.
// importance: n weights or null.
void ggml_quantize_row(DType t, const float* x, int64_t n, const float* importance, bool thorough, uint8_t* out);

}  // namespace optiq
