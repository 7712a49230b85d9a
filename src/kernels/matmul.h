// Matrix products against weight matrices stored {rows, cols} (PyTorch's
// {out_features, in_features}): Y[n x rows] = X[n x cols] . W^T, all row-major,
// fp32 activations and fp32 accumulation.
//
// Paths: scalar reference, AVX2+FMA+F16C and AVX-512 (F/BW/VL/DQ), chosen at
// run time from cpuid; OPTIQ_ISA=scalar|avx2|avx512 forces one (a path the CPU
// lacks falls back to the best available). Work is split over output rows with
// OpenMP (core/parallel.h sets the thread count).
//
//  - n < 4 (decode): packed codes are unpacked in registers (byte shuffle +
//    variable shift) and multiplied straight into the fp32 accumulators; the
//    bias is applied once per group through per-group sums of x.
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

void affine_matmul(const AffineMatrixView& W, const float* X, int64_t n, float* Y);
// W row-major fp32 {rows, cols}.
void f32_matmul(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y);
// W row-major fp16 (bf16 = false) or bf16 {rows, cols}, as uint16 words.
void half_matmul(const uint16_t* W, bool bf16, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y);

}  // namespace optiq
