// Internal to quant/quantizer*.cpp: the per-group search entry points, one per
// ISA (the same source, quantizer_search.inc, compiled three ways).
#pragma once
#include <cstdint>

namespace optiq::detail {

// MLX's min/max scale and bias (unrounded fp32) for one group.
void minmax_params(const float* w, int gs, int bits, float* scale_out, float* bias_out);
// The same from the group's minimum and maximum.
void minmax_params_of(float w_min, float w_max, int bits, float* scale_out, float* bias_out);

using SearchFn = void (*)(const float* w, const float* imp, int gs, int bits, bool bf16, int grid, int refit_iters,
                          uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_base(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_avx2(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);
void quantize_group_search_avx512(const float* w, const float* imp, int gs, int bits, bool bf16, int grid,
                                  int refit_iters, uint8_t* q, uint16_t* s_out, uint16_t* b_out);

}  // namespace optiq::detail
