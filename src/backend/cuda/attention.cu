// Attention on the GPU.
//  - Decode (a few queries): flash-decoding. The keys a query sees are cut
//    into `splits` ranges; one block per (kv head, range, query) scores its
//    range for all query heads that share the kv head (GQA: K and V are read
//    once for the group), keeps a local max and sum, and writes the partial
//    output; a second kernel combines the ranges. The ranges are computed from
//    the position at run time, so a recorded step (CUDA graph) serves every
//    position.
//  - Prefill: scores and the weighted sum of V are cuBLAS GEMMs
//    (cuda_backend.cu); attention_softmax is the step between them.
#include <cfloat>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

constexpr int kDecodeThreads = 128;

__device__ __forceinline__ int first_key(int pos, int window) {
  return window > 0 && pos >= window ? pos - window + 1 : 0;
}

__device__ __forceinline__ float capped(float s, float cap) { return cap > 0.0f ? cap * tanhf(s / cap) : s; }

template <class T>
__device__ __forceinline__ float kv_at(const T* p);
template <>
__device__ __forceinline__ float kv_at<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ float kv_at<__half>(const __half* p) { return __half2float(*p); }

// Partial results: for (query i, head h, split s) hd + 2 floats: max, sum, out[hd].
template <class T>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_kernel(AttentionParams p, const float* __restrict__ q, DevPos pos0, const T* __restrict__ kc,
                  const T* __restrict__ vc, int splits, int chunk_cap, float* __restrict__ partial) {
  extern __shared__ float smem[];
  const int g = blockIdx.x, s = blockIdx.y, i = blockIdx.z;
  const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
  float* qs = smem;                      // group x hd
  float* sc = qs + group * hd;           // group x chunk_cap
  float* stats = sc + group * chunk_cap; // group x 2: max, sum
  const int pos = (pos0.dev ? *pos0.dev : 0) + pos0.offset + i;
  const int t0 = first_key(pos, p.window), len = pos - t0 + 1;
  const int chunk = (len + splits - 1) / splits;
  const int a = t0 + s * chunk, b = min(pos + 1, a + chunk);  // keys [a, b)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = kDecodeThreads / 32;
  float* part = partial + (static_cast<int64_t>(i) * p.n_heads + static_cast<int64_t>(g) * group) * splits * (hd + 2);
  if (a >= b) {  // an empty range: contributes nothing
    for (int j = tid; j < group; j += kDecodeThreads) {
      float* o = part + (static_cast<int64_t>(j) * splits + s) * (hd + 2);
      o[0] = -FLT_MAX;
      o[1] = 0.0f;
    }
    for (int idx = tid; idx < group * hd; idx += kDecodeThreads)
      part[(static_cast<int64_t>(idx / hd) * splits + s) * (hd + 2) + 2 + idx % hd] = 0.0f;
    return;
  }
  for (int idx = tid; idx < group * hd; idx += kDecodeThreads)
    qs[idx] = q[static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(g) * group * hd + idx];
  __syncthreads();
  // Scores: a warp per key, lanes across the head dimension.
  for (int t = a + warp; t < b; t += warps) {
    const T* kt = kc + static_cast<int64_t>(t) * p.kv_stride + static_cast<int64_t>(g) * hd;
    for (int j = 0; j < group; ++j) {
      float d = 0.0f;
      for (int e = lane; e < hd; e += 32) d = fmaf(qs[j * hd + e], kv_at(kt + e), d);
      d = warp_sum(d);
      if (lane == 0) sc[j * chunk_cap + (t - a)] = capped(d * p.scale, p.softcap);
    }
  }
  __syncthreads();
  // Softmax pieces per head: a warp per head.
  for (int j = warp; j < group; j += warps) {
    float* row = sc + j * chunk_cap;
    float m = -FLT_MAX;
    for (int t = lane; t < b - a; t += 32) m = fmaxf(m, row[t]);
    m = warp_max(m);
    float l = 0.0f;
    for (int t = lane; t < b - a; t += 32) {
      const float e = expf(row[t] - m);
      row[t] = e;
      l += e;
    }
    l = warp_sum(l);
    if (p.f16_probs) {  // one range (the host makes sure): normalise, round like llama.cpp
      const float inv = 1.0f / l;
      for (int t = lane; t < b - a; t += 32) row[t] = round_to_f16(row[t] * inv);
      m = 0.0f;
      l = 1.0f;
    }
    if (lane == 0) stats[2 * j] = m, stats[2 * j + 1] = l;
  }
  __syncthreads();
  for (int idx = tid; idx < group * hd; idx += kDecodeThreads) {
    const int j = idx / hd, e = idx % hd;
    const float* row = sc + j * chunk_cap;
    const T* vt = vc + static_cast<int64_t>(a) * p.kv_stride + static_cast<int64_t>(g) * hd + e;
    float acc = 0.0f;
    for (int t = 0; t < b - a; ++t) acc = fmaf(row[t], kv_at(vt + static_cast<int64_t>(t) * p.kv_stride), acc);
    float* o = part + (static_cast<int64_t>(j) * splits + s) * (hd + 2);
    o[2 + e] = acc;
    if (e == 0) o[0] = stats[2 * j], o[1] = stats[2 * j + 1];
  }
}

