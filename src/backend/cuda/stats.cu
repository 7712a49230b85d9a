// The accuracy path's statistics (Backend::log_softmax_rows, kl_sum,
// gram_quadratic's final dot product): reductions over a row or a matrix,
// summed in double as the CPU backend sums them (kernels/divergence.h), so
// profiles taken on either agree.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {

namespace {

constexpr int kRowThreads = 512;

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum (double) over the block; every thread gets it. scratch: 32 doubles of shared memory.
__device__ double block_sum_d(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum_d(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0;
  return warp_sum_d(v);
}
__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// logsumexp of a row: max in float (exact), the sum of exponentials in double.
__device__ double row_lse(const float* __restrict__ x, int64_t vocab, float* fscratch, double* dscratch) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) m = fmaxf(m, x[v]);
  m = block_max(m, fscratch);
  double s = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) s += exp(static_cast<double>(x[v]) - m);
  s = block_sum_d(s, dscratch);
  return m + log(s);
}

__global__ void log_softmax_kernel(float* x, int64_t vocab) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  pdl_trigger();
  pdl_wait();
  float* row = x + static_cast<int64_t>(blockIdx.x) * vocab;
  const double lse = row_lse(row, vocab, fscratch, dscratch);
  __syncthreads();
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) row[v] = static_cast<float>(row[v] - lse);
}

template <bool kBf16>
__global__ void kl_rows_kernel(const void* __restrict__ ref, const float* __restrict__ logits, int64_t vocab,
                               double* __restrict__ row_kl) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  pdl_trigger();
  pdl_wait();
  const int64_t r = blockIdx.x;
  const float* lg = logits + r * vocab;
  const double lse = row_lse(lg, vocab, fscratch, dscratch);
  double kl = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const double lp = kBf16 ? static_cast<double>(bf16_word(static_cast<const uint16_t*>(ref)[r * vocab + v]))
                            : static_cast<double>(static_cast<const float*>(ref)[r * vocab + v]);
    kl += exp(lp) * (lp - (static_cast<double>(lg[v]) - lse));
  }
  kl = block_sum_d(kl, dscratch);
  if (threadIdx.x == 0) row_kl[r] = fmax(kl, 0.0);
}

__global__ void dot_kernel(const float* __restrict__ x, const float* __restrict__ y, int64_t n,
                           double* __restrict__ partial) {
  __shared__ double dscratch[32];
  pdl_trigger();
  pdl_wait();
  double s = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    s += static_cast<double>(x[i]) * y[i];
  s = block_sum_d(s, dscratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One warp per row: embedding rows are short (a few thousand values) and many.
__global__ void row_sq_kernel(const float* __restrict__ d, int64_t rows, int64_t cols, double* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* row = d + r * cols;
  double s = 0;
  for (int64_t j = threadIdx.x & 31; j < cols; j += 32) s += static_cast<double>(row[j]) * row[j];
  s = warp_sum_d(s);
  if ((threadIdx.x & 31) == 0) out[r] = s;
}

}  // namespace

void row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out, cudaStream_t s) {
  if (rows <= 0) return;
  constexpr int kWarps = 8;
  launch(row_sq_kernel, static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, s, d, rows, cols, out);
  OPTIQ_CUDA_LAUNCHED();
}

void log_softmax_rows(float* x, int64_t rows, int64_t vocab, cudaStream_t s) {
  if (rows <= 0) return;
  launch(log_softmax_kernel, static_cast<unsigned>(rows), kRowThreads, 0, s, x, vocab);
  OPTIQ_CUDA_LAUNCHED();
}

void kl_rows(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab, double* row_kl,
             cudaStream_t s) {
  if (rows <= 0) return;
  if (ref_bf16)
    launch(kl_rows_kernel<true>, static_cast<unsigned>(rows), kRowThreads, 0, s, ref, logits, vocab, row_kl);
  else
    launch(kl_rows_kernel<false>, static_cast<unsigned>(rows), kRowThreads, 0, s, ref, logits, vocab, row_kl);
  OPTIQ_CUDA_LAUNCHED();
}

void dot_partials(const float* x, const float* y, int64_t n, double* partial, cudaStream_t s) {
  launch(dot_kernel, kDotBlocks, 256, 0, s, x, y, n, partial);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
