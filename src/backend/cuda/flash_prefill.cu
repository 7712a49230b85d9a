// Prefill attention in one kernel (flash attention) over an fp16 KV cache:
// a block takes 64 query rows of one head (16 a warp), walks the keys its
// rows can see in tiles of 64 (K and V tiles in shared memory, shared by the
// warps, the next one copied by cp.async while this one is multiplied), and
// keeps the softmax online in registers (in log2 units: exp2 is one instruction). Products on tensor cores
// (mma.sync m16n8k16, fp16 operands, fp32 sums): the score tile's
// accumulator fragment is, register for register, the A fragment of the
// probabilities x V product, so probabilities never leave registers.
//
// Before it, prefill attention wrote every score (n_heads x n x T floats),
// softmaxed them in place and read them back as fp16 for cuBLAS: ~90 us a
// layer at 512 tokens of a Llama-3-8B shape on an H100, 13% of a bf16
// prefill; this kernel takes ~32 us there (BENCHMARKS.md §6).
//
// Numerics as the path it replaces: q rounded to fp16, scores summed in fp32,
// scale and soft-cap in fp32, probabilities rounded to fp16 for the V
// product (here before the division by the row's sum, as llama.cpp's flash
// attention does), values summed in fp32.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane =
// 4 * g + t: A (16 x 16, row-major) registers {row g, cols 2t..2t+1},
// {row g + 8, same cols}, {row g, cols 2t + 8..}, {row g + 8, cols 2t + 8..};
// B (16 x 8, k x n) registers {k 2t..2t+1, n g}, {k 2t + 8.., n g};
// C (16 x 8) floats {row g, cols 2t, 2t + 1}, {row g + 8, cols 2t, 2t + 1}.
#include <cfloat>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

constexpr int kFlashWarps = 4;
constexpr int kFlashRows = 16 * kFlashWarps;  // query rows a block
// Keys a tile: 64, or 32 at head_dim 256 (a warp's output and query
// fragments are 192 registers there; the score tile must stay small).
template <int kHd>
constexpr int kFlashKeys = kHd == 256 ? 32 : 64;
constexpr int kFlashPad = 8;                  // halves after each shared-memory row: rows start in other banks
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// c += a . b (16 x 16 by 16 x 8, fp16 in, fp32 sums).
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ int first_visible(int pos, int window) {
  return window > 0 && pos >= window ? pos - window + 1 : 0;
}

// 16-byte global -> shared copy that bypasses the registers (and L1).
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void copies_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Every group but the newest has landed (in this thread's view: a barrier after it for the block's).
__device__ __forceinline__ void copies_wait_all_but_newest() { asm volatile("cp.async.wait_group 1;\n" ::); }

// Four 8 x 8 fp16 matrices from shared memory, a row address a lane (lanes
// 8j..8j+7: matrix j); register j gets matrix j's {row lane / 4, cols 2 (lane % 4), +1},
// or with kTrans its {rows 2 (lane % 4), +1, col lane / 4}.
template <bool kTrans>
__device__ __forceinline__ void load_matrices(const __half* row, uint32_t (&r)[4]) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

template <int kHd>
constexpr size_t flash_smem_bytes() {
  return size_t{2} * 2 * kFlashKeys<kHd> * (kHd + kFlashPad) * sizeof(__half);  // two stages of a K and a V tile
}

