// Weights to plain rows: the prefill path multiplies by cuBLAS, which wants
// fp16 or fp32 matrices, so packed rows are expanded into a scratch buffer
// just before the GEMM (one read of the packed bytes, one write); embeddings
// expand only the looked-up rows. Packed storages go one thread per chunk of
// 32 weights (weight_decode.cuh); dense ones one thread per element.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/weight_decode.cuh"

namespace optiq::cuda {
namespace {

__device__ __forceinline__ void put(float* o, float v) { *o = v; }
__device__ __forceinline__ void put(__half* o, float v) { *o = __float2half_rn(v); }

// 32 values to 16-byte-aligned output, 16 bytes a store (2-byte stores
// across a warp would touch 32 segments each).
__device__ __forceinline__ void store32(float* o, const float (&v)[32]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) reinterpret_cast<float4*>(o)[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
}
__device__ __forceinline__ void store32(__half* o, const float (&v)[32]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint4 u;
    uint32_t* w = reinterpret_cast<uint32_t*>(&u);
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const __half2 p = __floats2half2_rn(v[8 * j + 2 * h], v[8 * j + 2 * h + 1]);
      w[h] = *reinterpret_cast<const uint32_t*>(&p);
    }
    reinterpret_cast<uint4*>(o)[j] = u;
  }
}

__device__ __forceinline__ float dense_at(const DevMatrix& w, int64_t k) {
  switch (w.storage) {
    case DevStorage::F32: return static_cast<const float*>(w.data)[k];
    case DevStorage::F16: return half_word(static_cast<const uint16_t*>(w.data)[k]);
    default: return bf16_word(static_cast<const uint16_t*>(w.data)[k]);
  }
}

// rows: row ids (device) or null for r0 + i; out row i = scale * W[row].
template <class Out>
__global__ void packed_rows_kernel(DevMatrix w, const int32_t* rows, int64_t r0, int64_t n, float scale, Out* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t chunks = w.cols / 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * chunks) return;
  const int64_t i = t / chunks, c = t % chunks;
  const int64_t r = rows ? rows[i] : r0 + i;
  float v[32];
  decode_chunk(w, r, c, v);
  if (scale != 1.0f)
#pragma unroll
    for (int j = 0; j < 32; ++j) v[j] *= scale;
  store32(out + i * w.cols + 32 * c, v);
}

template <class Out>
__global__ void dense_rows_kernel(DevMatrix w, const int32_t* rows, int64_t r0, int64_t n, float scale, Out* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * w.cols) return;
  const int64_t i = t / w.cols, c = t % w.cols;
  const int64_t r = rows ? rows[i] : r0 + i;
  const float v = dense_at(w, r * w.cols + c);
  put(out + t, scale == 1.0f ? v : scale * v);
}

template <class Out>
void rows_of(const DevMatrix& w, const int32_t* rows, int64_t r0, int64_t n, float scale, Out* out, cudaStream_t s) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  if (w.storage == DevStorage::Affine || w.storage == DevStorage::KQuant) {
    launch(packed_rows_kernel<Out>, blocks_for(n * (w.cols / 32), kThreads), kThreads, 0, s, w, rows, r0, n, scale, out);
  } else {
    launch(dense_rows_kernel<Out>, blocks_for(n * w.cols, kThreads), kThreads, 0, s, w, rows, r0, n, scale, out);
  }
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace

void dequantize_rows(const DevMatrix& w, int64_t r0, int64_t r1, float* out, cudaStream_t s) {
  rows_of(w, nullptr, r0, r1 - r0, 1.0f, out, s);
}
void dequantize_rows(const DevMatrix& w, int64_t r0, int64_t r1, __half* out, cudaStream_t s) {
  rows_of(w, nullptr, r0, r1 - r0, 1.0f, out, s);
}
void embed_rows(const DevMatrix& w, const int32_t* tokens, int n, float scale, float* out, cudaStream_t s) {
  rows_of(w, tokens, 0, n, scale, out, s);
}

namespace {
// One thread a chunk, in place: a chunk's words are read before any is written.
template <int kBits>
__global__ void to_planes_kernel(uint32_t* words, int64_t chunks) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  uint32_t in[kBits], out[kBits];
#pragma unroll
  for (int i = 0; i < kBits; ++i) in[i] = words[c * kBits + i];
  stream_to_planes<kBits>(in, out);
#pragma unroll
  for (int i = 0; i < kBits; ++i) words[c * kBits + i] = out[i];
}
}  // namespace

void affine_to_planes(uint32_t* words, int64_t chunks, int bits, cudaStream_t s) {
  if (chunks <= 0) return;
  constexpr int kThreads = 256;
  const unsigned grid = blocks_for(chunks, kThreads);
  switch (bits) {
    case 2: to_planes_kernel<2><<<grid, kThreads, 0, s>>>(words, chunks); break;
    case 3: to_planes_kernel<3><<<grid, kThreads, 0, s>>>(words, chunks); break;
    case 4: to_planes_kernel<4><<<grid, kThreads, 0, s>>>(words, chunks); break;
    case 5: to_planes_kernel<5><<<grid, kThreads, 0, s>>>(words, chunks); break;
    case 6: to_planes_kernel<6><<<grid, kThreads, 0, s>>>(words, chunks); break;
    default: return;  // 8-bit codes are planes already (bytes in order)
  }
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
