// The decode RMS norm's sum of squares, shared by the split norm kernel
// (elementwise.cu) and the products that norm their input while staging it
// (matvec.cu): one function, one summation order, so the two give the same
// bits and a product may stand in for the norm kernel.
#pragma once
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {

// Threads of a block that sums a row (the split norm's block size, and the
// staged products' 8 warps).
constexpr int kRowSumThreads = 256;

// Float4s of a row each of those threads holds.
constexpr int kRowLoads = static_cast<int>(kSplitNormMaxDim / (4 * kRowSumThreads));

// sum_i x_i^2 of a row (dim <= kSplitNormMaxDim, a multiple of 4, 16-byte
// aligned) in double, by a block of kRowSumThreads threads: thread t loads
// and sums the float4s at 4 (t + 256 k) (left in v; zeros past the row),
// then block_sum_double. Every thread gets it.
__device__ __forceinline__ double row_sum_squares(const float* xr, int64_t dim, float4 (&v)[kRowLoads]) {
#pragma unroll
  for (int k = 0; k < kRowLoads; ++k) {
    const int64_t e = 4 * (threadIdx.x + static_cast<int64_t>(k) * kRowSumThreads);
    v[k] = e < dim ? *reinterpret_cast<const float4*>(xr + e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  double ss = 0.0;
#pragma unroll
  for (int k = 0; k < kRowLoads; ++k)
    ss += (static_cast<double>(v[k].x) * v[k].x + static_cast<double>(v[k].y) * v[k].y) +
          (static_cast<double>(v[k].z) * v[k].z + static_cast<double>(v[k].w) * v[k].w);
  return block_sum_double(ss);
}
__device__ __forceinline__ double row_sum_squares(const float* xr, int64_t dim) {
  float4 v[kRowLoads];
  return row_sum_squares(xr, dim, v);
}

// out = x * scale * w, element by element, as every CUDA norm rounds it.
__device__ __forceinline__ float normed(float x, float scale, float w) { return __fmul_rn(__fmul_rn(x, scale), w); }

}  // namespace optiq::cuda