template <int kHd>
__global__ void __launch_bounds__(kFlashWarps * 32)
    flash_prefill_kernel(AttentionParams p, const float* __restrict__ q, int n, int pos0,
                         const __half* __restrict__ kc, const __half* __restrict__ vc, float* __restrict__ out) {
  constexpr int kKeys = kFlashKeys<kHd>;
  constexpr int kSteps = kHd / 16;    // k-steps of the score product
  constexpr int kDimTiles = kHd / 8;  // n-tiles of the output
  constexpr int kRow = kHd + kFlashPad;
  constexpr int kTile = kKeys * kRow;  // halves of one K or V tile
  extern __shared__ __align__(16) __half tiles[];  // stage s: K at 2 s kTile, V at (2 s + 1) kTile
  pdl_trigger();
  pdl_wait();  // q is the previous kernel's output, the cache the one before's
  const int h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // The row tiles with the most keys first: at long prompts the grid runs in
  // several waves, and the short tiles then fill the last one.
  const int r0 = (gridDim.x - 1 - blockIdx.x) * kFlashRows, wr0 = r0 + 16 * warp;
  const int row[2] = {wr0 + g, wr0 + g + 8};  // this thread's two query rows
  const int pos[2] = {pos0 + row[0], pos0 + row[1]};
  const int first[2] = {first_visible(pos[0], p.window), first_visible(pos[1], p.window)};

  const int last_row = min(r0 + kFlashRows, n) - 1;
  const int kend = pos0 + last_row + 1;  // keys [kbeg, kend) some row of the block sees
  const int kbeg = first_visible(pos0 + r0, p.window);
  auto issue_tile = [&](int t0, int stage) {
    __half* ks = tiles + 2 * stage * kTile;
    __half* vs = ks + kTile;
    for (int idx = threadIdx.x; idx < kKeys * (kHd / 8); idx += kFlashWarps * 32) {
      const int key = idx / (kHd / 8), c8 = idx % (kHd / 8);
      const int64_t off = static_cast<int64_t>(min(t0 + key, kend - 1)) * p.kv_stride + kvh * kHd + 8 * c8;
      copy16_async(ks + key * kRow + 8 * c8, kc + off);
      copy16_async(vs + key * kRow + 8 * c8, vc + off);
    }
  };
  issue_tile(kbeg, 0);
  copies_commit();

  // This warp's queries as A fragments, rounded to fp16 (rows past n are 0).
  uint32_t qa[kSteps][4];
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = row[j & 1], c = 16 * s + 2 * t + (j >> 1) * 8;
      float2 v = make_float2(0.0f, 0.0f);
      if (r < n) v = *reinterpret_cast<const float2*>(q + static_cast<int64_t>(r) * p.q_stride + h * kHd + c);
      qa[s][j] = pack_half2(v.x, v.y);
    }

  float o[kDimTiles][4];
#pragma unroll
  for (int d = 0; d < kDimTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m[2] = {-FLT_MAX, -FLT_MAX}, l[2] = {0.0f, 0.0f};  // running max and (this thread's part of the) sum

  const int warp_last = pos0 + min(wr0 + 15, n - 1), warp_first = first_visible(pos0 + wr0, p.window);
  // ldmatrix row addresses: lane 8j + i gives row i of matrix j.
  const int mi = lane & 7, mj = lane >> 3;
  int stage = 0;
  for (int t0 = kbeg; t0 < kend; t0 += kKeys, stage ^= 1) {
    if (t0 + kKeys < kend) issue_tile(t0 + kKeys, stage ^ 1);  // the next tile flies during this one
    copies_commit();
    copies_wait_all_but_newest();
    __syncthreads();  // this tile is in shared memory for every warp
    const __half* ks = tiles + 2 * stage * kTile;
    const __half* vs = ks + kTile;
    // A warp whose rows see none of this tile skips it (warp-uniform).
    if (wr0 < n && t0 <= warp_last && t0 + kKeys > warp_first) {
      float sc[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
        // Matrices j = 0..3: keys 8 nt.., dims 16 s + 8 j.. (two k-steps a load).
#pragma unroll
        for (int s = 0; s < kSteps; s += 2) {
          uint32_t b[4];
          load_matrices<false>(ks + (8 * nt + mi) * kRow + 16 * s + 8 * mj, b);
          mma_16816(sc[nt], qa[s], b[0], b[1]);
          if (s + 1 < kSteps) mma_16816(sc[nt], qa[s + 1], b[2], b[3]);
        }
      }
      // Scale, soft-cap and mask; the rows' new maxima. Scores are kept in
      // log2 units (exp2 is one instruction). A tile every row of the warp
      // sees whole (below the diagonal, inside the window) needs no mask.
      const bool whole = t0 + kKeys - 1 <= pos0 + wr0 && t0 >= first_visible(warp_last, p.window) && wr0 + 15 < n;
      float mx[2] = {m[0], m[1]};
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e >> 1, key = t0 + 8 * nt + 2 * t + (e & 1);
          const bool seen = whole || (row[i] < n && key <= pos[i] && key >= first[i]);
          float s = sc[nt][e] * p.scale;
          if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
          sc[nt][e] = seen ? s * kLog2e : -FLT_MAX;
          mx[i] = fmaxf(mx[i], sc[nt][e]);
        }
      float corr[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        corr[i] = exp2f(m[i] - mx[i]);  // 1 while the row has seen nothing (both -FLT_MAX)
        m[i] = mx[i];
        l[i] *= corr[i];
      }
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) {
        o[d][0] *= corr[0], o[d][1] *= corr[0];
        o[d][2] *= corr[1], o[d][3] *= corr[1];
      }
      // Probabilities (unnormalised, rounded to fp16) x V, 16 keys a step.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        float pr[2][4];
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float s = sc[2 * kk + hf][e];
            const float v = s == -FLT_MAX ? 0.0f : exp2f(s - m[e >> 1]);
            pr[hf][e] = v;
            l[e >> 1] += v;
          }
        const uint32_t a[4] = {pack_half2(pr[0][0], pr[0][1]), pack_half2(pr[0][2], pr[0][3]),
                               pack_half2(pr[1][0], pr[1][1]), pack_half2(pr[1][2], pr[1][3])};
        // Transposed matrices j = 0..3: keys 16 kk + 8 (j & 1).., dims 8 d + 8 (j >> 1).. (two n-tiles a load).
