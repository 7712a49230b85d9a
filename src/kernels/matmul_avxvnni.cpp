// AVX2 + AVX-VNNI integer decode kernels (VEX vpdpbusd); compiled with
// -mavxvnni by CMake and only called after a cpuid check (kernels/matmul.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/int8_gemm.h"
#include "kernels/kernels_impl.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

#define OPTIQ_INT8_VNNI 1
#include "kernels/int8_kernels_256.inc"
#undef OPTIQ_INT8_VNNI

}  // namespace

void int8_block_avxvnni(const Int8Args& a, int64_t r0, int64_t r1) { i8::int8_block_impl(a, r0, r1); }
void int8_gemm_tile_avxvnni(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0) { i8::int8_gemm_tile_impl(t, a, r0); }

}  // namespace optiq::kern
