// Internal to quant/quantizer*.cpp: the per-group search and the fused min/max rows, one per
// ISA (the same sources, quantizer_search.inc and quantizer_minmax.inc, compiled three ways).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace optiq::detail {

// MLX's min/max scale and bias (unrounded fp32) for one group.
void minmax_params(const float* w, int gs, int bits, float* scale_out, float* bias_out);
// The same from the group's minimum and maximum.
void minmax_params_of(float w_min, float w_max, int bits, float* scale_out, float* bias_out);
// Its body, inlined into each ISA's build (IEEE operations only, no
// contraction in the quantizer files: the same bits everywhere).
inline void minmax_params_inline(float w_min, float w_max, int bits, float* scale_out, float* bias_out) {
  const float n_bins = static_cast<float>((1 << bits) - 1);
  const float eps = 1e-7f;
  const bool min_edge = std::abs(w_min) > std::abs(w_max);
  float scale = std::max((w_max - w_min) / n_bins, eps);
  scale = min_edge ? scale : -scale;
  const float edge = min_edge ? w_min : w_max;
  const float q0 = std::rint(edge / scale);
  float bias = 0;
  if (q0 != 0) {
    scale = edge / q0;
    bias = edge;
  }
  *scale_out = scale;
  *bias_out = bias;
}

using SearchFn = void (*)(const float* w, const float* imp, int gs, int bits, bool bf16, int grid, int refit_iters,
                          uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_base(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_avx2(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_avx512(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                  int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);

// Fused min/max rows (quantizer_minmax.inc): rows [r0, r1) of a row-major
// matrix of `cols` words of `type` (0 fp32, 1 fp16, 2 bf16) into their packed
// words, scales and biases (the whole matrix's arrays, row r at r * per-row).
using MinMaxRowsFn = void (*)(const void* src, int type, int64_t cols, int64_t r0, int64_t r1, int bits, int gs,
                              bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases);
void minmax_rows_base(const void* src, int type, int64_t cols, int64_t r0, int64_t r1, int bits, int gs,
                      bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases);
void minmax_rows_avx2(const void* src, int type, int64_t cols, int64_t r0, int64_t r1, int bits, int gs,
                      bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases);
void minmax_rows_avx512(const void* src, int type, int64_t cols, int64_t r0, int64_t r1, int bits, int gs,
                        bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases);

}  // namespace optiq::detail
