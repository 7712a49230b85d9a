// llama.cpp's non-linear 4-bit block types: each weight is a 4-bit index into
// one fixed table of 16 signed levels (denser near zero, where most weights
// are), times a block scale.
//   IQ4_NL: 32 weights in 18 bytes: d (fp16), qs[16] (4.5 bits a weight).
//   IQ4_XS: 256 weights in 136 bytes: d (fp16), scales_h (u16), scales_l[4],
//           qs[128]; block of 32 j has scale d * (ls_j - 32), ls_j a 6-bit
//           value (low 4 bits in scales_l, high 2 in scales_h) (4.25 bits).
// In both, qs byte j of a block of 32 holds weight j (low nibble) and weight
// j + 16 (high nibble), as Q4_0. Layouts: ggml-common.h; the code is ours.
#pragma once
#include <cstdint>

namespace optiq::iq4 {

inline constexpr int8_t kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// The quantizers follow llama.cpp's procedure (quantize_row_iq4_nl_impl):
// per block of 32 a scale fitted by weighted least squares over 2*7+1
// candidate scales, the weight of an input being importance * sqrt(sigma^2 +
// x^2) with an importance vector, else x^2; IQ4_XS then rounds the block
// scales to 6 bits under a super-block scale and re-picks the indices.
// `thorough` (optiq's search) also tries a finer grid of candidate scales and
// keeps whichever blocks are closer to x.
void quantize_nl(const float* x, const float* importance, bool thorough, uint8_t* out);  // 32 weights
void quantize_xs(const float* x, const float* importance, bool thorough, uint8_t* out);  // 256 weights

}  // namespace optiq::iq4
