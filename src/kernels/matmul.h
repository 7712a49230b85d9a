// Matrix products against weight matrices stored {rows, cols} (PyTorch's
// {out_features, in_features}): Y[n x rows] = X[n x cols] . W^T, all row-major,
// fp32 activations and fp32 accumulation.
//
// Paths: scalar reference, AVX2+FMA+F16C and AVX-512 (F/BW/VL/DQ), chosen at
// run time from cpuid; OPTIQ_ISA=scalar|avx2|avx512 forces one (a path the CPU
// lacks falls back to the best available). Work is split over output rows with
// the thread pool (core/parallel.h).
//
//  - n < 4 (decode), int8_decode() on (default): X is rounded once per call to
//    int8 blocks of 32 (kernels/act_quant.h) and multiplied with the codes by
//    integer dot products (AVX-512 VNNI vpdpbusd; AVX2 maddubs, or AVX-VNNI
//    when the CPU has it; scalar reference); 4-bit nibbles meet X permuted to
//    their order, 8-bit bytes directly, 2/3/5/6-bit codes are unpacked to
//    bytes per row. fp32 per block: s_w * s_x * dot, bias via per-group sums.
//  - n < 4 with int8 decode off (--numerics exact): packed codes are unpacked
//    in registers (byte shuffle + variable shift) and multiplied straight into
//    the fp32 accumulators; the bias is applied once per group through
//    per-group sums of x.
//  - n >= 4 (prefill): each block of 16 weight rows is dequantized once into an
//    fp32 tile and reused for all n activation rows (4x4 register tiles).
#pragma once
#include <cstdint>

#include "quant/affine.h"

namespace optiq {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
// The best supported path, or OPTIQ_ISA's choice (read once).
Isa active_isa();
// Tests/benchmarks: force a path for later calls (clamped to what the CPU has);
// returns the path that will actually be used.
Isa set_isa(Isa isa);

// AVX2 paths: use AVX-VNNI (VEX vpdpbusd) for the int8 decode kernels when the
// CPU has it (default; OPTIQ_ISA=avx2-novnni turns it off). set_avx_vnni
// returns what will be used.
bool avx_vnni_enabled();
bool set_avx_vnni(bool on);

// Decode numerics for packed affine weights (process-wide, default on): with
// int8 decode, products with n < 4 activation rows round the activations to
// int8 blocks of 32 (kernels/act_quant.h) and use integer dot products, and
// batched ones (n >= 4) take the int8 GEMM where the CPU has AVX-512 VNNI
// (kernels/int8_gemm.h); off, every product is exact fp32. The same switch
// as kernels::set_decode_int8 (act_quant.h), which GGUF k-quants use.
void set_int8_decode(bool on);
bool int8_decode();

// Y = X W^T: the int8 decode path when n < 4 and int8_decode(), the int8
// GEMM when n >= 4 and int8_prefill_active(), else fp32.
void affine_matmul(const AffineMatrixView& W, const float* X, int64_t n, float* Y);
// Always fp32 activations (dequantize-and-FMA), any n.
void affine_matmul_f32(const AffineMatrixView& W, const float* X, int64_t n, float* Y);
// Always int8 activations (any n; meant for decode): X rounded by
// quantize_activations, then integer dot products per 32-input block.
void affine_matmul_int8(const AffineMatrixView& W, const float* X, int64_t n, float* Y);
// W row-major fp32 {rows, cols}.
void f32_matmul(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y);
// W row-major fp16 (bf16 = false) or bf16 {rows, cols}, as uint16 words.
void half_matmul(const uint16_t* W, bool bf16, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y);

}  // namespace optiq
