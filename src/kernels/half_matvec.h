// Internal: fp16/bf16 matrix-vector products for decode (n < kFusedMaxN).
// The weights are widened to fp32 in registers (F16C vcvtph2ps; bf16 by a
// 16-bit shift) right before the FMAs, several weight rows at once, so that no
// fp32 copy of the tile is written. Accumulation is in fp32 throughout.
#pragma once
#include <cstdint>

#include "kernels/kernels_impl.h"

namespace optiq::kern {

// Output columns r in [r0, r1) of Y for all a.n (< kFusedMaxN) activation
// rows; a.kind is 1 (fp16) or 2 (bf16).
void half_matvec_block_avx2(const DenseArgs& a, int64_t r0, int64_t r1);
void half_matvec_block_avx512(const DenseArgs& a, int64_t r0, int64_t r1);

}  // namespace optiq::kern