// One block per (head, query): combines the splits' partial softmaxes. The
// splits' weights go through shared memory so that every load below is
// independent of the one before (a chain of dependent loads costs a memory
// latency each).
constexpr int kMaxSplits = 64;
__global__ void combine_kernel(AttentionParams p, int splits, const float* __restrict__ partial, float* out) {
  __shared__ float weight[kMaxSplits];
  __shared__ float red[32];
  const int h = blockIdx.x, i = blockIdx.y, hd = p.head_dim;
  const float* part = partial + (static_cast<int64_t>(i) * p.n_heads + h) * splits * (hd + 2);
  const int s = threadIdx.x;
  const float m_s = s < splits ? part[s * (hd + 2)] : -FLT_MAX;
  const float l_s = s < splits ? part[s * (hd + 2) + 1] : 0.0f;
  // Block max of m_s (splits <= blockDim.x).
  float m = warp_max(m_s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = (threadIdx.x & 31) < static_cast<int>(blockDim.x >> 5) ? red[threadIdx.x & 31] : -FLT_MAX;
  m = warp_max(m);
  const float e_s = s < splits && l_s > 0.0f ? expf(m_s - m) : 0.0f;
  const float l = block_sum(l_s * e_s, red);
  if (s < splits) weight[s] = e_s / l;
  __syncthreads();
  for (int e = threadIdx.x; e < hd; e += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 8
    for (int k = 0; k < splits; ++k) acc = fmaf(part[k * (hd + 2) + 2 + e], weight[k], acc);
    out[static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(h) * hd + e] = acc;
  }
}

// One block per (head, query) row of scores: keys 0..pos0+i are in the row;
// those before the window and after the query become 0.
__global__ void softmax_kernel(AttentionParams p, float* S, int64_t n, int64_t ld, int pos0, __half* p16) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;  // h * n + i
  const int i = static_cast<int>(row % n);
  const int pos = pos0 + i, t0 = first_key(pos, p.window);
  float* sr = S + row * ld;
  const int64_t T = pos0 + n;
  float m = -FLT_MAX;
  for (int64_t t = t0 + threadIdx.x; t <= pos; t += blockDim.x) {
    const float v = capped(sr[t] * p.scale, p.softcap);
    sr[t] = v;
    m = fmaxf(m, v);
  }
  // Block max: every warp reduces the per-warp maxima itself.
  m = warp_max(m);
  const int lane = threadIdx.x & 31;
  if (lane == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : -FLT_MAX;
  m = warp_max(m);
  __syncthreads();
  float l = 0.0f;
  for (int64_t t = t0 + threadIdx.x; t <= pos; t += blockDim.x) {
    const float e = expf(sr[t] - m);
    sr[t] = e;
    l += e;
  }
  l = block_sum(l, red);
  const float inv = 1.0f / l;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    float v = (t >= t0 && t <= pos) ? sr[t] * inv : 0.0f;
    if (p.f16_probs) v = round_to_f16(v);
    sr[t] = v;
    if (p16) p16[row * ld + t] = __float2half_rn(v);
  }
}

}  // namespace

int64_t attention_decode_partial_floats(const AttentionParams& p, int n, int splits) {
  return static_cast<int64_t>(n) * p.n_heads * splits * (p.head_dim + 2);
}

void attention_decode(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                      float* partial, float* out, cudaStream_t s) {
  if (n <= 0) return;
  const int group = p.n_heads / p.n_kv_heads;
  const int chunk_cap = (p.max_ctx + splits - 1) / splits;
  const size_t smem = sizeof(float) * (static_cast<size_t>(group) * p.head_dim +
                                       static_cast<size_t>(group) * chunk_cap + 2 * static_cast<size_t>(group));
  const dim3 grid(p.n_kv_heads, splits, n);
  if (c.half) {
    if (smem > 48 * 1024)
      OPTIQ_CUDA_OK(cudaFuncSetAttribute(decode_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    decode_kernel<__half><<<grid, kDecodeThreads, smem, s>>>(p, q, pos0, static_cast<const __half*>(c.k),
                                                             static_cast<const __half*>(c.v), splits, chunk_cap,
                                                             partial);
  } else {
    if (smem > 48 * 1024)
      OPTIQ_CUDA_OK(cudaFuncSetAttribute(decode_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    decode_kernel<float><<<grid, kDecodeThreads, smem, s>>>(p, q, pos0, static_cast<const float*>(c.k),
                                                            static_cast<const float*>(c.v), splits, chunk_cap,
                                                            partial);
  }
  OPTIQ_CUDA_LAUNCHED();
  combine_kernel<<<dim3(p.n_heads, n), 128, 0, s>>>(p, splits, partial, out);
  OPTIQ_CUDA_LAUNCHED();
}

void attention_softmax(const AttentionParams& p, float* S, int64_t n, int64_t ld, int pos0, __half* p16,
                       cudaStream_t s) {
  if (n <= 0) return;
  softmax_kernel<<<static_cast<unsigned>(n * p.n_heads), 256, 0, s>>>(p, S, n, ld, pos0, p16);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
