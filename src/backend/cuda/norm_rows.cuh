// RMS norm pieces shared by elementwise.cu's kernels and the persistent
// decode kernel (persistent.cu): the block sum in double (the CPU sums
// squares in double) and the decode norm split over blocks of one row.
#pragma once
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

// The sum of a block's doubles (the CPU sums squares in double); every thread gets it.
__device__ __forceinline__ double block_sum_double(double v) {
  __shared__ double partial[32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

__device__ __forceinline__ float rms_scale(double ss, int64_t dim, float eps) {
  return static_cast<float>(1.0 / sqrt(ss / static_cast<double>(dim) + static_cast<double>(eps)));
}

// A few rows (decode) over many blocks: every block sums the whole row's
// squares (the row was just written: an L2 read of dim floats), then writes
// its own kSplitThreads elements and their int8 blocks. One block per row
// did all of it alone: ~8 us of dependent steps on one multiprocessor for a
// 16 KB row (ncu on the H200).
constexpr int kSplitThreads = 256;
constexpr int kSplitLoads = static_cast<int>(kSplitNormMaxDim / (4 * kSplitThreads));  // float4s a thread sums

// Block `bx` of row `row` (blocks of kSplitThreads threads); wait() before
// reading x (the previous step's output).
template <typename Wait>
__device__ __forceinline__ void norm_split_block(const float* __restrict__ x, const float* __restrict__ w, int64_t dim,
                                                 float eps, float* out, int8_t* q, float* qscale, int32_t* qsum,
                                                 int64_t bx, int64_t row, Wait&& wait) {
  const int64_t i = bx * kSplitThreads + threadIdx.x;  // this thread's element
  const float wv = i < dim ? __ldg(w + i) : 0.0f;  // constant: fetched before waiting for the previous step
  wait();
  const float* xr = x + row * dim;
  float4 v[kSplitLoads];
#pragma unroll
  for (int k = 0; k < kSplitLoads; ++k) {
    const int64_t e = 4 * (threadIdx.x + static_cast<int64_t>(k) * kSplitThreads);
    v[k] = e < dim ? *reinterpret_cast<const float4*>(xr + e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  double ss = 0.0;
#pragma unroll
  for (int k = 0; k < kSplitLoads; ++k)
    ss += (static_cast<double>(v[k].x) * v[k].x + static_cast<double>(v[k].y) * v[k].y) +
          (static_cast<double>(v[k].z) * v[k].z + static_cast<double>(v[k].w) * v[k].w);
  const float scale = rms_scale(block_sum_double(ss), dim, eps);
  if (i >= dim) return;  // whole warps (dim % 32 == 0)
  const float r = __fmul_rn(__fmul_rn(xr[i], scale), wv);
  out[row * dim + i] = r;
  if (q) int8_block(r, (row * dim + i) / 32, q, qscale, qsum);
}

}  // namespace
}  // namespace optiq::cuda
