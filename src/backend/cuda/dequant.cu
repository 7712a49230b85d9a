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

// The same eight elements at a time (width a multiple of 8): one 16-byte load
// of fp16/bf16 (two of fp32) and 16-byte stores. Prefill expands every dense
// matrix this way before its GEMM, so a thread per element (2-byte accesses
// and a 64-bit division each) made bf16 prefill at 512 tokens half as fast as
// q4's. Index type I: 32-bit where the element count allows.
__device__ __forceinline__ void store8(float* o, const float (&v)[8]) {
  reinterpret_cast<float4*>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__half* o, const float (&v)[8]) {
  uint4 u;
  uint32_t* w = reinterpret_cast<uint32_t*>(&u);
#pragma unroll
  for (int h = 0; h < 4; ++h) {
    const __half2 p = __floats2half2_rn(v[2 * h], v[2 * h + 1]);
    w[h] = *reinterpret_cast<const uint32_t*>(&p);
  }
  *reinterpret_cast<uint4*>(o) = u;
}

template <class Out, class I>
__global__ void dense_rows8_kernel(DevMatrix w, const int32_t* rows, int64_t r0, I n, float scale, Out* out) {
  pdl_trigger();
  pdl_wait();
  const I per_row = static_cast<I>(w.cols / 8);
  const I t = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * per_row) return;
  const I i = t / per_row, c = t - i * per_row;
  const int64_t r = rows ? rows[i] : r0 + static_cast<int64_t>(i);
  const int64_t k = r * w.cols + 8 * static_cast<int64_t>(c);
  float v[8];
  if (w.storage == DevStorage::F32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(w.data) + k);
    const float4 a = __ldg(p), b = __ldg(p + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 h = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.data) + k));
    const uint32_t hw[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = w.storage == DevStorage::BF16 ? bf16_word(hw[j] & 0xffffu) : half_word(hw[j] & 0xffffu);
      v[2 * j + 1] = w.storage == DevStorage::BF16 ? bf16_word(hw[j] >> 16) : half_word(hw[j] >> 16);
    }
  }
  if (scale != 1.0f)
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = scale * v[j];
  store8(out + static_cast<int64_t>(i) * w.cols + 8 * static_cast<int64_t>(c), v);
}

// OPTIQ_CUDA_DENSE_ROWS8=0: a thread per element again (A/B runs).
bool rows8_enabled() {
  static const bool on = env_switch("OPTIQ_CUDA_DENSE_ROWS8", true);
  return on;
}

template <class Out>
void rows_of(const DevMatrix& w, const int32_t* rows, int64_t r0, int64_t n, float scale, Out* out, cudaStream_t s) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  if (w.storage == DevStorage::Affine || w.storage == DevStorage::KQuant) {
    launch(packed_rows_kernel<Out>, blocks_for(n * (w.cols / 32), kThreads), kThreads, 0, s, w, rows, r0, n, scale, out);
  } else if (w.cols % 8 == 0 && rows8_enabled()) {
    const int64_t threads = n * (w.cols / 8);
    const unsigned grid = blocks_for(threads, kThreads);
    if (threads < (int64_t{1} << 31))
      launch(dense_rows8_kernel<Out, uint32_t>, grid, kThreads, 0, s, w, rows, r0, static_cast<uint32_t>(n), scale, out);
    else
      launch(dense_rows8_kernel<Out, int64_t>, grid, kThreads, 0, s, w, rows, r0, n, scale, out);
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
