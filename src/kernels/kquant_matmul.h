// Products against GGUF k-quant matrices (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, and
// the non-linear IQ4_XS and IQ4_NL) read straight from their ggml blocks (256
// weights per block, 32 for IQ4_NL; a row is consecutive blocks), e.g.
// borrowed from a memory-mapped GGUF file. IQ4s take the fp32 path below.
//
//  - n < 4 (decode), int8 mode (kernels::decode_int8_enabled(), the default):
//    activations are rounded to int8 blocks of 32 (kernels/act_quant.h) and
//    each sub-block is an integer dot product, scaled once:
//      y += d*sc*s_x*dot(q, q_x) - dmin*m*s_x*sum(q_x).
//    AVX-512 (VNNI for Q4_K) and AVX2 paths for Q4_K and Q6_K; the other types
//    use a generic unpack-to-int8 path (compiled per ISA).
//  - n >= 4, or exact mode (int8 = false): 16-row tiles are dequantized to fp32
//    (bit-identical to quant/ggml_dequant) and multiplied by the same fp32 tile
//    GEMM as f32_matmul, so the result equals dequantize-then-f32_matmul.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"

namespace optiq {

// Types that run on these kernels: the k-quants and the IQ4s.
bool is_kquant(DType t);
bool is_iq4(DType t);

// A borrowed {rows, cols} matrix of ggml k-quant blocks.
struct KQuantView {
  DType dtype = DType::Q4_K;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  size_t row_bytes() const;  // cols / block elements blocks
  size_t bytes() const { return row_bytes() * static_cast<size_t>(rows); }
  const uint8_t* row(int64_t r) const { return data + row_bytes() * static_cast<size_t>(r); }
};

// Throws unless dtype is a k-quant, cols is a positive multiple of 256, rows > 0
// and data is set.
void check_view(const KQuantView& v);

// Y[n x rows] = X[n x cols] . W^T. int8: use the int8-activation kernels for
// n < 4 (otherwise fp32 activations, exact up to fp32 rounding).
void kquant_matmul(const KQuantView& W, const float* X, int64_t n, float* Y, bool int8);

// One row / the whole matrix as fp32 (quant/ggml_dequant's values).
void kquant_dequantize_row(const KQuantView& W, int64_t r, float* out);

}  // namespace optiq