#pragma unroll
        for (int d = 0; d < kDimTiles; d += 2) {
          uint32_t b[4];
          load_matrices<true>(vs + (16 * kk + mi + 8 * (mj & 1)) * kRow + 8 * d + 8 * (mj >> 1), b);
          mma_16816(o[d], a, b[0], b[1]);
          mma_16816(o[d + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next tile's copies overwrite it
  }
  if (wr0 >= n) return;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (row[i] >= n) continue;
    const float inv = 1.0f / l[i];
    float* orow = out + static_cast<int64_t>(row[i]) * p.q_stride + h * kHd + 2 * t;
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d)
      *reinterpret_cast<float2*>(orow + 8 * d) = make_float2(o[d][2 * i] * inv, o[d][2 * i + 1] * inv);
  }
}

template <int kHd>
void launch_flash(const AttentionParams& p, const float* q, int n, int pos0, const __half* k, const __half* v,
                  float* out, cudaStream_t s) {
  constexpr size_t kSmem = flash_smem_bytes<kHd>();
  static const bool sized = [] {  // more than the default 48 KB of dynamic shared memory
    OPTIQ_CUDA_OK(cudaFuncSetAttribute(flash_prefill_kernel<kHd>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kSmem)));
    return true;
  }();
  (void)sized;
  const dim3 grid(blocks_for(n, kFlashRows), static_cast<unsigned>(p.n_heads));
  launch(flash_prefill_kernel<kHd>, grid, kFlashWarps * 32, kSmem, s, p, q, n, pos0, k, v, out);
}

}  // namespace

bool flash_prefill_applies(const AttentionParams& p, const DevKV& c) {
  const int hd = p.head_dim;
  return c.half && (hd == 64 || hd == 96 || hd == 128 || hd == 256) && p.kv_stride % 8 == 0 && p.q_stride % 2 == 0 &&
         p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0;
}

bool attention_flash_prefill(const AttentionParams& p, const float* q, int64_t n, int pos0, const DevKV& c, float* out,
                             cudaStream_t s) {
  if (n <= 0 || !flash_prefill_applies(p, c)) return false;
  if (reinterpret_cast<uintptr_t>(q) % 8 != 0 || reinterpret_cast<uintptr_t>(out) % 8 != 0) return false;  // float2 rows
  const auto* k = static_cast<const __half*>(c.k);
  const auto* v = static_cast<const __half*>(c.v);
  const int rows = static_cast<int>(n);
  switch (p.head_dim) {
    case 64: launch_flash<64>(p, q, rows, pos0, k, v, out, s); break;
    case 96: launch_flash<96>(p, q, rows, pos0, k, v, out, s); break;
    case 256: launch_flash<256>(p, q, rows, pos0, k, v, out, s); break;
    default: launch_flash<128>(p, q, rows, pos0, k, v, out, s); break;
  }
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

}  // namespace optiq::cuda
