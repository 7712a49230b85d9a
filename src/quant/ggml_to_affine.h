// Lossless conversion of ggml's 32-weight affine block types (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0) to MLX-layout affine groups of 32 with fp16 scales, so
// that GGUF models run on the packed kernels without a float copy. Every
// weight dequantizes to exactly the value ggml gives. Symmetric types (Q4_0,
// Q5_0, Q8_0) store no biases (AffineMatrix::zero_point 8, 16, 128: the bias
// -zero * d is exact), so the matrix takes the bytes of its GGUF blocks.
#pragma once
#include "core/tensor.h"
#include "quant/affine.h"

namespace optiq {

bool ggml_maps_to_affine(DType t);
// t must be 2-D {rows, cols} of a type for which ggml_maps_to_affine is true.
// release_source: t.data points into a read-only file mapping; each block of
// rows' source pages are dropped from RSS as soon as it is converted, so that
// loading needs about the converted size, not file + converted.
AffineMatrix ggml_to_affine(const TensorView& t, bool release_source = false);

}  // namespace optiq
