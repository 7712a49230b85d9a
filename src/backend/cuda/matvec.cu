// Decode products (n <= kMatvecMaxRows activation rows): every weight byte is
// read once, dequantized in registers and never written back. A warp owns
// kRows weight rows; its lanes walk the row in chunks of 32 weights (one
// activation block), several chunks' loads in flight before the arithmetic;
// one warp sum per row at the end.
//
//  - int8 (fast numerics, affine storage): activations arrive as int8 blocks
//    of 32 (quantize_act_int8); 32 codes meet their block by dp4a, 4-bit
//    nibbles against the block permuted to their order. Per block:
//    y += s_w * (s_x * dot) + b_w * (s_x * sum q_x), as the CPU's int8 decode.
//  - fp32 (exact numerics, and every storage): chunks decoded by
//    weight_decode.cuh, fp32 FMAs; affine groups apply scale and bias once
//    per chunk through the chunk's sum of x.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/weight_decode.cuh"

namespace optiq::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block
constexpr int kRows = 2;   // weight rows per warp

__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Integer dot product of 32 kBits-bit codes (kBits words) with 32 int8 activations (8 words).
template <int kBits>
__device__ __forceinline__ int dot_chunk(const uint32_t (&w)[kBits], const int (&x)[8]) {
  int acc = 0;
  if constexpr (kBits == 8) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc = dp4a_us(w[j], x[j], acc);
  } else if constexpr (kBits == 4) {
    // Low nibbles are codes 0,2,4,6 of the word, high nibbles 1,3,5,7.
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int xe = static_cast<int>(__byte_perm(x[2 * k], x[2 * k + 1], 0x6420));
      const int xo = static_cast<int>(__byte_perm(x[2 * k], x[2 * k + 1], 0x7531));
      acc = dp4a_us(w[k] & 0x0F0F0F0Fu, xe, acc);
      acc = dp4a_us((w[k] >> 4) & 0x0F0F0F0Fu, xo, acc);
    }
  } else if constexpr (kBits == 2) {
    // (w >> 2p) & 0x03030303 holds codes p, p+4, p+8, p+12 of the word.
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const uint32_t sel = static_cast<uint32_t>(p | ((p + 4) << 4));
        const uint32_t a = __byte_perm(x[4 * k], x[4 * k + 1], sel), b = __byte_perm(x[4 * k + 2], x[4 * k + 3], sel);
        acc = dp4a_us((w[k] >> (2 * p)) & 0x03030303u, static_cast<int>(__byte_perm(a, b, 0x5410)), acc);
      }
  } else {
    // 3/5/6 bits: codes straddle bytes; gather 4 at a time into bytes.
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      uint32_t packed = 0;
#pragma unroll
      for (int t = 0; t < 4; ++t) packed |= chunk_code<kBits>(w, 4 * q + t) << (8 * t);
      acc = dp4a_us(packed, x[q], acc);
    }
  }
  return acc;
}

__device__ __forceinline__ float affine_bias(const DevMatrix& w, int64_t idx, float s) {
  return w.biases ? scale_word(w.biases[idx], w.bf16_scales) : __fmul_rn(static_cast<float>(-w.zero_point), s);
}

