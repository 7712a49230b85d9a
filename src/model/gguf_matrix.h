// One weight matrix (a Linear in any storage) as GGUF blocks, row by row, for
// the GGUF exporter (model/save_gguf.h). What each storage becomes:
//   GGUF k-quant blocks        -> the same blocks, byte for byte
//   affine groups of 32, 4/5/8 bits, fp16-exact scales
//     symmetric (from Q4_0/Q5_0/Q8_0) -> Q4_0 / Q5_0 / Q8_0, losslessly
//     with biases, 4 or 5 bits        -> Q4_1 / Q5_1, losslessly (d = scale, m = bias)
//   affine groups of 32 that no block type holds exactly (8 bits with
//     arbitrary biases: Q8_0 has none; bf16 scales that fp16 rounds)
//                              -> re-quantized from their dequantized values
//                                 to Q8_0 / Q4_1 / Q5_1 (GgufMatrix::requantized)
//   fp16 / bf16 words          -> F16 / BF16 as they are
//   fp32                       -> F16 (BF16 when asked), as llama.cpp's converter
// Any other affine format (groups of 64/128, 2/3/6 bits) has no GGUF block
// type: an error naming the tensor and what to plan instead.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/linear.h"

namespace optiq {

struct GgufMatrix {
  DType type = DType::F16;
  bool requantized = false;  // not lossless: re-quantized from dequantized values
  size_t row_bytes = 0;
};

// The GGUF type of `lin`'s storage; `tensor` names it in errors; bf16: the
// type of fp32 matrices (BF16 instead of F16).
GgufMatrix gguf_matrix_type(const Linear& lin, const std::string& tensor, bool bf16);

// Writes row r of `lin` as `m.type` (m.row_bytes bytes at dst).
void write_gguf_row(const Linear& lin, const GgufMatrix& m, int64_t r, uint8_t* dst);

}  // namespace optiq
