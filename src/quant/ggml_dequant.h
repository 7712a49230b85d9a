// Dequantization of ggml tensor types (the layouts of llama.cpp's ggml-quants)
// to float32: plain F32/F16/BF16 and the block types Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0 (32 per block) and the k-quants Q2_K..Q6_K (256 per block).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace optiq {

// True for the ggml block types (Q4_0 ... Q6_K); false for F32/F16/BF16 etc.
bool is_ggml_block_type(DType t);
// True for every type dequantize_row accepts.
bool can_dequantize(DType t);

// Dequantizes n consecutive elements (n a multiple of the block size) from src
// (dtype_bytes(t, n) bytes) into dst. Throws optiq::Error for other types or n.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Whole tensor to f32 in row-major (outermost-first) order; rows are the
// innermost dimension and are done in parallel (OpenMP) for big tensors.
// Checks t.nbytes against the shape.
std::vector<float> dequantize(const TensorView& t);
// Same, into caller memory of t.numel() floats.
void dequantize_into(const TensorView& t, float* dst);

}  // namespace optiq