template <int kBits, int kMaxN, int kW = kWarps, int kR = kRows>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_kernel(DevMatrix w, const int8_t* __restrict__ xq, const float* __restrict__ xscale,
                       const int32_t* __restrict__ xsum, int n, float* __restrict__ y) {
  constexpr int kUnroll = kBits >= 6 ? 2 : (kBits == 5 ? 3 : 16 / kBits);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kW + warp) * kR; r0 < w.rows;
       r0 += static_cast<int64_t>(gridDim.x) * kW * kR) {
  const int64_t chunks = w.cols / 32, wpr = w.cols * kBits / 32, gpr = w.cols / w.group;
  const int gshift = w.group == 32 ? 0 : (w.group == 64 ? 1 : 2);
  const uint32_t* packed = static_cast<const uint32_t*>(w.data);
  float acc[kR][kMaxN] = {};
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint32_t words[kUnroll][kR][kBits];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if (c < chunks && r0 + r < w.rows) load_words<kBits>(packed + (r0 + r) * wpr + c * kBits, words[u][r]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      int xv[kMaxN][8];
      float sx[kMaxN], sumx[kMaxN];
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        if (i >= n) break;
        const int4* p = reinterpret_cast<const int4*>(xq + (i * chunks + c) * 32);
        const int4 a = __ldg(p), b = __ldg(p + 1);
        xv[i][0] = a.x, xv[i][1] = a.y, xv[i][2] = a.z, xv[i][3] = a.w;
        xv[i][4] = b.x, xv[i][5] = b.y, xv[i][6] = b.z, xv[i][7] = b.w;
        sx[i] = __ldg(xscale + i * chunks + c);
        sumx[i] = sx[i] * static_cast<float>(__ldg(xsum + i * chunks + c));
      }
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        if (r0 + r >= w.rows) break;
        const int64_t gi = (r0 + r) * gpr + (c >> gshift);
        const float s = scale_word(w.scales[gi], w.bf16_scales), b = affine_bias(w, gi, s);
#pragma unroll
        for (int i = 0; i < kMaxN; ++i) {
          if (i >= n) break;
          const int d = dot_chunk<kBits>(words[u][r], xv[i]);
          acc[r][i] += s * (sx[i] * static_cast<float>(d)) + b * sumx[i];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float v = warp_sum(acc[r][i]);
      if (lane == 0 && r0 + r < w.rows) y[i * w.rows + r0 + r] = v;
    }
  }
}

// fp32 activations, affine storage: codes decoded in registers.
template <int kBits, int kMaxN>
__global__ void __launch_bounds__(kWarps * 32)
    affine_f32_kernel(DevMatrix w, const float* __restrict__ x, int n, float* __restrict__ y) {
  constexpr int kUnroll = kBits >= 6 ? 2 : (kBits == 5 ? 3 : 16 / kBits);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (r0 >= w.rows) return;
  const int64_t chunks = w.cols / 32, wpr = w.cols * kBits / 32, gpr = w.cols / w.group;
  const int gshift = w.group == 32 ? 0 : (w.group == 64 ? 1 : 2);
  const uint32_t* packed = static_cast<const uint32_t*>(w.data);
  float acc[kRows][kMaxN] = {};
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint32_t words[kUnroll][kRows][kBits];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (c < chunks && r0 + r < w.rows) load_words<kBits>(packed + (r0 + r) * wpr + c * kBits, words[u][r]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        if (i >= n) break;
        const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols + 32 * c);
        float xs[32];
        float xsum = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float4 f = __ldg(xp + j);
          xs[4 * j] = f.x, xs[4 * j + 1] = f.y, xs[4 * j + 2] = f.z, xs[4 * j + 3] = f.w;
          xsum += (f.x + f.y) + (f.z + f.w);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r >= w.rows) break;
          float dot = 0.0f;
#pragma unroll
          for (int j = 0; j < 32; ++j) dot = fmaf(code_to_float(chunk_code<kBits>(words[u][r], j)), xs[j], dot);
          const int64_t gi = (r0 + r) * gpr + (c >> gshift);
          const float s = scale_word(w.scales[gi], w.bf16_scales);
          acc[r][i] += s * dot + affine_bias(w, gi, s) * xsum;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float v = warp_sum(acc[r][i]);
      if (lane == 0 && r0 + r < w.rows) y[i * w.rows + r0 + r] = v;
    }
}

// fp32 activations, dense fp16/bf16/fp32 storage: 8 weights per lane per step.
template <DevStorage kStorage, int kMaxN, int kW = kWarps, int kR = kRows>
__global__ void __launch_bounds__(kW * 32)
    dense_kernel(DevMatrix w, const float* __restrict__ x, int n, float* __restrict__ y) {
  constexpr int kUnroll = 4;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kW + warp) * kR; r0 < w.rows;
       r0 += static_cast<int64_t>(gridDim.x) * kW * kR) {
  const int64_t steps = w.cols / 8;
  float acc[kR][kMaxN] = {};
  for (int64_t c0 = lane; c0 < steps; c0 += 32 * kUnroll) {
    float wv[kUnroll][kR][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        if (c >= steps || r0 + r >= w.rows) continue;
        if constexpr (kStorage == DevStorage::F32) {
          const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(w.data) + (r0 + r) * w.cols) + 2 * c;
          const float4 a = __ldg(p), b = __ldg(p + 1);
          wv[u][r][0] = a.x, wv[u][r][1] = a.y, wv[u][r][2] = a.z, wv[u][r][3] = a.w;
          wv[u][r][4] = b.x, wv[u][r][5] = b.y, wv[u][r][6] = b.z, wv[u][r][7] = b.w;
        } else {
          const uint4 h = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.data) + (r0 + r) * w.cols) + c);
          const uint32_t hw[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if constexpr (kStorage == DevStorage::BF16) {
              wv[u][r][2 * j] = __uint_as_float(hw[j] << 16);
              wv[u][r][2 * j + 1] = __uint_as_float(hw[j] & 0xffff0000u);
            } else {
              const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&hw[j]));
              wv[u][r][2 * j] = f.x, wv[u][r][2 * j + 1] = f.y;
            }
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= steps) break;
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        if (i >= n) break;
        const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols) + 2 * c;
        const float4 a = __ldg(xp), b = __ldg(xp + 1);
        const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r][i] = fmaf(wv[u][r][j], xs[j], acc[r][i]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float v = warp_sum(acc[r][i]);
      if (lane == 0 && r0 + r < w.rows) y[i * w.rows + r0 + r] = v;
    }
  }
}

// fp32 activations, any storage through decode_chunk (k-quants; odd widths).
template <int kMaxN>
__global__ void __launch_bounds__(kWarps * 32)
    generic_kernel(DevMatrix w, const float* __restrict__ x, int n, float* __restrict__ y) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (r0 >= w.rows) return;
  const int64_t chunks = w.cols / 32;
  float acc[kRows][kMaxN] = {};
  for (int64_t c = lane; c < chunks; c += 32) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r0 + r >= w.rows) break;
      float v[32];
      decode_chunk(w, r0 + r, c, v);
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        if (i >= n) break;
        const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols + 32 * c);
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float4 f = __ldg(xp + j);
          dot = fmaf(v[4 * j], f.x, dot);
          dot = fmaf(v[4 * j + 1], f.y, dot);
          dot = fmaf(v[4 * j + 2], f.z, dot);
          dot = fmaf(v[4 * j + 3], f.w, dot);
        }
        acc[r][i] += dot;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float v = warp_sum(acc[r][i]);
      if (lane == 0 && r0 + r < w.rows) y[i * w.rows + r0 + r] = v;
    }
}

// Odd widths (not a multiple of 32, dense storage only): one lane per column.
__global__ void dense_scalar_kernel(DevMatrix w, const float* __restrict__ x, int n, float* __restrict__ y) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (r >= w.rows) return;
  for (int i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int64_t c = lane; c < w.cols; c += 32) {
      const int64_t k = r * w.cols + c;
      const float wv = w.storage == DevStorage::F32 ? static_cast<const float*>(w.data)[k]
                                                    : scale_word(static_cast<const uint16_t*>(w.data)[k],
                                                                 w.storage == DevStorage::BF16);
      acc = fmaf(wv, x[i * w.cols + c], acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[i * w.rows + r] = acc;
  }
}

unsigned grid_rows(int64_t rows) { return blocks_for(rows, kWarps * kRows); }

template <int kMaxN>
void launch_affine_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  const dim3 grid(grid_rows(w.rows)), block(kWarps * 32);
  switch (w.bits) {
    case 2: affine_f32_kernel<2, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
    case 3: affine_f32_kernel<3, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
    case 4: affine_f32_kernel<4, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
    case 5: affine_f32_kernel<5, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
    case 6: affine_f32_kernel<6, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
    default: affine_f32_kernel<8, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); break;
  }
}

template <int kMaxN>
void launch_affine_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                        cudaStream_t s) {
  const dim3 grid(grid_rows(w.rows)), block(kWarps * 32);
  switch (w.bits) {
    case 2: affine_int8_kernel<2, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
    case 3: affine_int8_kernel<3, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
    case 4: affine_int8_kernel<4, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
    case 5: affine_int8_kernel<5, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
    case 6: affine_int8_kernel<6, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
    default: affine_int8_kernel<8, kMaxN><<<grid, block, 0, s>>>(w, xq, xs, xsum, n, y); break;
  }
}

template <int kMaxN>
void launch_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  const dim3 grid(grid_rows(w.rows)), block(kWarps * 32);
  switch (w.storage) {
    case DevStorage::Affine: launch_affine_f32<kMaxN>(w, x, n, y, s); return;
    case DevStorage::KQuant: generic_kernel<kMaxN><<<grid, block, 0, s>>>(w, x, n, y); return;
    case DevStorage::F32: dense_kernel<DevStorage::F32, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); return;
    case DevStorage::F16: dense_kernel<DevStorage::F16, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); return;
    case DevStorage::BF16: dense_kernel<DevStorage::BF16, kMaxN><<<grid, block, 0, s>>>(w, x, n, y); return;
  }
}

}  // namespace

void matvec_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  if (n <= 0) return;
  const bool dense = w.storage == DevStorage::F32 || w.storage == DevStorage::F16 || w.storage == DevStorage::BF16;
  if (dense && w.cols % 8 != 0) {
    dense_scalar_kernel<<<blocks_for(w.rows, kWarps), kWarps * 32, 0, s>>>(w, x, n, y);
  } else if (n == 1) {
    launch_f32<1>(w, x, n, y, s);
  } else {
    launch_f32<kMatvecMaxRows>(w, x, n, y, s);
  }
  OPTIQ_CUDA_LAUNCHED();
}

bool has_matvec_int8(const DevMatrix& w) { return w.storage == DevStorage::Affine; }

namespace {
template <int kW, int kR>
void launch_tuned(const DevMatrix& w, const float* x, const int8_t* xq, const float* xs, const int32_t* xsum, float* y,
                  unsigned grid, cudaStream_t s) {
  if (grid == 0) grid = blocks_for(w.rows, kW * kR);
  if (w.storage == DevStorage::Affine && w.bits == 4)
    affine_int8_kernel<4, 1, kW, kR><<<grid, kW * 32, 0, s>>>(w, xq, xs, xsum, 1, y);
  else if (w.storage == DevStorage::Affine && w.bits == 8)
    affine_int8_kernel<8, 1, kW, kR><<<grid, kW * 32, 0, s>>>(w, xq, xs, xsum, 1, y);
  else if (w.storage == DevStorage::BF16)
    dense_kernel<DevStorage::BF16, 1, kW, kR><<<grid, kW * 32, 0, s>>>(w, x, 1, y);
}
}  // namespace

const char* const kMatvecTunings[] = {"w4r2", "w4r1", "w4r4", "w8r1", "w8r2", "w2r2", "w8r4"};

bool matvec_tuned(int tuning, const DevMatrix& w, const float* x, const int8_t* xq, const float* xs,
                  const int32_t* xsum, float* y, unsigned grid, cudaStream_t s) {
  switch (tuning) {
    case 0: launch_tuned<4, 2>(w, x, xq, xs, xsum, y, grid, s); break;
    case 1: launch_tuned<4, 1>(w, x, xq, xs, xsum, y, grid, s); break;
    case 2: launch_tuned<4, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    case 3: launch_tuned<8, 1>(w, x, xq, xs, xsum, y, grid, s); break;
    case 4: launch_tuned<8, 2>(w, x, xq, xs, xsum, y, grid, s); break;
    case 5: launch_tuned<2, 2>(w, x, xq, xs, xsum, y, grid, s); break;
    case 6: launch_tuned<8, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    default: return false;
  }
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

void matvec_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                 cudaStream_t s) {
  if (n <= 0) return;
  if (n == 1)
    launch_affine_int8<1>(w, xq, xs, xsum, n, y, s);
  else
    launch_affine_int8<kMatvecMaxRows>(w, xq, xs, xsum, n, y, s);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
