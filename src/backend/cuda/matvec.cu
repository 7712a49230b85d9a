// Decode products (n <= kMatvecMaxRows activation rows): every weight byte is
// read once, dequantized in registers and never written back. A warp owns
// kRows weight rows; its lanes walk the row in chunks of 32 weights (one
// activation block), several chunks' loads in flight before the arithmetic;
// one warp sum per row at the end.
//
//  - int8 (fast numerics, affine storage): activations arrive as int8 blocks
//    of 32 (quantize_act_int8); 32 codes meet their block by dp4a, the codes
//    in the plane layout the backend uploads (code_planes.h). Per block:
//    y += s_w * (s_x * dot) + b_w * (s_x * sum q_x), as the CPU's int8 decode.
//  - fp32 (exact numerics, and every storage): chunks decoded by
//    weight_decode.cuh, fp32 FMAs; affine groups apply scale and bias once
//    per chunk through the chunk's sum of x.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/kquant_int8.cuh"
#include "backend/cuda/matvec_rows.cuh"
#include "backend/cuda/weight_decode.cuh"

#include <cstdlib>
#include <string>
#include <type_traits>

namespace optiq::cuda {
namespace {

// Launch shapes (bench/gpu_kernels.cpp sweeps them on the H200): kW warps
// per block, kR weight rows per warp, kU chunks per lane per row in flight.
// Everything a chunk needs (codes, scale, bias) is loaded before any of it is
// used, with no branch in between: a branch would keep the compiler from
// issuing the scale loads early, and each late load costs another trip to
// memory.
constexpr int kWarps = 4;

// kParts > 1: wide rows split over kParts warps (matvec_rows.cuh, split_part).
template <int kBits, int kMaxN, int kW, int kR, int kU, bool kGated = false, int kParts = 1>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_kernel(DevMatrix w, const int8_t* xq, const float* xscale,
                       const int32_t* xsum, int n, float* __restrict__ y, DevMatrix w2 = {},
                       GateAct act = GateAct::Silu, float* accum = nullptr) {
  pdl_trigger();
  matvec_rows<kMaxN, kW, kR, kGated, kParts>(w, n, y, act, accum, [&](int64_t r0, int lane, float (&acc)[kR][kMaxN]) {
    int8_rows<kBits, kMaxN, kR, kU, kGated, kParts>(w, w2, r0, lane, xq, xscale, xsum, n, acc, PdlWait{});
  });
}

template <int kBits, int kMaxN, int kW, int kR, int kU, int kParts = 1>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_group_kernel(MatrixGroup g, const int8_t* xq, const float* xscale,
                             const int32_t* xsum, int n) {
  pdl_trigger();
  group_rows<kMaxN, kW, kR, kParts>(g, n, [&](const GroupRow& gr, int lane, float (&acc)[kR][kMaxN]) {
    int8_rows<kBits, kMaxN, kR, kU, false, kParts>(gr.w, gr.w, gr.r, lane, xq, xscale, xsum, n, acc, PdlWait{});
  });
}

// q, k and v of two code widths in one launch (an optiq plan often gives v
// more bits than q and k): a warp's rows lie in one matrix, so each warp
// runs the walk of its matrix's width, the one a product of its own runs
// (same chunks a lane, same order: the same bits).
template <int kBa, int kBb, int kMaxN, int kW, int kR>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_group_mixed_kernel(MatrixGroup g, const int8_t* xq, const float* xscale, const int32_t* xsum, int n) {
  pdl_trigger();
  group_rows<kMaxN, kW, kR>(g, n, [&](const GroupRow& gr, int lane, float (&acc)[kR][kMaxN]) {
    if (gr.w.bits == kBa)
      int8_rows<kBa, kMaxN, kR, kR == 2 ? chunks_two_rows(kBa) : chunks_one_row(kBa), false>(
          gr.w, gr.w, gr.r, lane, xq, xscale, xsum, n, acc, PdlWait{});
    else
      int8_rows<kBb, kMaxN, kR, kR == 2 ? chunks_two_rows(kBb) : chunks_one_row(kBb), false>(
          gr.w, gr.w, gr.r, lane, xq, xscale, xsum, n, acc, PdlWait{});
  });
}

// Rows of at least kSplitCols weights (Llama-3-8B's down: 14336) are split
// over two warps, each walking half of every row, so a warp has half as many
// dependent rounds of loads (14 chunks a lane took 4 rounds at 4 chunks in
// flight). H100, Llama-3-8B decode: mixed4.5 +2% at ctx 128 and 4096 (405 ->
// 414, 333 -> 340 tok/s), q4 unchanged (BENCHMARKS.md §6).
// OPTIQ_CUDA_SPLIT_K=0: one warp a row everywhere (A/B runs).
constexpr int64_t kSplitCols = 8192;
constexpr int kSplitParts = 2;
bool split_rows(int64_t cols) {
  static const bool on = env_switch("OPTIQ_CUDA_SPLIT_K", true);
  return on && cols >= kSplitCols;
}

// fp32 activations, affine storage: codes decoded in registers, scale and
// bias applied once per chunk through the chunk's sum of x. The kR row slots
// of a warp: acc[r][i] = row slot r . x_i (x read with plain loads after
// pdl_wait(), as in dense_rows).
template <int kBits, int kMaxN, int kR, int kU, bool kGated>
__device__ __forceinline__ void affine_f32_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                                const float* x, int n, float (&acc)[kR][kMaxN]) {
  affine_chunk_walk<kBits, kR, kU, kGated>(
      w, w2, r0, lane, PdlWait{},
      [&](int c0, int chunks, const uint32_t (&words)[kU][kR][kBits], const float (&sc)[kU][kR],
          const float (&bi)[kU][kR]) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int c = min(c0 + 32 * u, chunks - 1);
#pragma unroll
          for (int i = 0; i < kMaxN; ++i) {
            if (i >= n) break;
            const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols + 32 * c);
            float xs[32];
            float xsum = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              const float4 f = xp[j];
              xs[4 * j] = f.x, xs[4 * j + 1] = f.y, xs[4 * j + 2] = f.z, xs[4 * j + 3] = f.w;
              xsum += (f.x + f.y) + (f.z + f.w);
            }
#pragma unroll
            for (int r = 0; r < kR; ++r) {
              float dot = 0.0f;
#pragma unroll
              for (int j = 0; j < 32; ++j) dot = fmaf(code_to_float(chunk_code<kBits>(words[u][r], j)), xs[j], dot);
              acc[r][i] += sc[u][r] * dot + bi[u][r] * xsum;
            }
          }
        }
      });
}

template <int kBits, int kMaxN, int kW, int kR, int kU, bool kGated = false>
__global__ void __launch_bounds__(kW * 32)
    affine_f32_kernel(DevMatrix w, const float* x, int n, float* __restrict__ y, DevMatrix w2 = {},
                      GateAct act = GateAct::Silu) {
  pdl_trigger();
  matvec_rows<kMaxN, kW, kR, kGated>(w, n, y, act, nullptr, [&](int64_t r0, int lane, float (&acc)[kR][kMaxN]) {
    affine_f32_rows<kBits, kMaxN, kR, kU, kGated>(w, w2, r0, lane, x, n, acc);
  });
}

// fp32 activations, dense fp16/bf16/fp32 storage: 8 weights per lane per
// step. A warp's kR row slots (rows r0.. of w, or row r0 of w and of w2)
// against x: acc[r][i] = row slot r . x_i.
//
// x, the previous kernel's output, is read with plain loads after pdl_wait():
// through __ldg (the read-only path, which lets the compiler treat x as
// unchanging for the whole kernel) the q/k/v group read stale rows under
// programmatic dependent launch (GPU tests failed with it, passed with
// OPTIQ_CUDA_PDL=0).
template <DevStorage kStorage, int kMaxN, int kR, int kU, bool kGated>
__device__ __forceinline__ void dense_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                           const float* x, int n, float (&acc)[kR][kMaxN]) {
  const int64_t steps = w.cols / 8;
  for (int64_t c0 = lane; c0 < steps; c0 += 32 * kU) {
    float wv[kU][kR][8];
#pragma unroll
    for (int u = 0; u < kU; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        // Clamped (in-bounds, branch-free) loads; a dead slot's weights become 0 below.
        const int64_t row_raw = kGated ? r0 : r0 + r, c_raw = c0 + 32 * u;
        const bool live = row_raw < w.rows && c_raw < steps;
        const int64_t row = min(row_raw, w.rows - 1), c = min(c_raw, steps - 1);
        const void* data = kGated && r == 1 ? w2.data : w.data;
        if constexpr (kStorage == DevStorage::F32) {
          const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(data) + row * w.cols) + 2 * c;
          const float4 a = __ldg(p), b = __ldg(p + 1);
          wv[u][r][0] = a.x, wv[u][r][1] = a.y, wv[u][r][2] = a.z, wv[u][r][3] = a.w;
          wv[u][r][4] = b.x, wv[u][r][5] = b.y, wv[u][r][6] = b.z, wv[u][r][7] = b.w;
        } else {
          const uint4 h = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + row * w.cols) + c);
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
        if (!live)
#pragma unroll
          for (int j = 0; j < 8; ++j) wv[u][r][j] = 0.0f;
      }
    pdl_wait();  // weights are in flight; x is the previous operation's output
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t c = min(c0 + 32 * u, steps - 1);  // past the row the weights are 0
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        if (i >= n) break;
        const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols) + 2 * c;
        const float4 a = xp[0], b = xp[1];
        const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r][i] = fmaf(wv[u][r][j], xs[j], acc[r][i]);
      }
    }
  }
}

template <DevStorage kStorage, int kMaxN, int kW, int kR, int kU, bool kGated = false>
__global__ void __launch_bounds__(kW * 32)
    dense_kernel(DevMatrix w, const float* x, int n, float* __restrict__ y, DevMatrix w2 = {},
                 GateAct act = GateAct::Silu, float* accum = nullptr) {
  pdl_trigger();
  matvec_rows<kMaxN, kW, kR, kGated>(w, n, y, act, accum, [&](int64_t r0, int lane, float (&acc)[kR][kMaxN]) {
    dense_rows<kStorage, kMaxN, kR, kU, kGated>(w, w2, r0, lane, x, n, acc);
  });
}

// q, k and v of one dense storage in one launch (MatrixGroup, as the int8
// group above): a warp takes kR rows at a time with dense_kernel's
// arithmetic, so each row's sum is the same bits as a launch of its own.
template <DevStorage kStorage, int kMaxN, int kW, int kR, int kU>
__global__ void __launch_bounds__(kW * 32) dense_group_kernel(MatrixGroup g, const float* x, int n) {
  pdl_trigger();
  group_rows<kMaxN, kW, kR>(g, n, [&](const GroupRow& gr, int lane, float (&acc)[kR][kMaxN]) {
    dense_rows<kStorage, kMaxN, kR, kU, false>(gr.w, gr.w, gr.r, lane, x, n, acc);
  });
}

// Rows a warp takes in chunk_kernel.
constexpr int kGenericRows = 2;

// How chunk_kernel decodes a chunk: any storage through decode_chunk, or
// Q4_K / Q6_K (llama.cpp's Q4_K_M mix) by their wide-load decoders, whose
// values are decode_chunk's bit for bit (its byte loads made llama.cpp's own
// Q4_K_M file of the Llama-3-8B shape decode at 64 tok/s here, against 272
// in llama.cpp; 112 with these: BENCHMARKS.md §6).
enum class ChunkDecode { Any, Q4K, Q6K };

// fp32 activations, any storage by chunks of 32 (k-quants; odd widths): a
// warp takes kGenericRows rows, a lane a chunk of each at a time, each chunk
// of x read once for the rows.
template <ChunkDecode kD, int kMaxN>
__global__ void __launch_bounds__(kWarps * 32)
    chunk_kernel(DevMatrix w, const float* x, int n, float* __restrict__ y) {
  pdl_trigger();
  pdl_wait();
  constexpr int64_t kBlockBytes = kD == ChunkDecode::Q4K ? 144 : 210;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kGenericRows;
  if (r0 >= w.rows) return;
  const int64_t chunks = w.cols / 32;
  const int rows = w.rows - r0 < kGenericRows ? static_cast<int>(w.rows - r0) : kGenericRows;
  float acc[kGenericRows][kMaxN] = {};
  for (int64_t c = lane; c < chunks; c += 32) {
    float v[kGenericRows][32];
#pragma unroll
    for (int r = 0; r < kGenericRows; ++r) {
      if (r >= rows) break;
      if constexpr (kD == ChunkDecode::Any) {
        decode_chunk(w, r0 + r, c, v[r]);
      } else {
        const uint8_t* b = static_cast<const uint8_t*>(w.data) + (r0 + r) * w.row_bytes + (c >> 3) * kBlockBytes;
        if constexpr (kD == ChunkDecode::Q4K) {
          q4k_decode_sub(b, static_cast<int>(c & 7), v[r]);
        } else {
          q6k_decode_sub(b, static_cast<int>(c & 7), v[r]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float4* xp = reinterpret_cast<const float4*>(x + i * w.cols + 32 * c);
      float4 f[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = xp[j];  // plain loads: x is the previous kernel's output
#pragma unroll
      for (int r = 0; r < kGenericRows; ++r) {
        if (r >= rows) break;
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          dot = fmaf(v[r][4 * j], f[j].x, dot);
          dot = fmaf(v[r][4 * j + 1], f[j].y, dot);
          dot = fmaf(v[r][4 * j + 2], f[j].z, dot);
          dot = fmaf(v[r][4 * j + 3], f[j].w, dot);
        }
        acc[r][i] += dot;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r)
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const float v = warp_sum(acc[r][i]);
      if (lane == 0 && r < rows) y[i * w.rows + r0 + r] = v;
    }
}

// Odd widths (not a multiple of 32, dense storage only): one lane per column.
__global__ void dense_scalar_kernel(DevMatrix w, const float* x, int n, float* __restrict__ y) {
  pdl_trigger();
  pdl_wait();
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


// int8 activations, GGUF k-quant rows (fast numerics, kquant_int8.cuh): the
// CPU's int8 k-quant decode on the GPU. A warp takes kR rows (or row r of
// both matrices of a gated pair), a lane one chunk of 32 weights of each at a
// time, kU chunks in flight; every load of a set is issued before its
// arithmetic. (With fp32 activations llama.cpp's Q4_K_M file of the
// Llama-3-8B shape decoded at 112 tok/s here, against 272 in llama.cpp.)
template <DType kT, int kMaxN, int kR, int kU, bool kGated = false>
__global__ void __launch_bounds__(kWarps * 32)
    kquant_int8_kernel(DevMatrix w, const int8_t* xq, const float* xscale, const int32_t* xsum, int n,
                       float* __restrict__ y, DevMatrix w2 = {}, GateAct act = GateAct::Silu, float* accum = nullptr) {
  pdl_trigger();
  matvec_rows<kMaxN, kWarps, kR, kGated>(w, n, y, act, accum, [&](int64_t r0, int lane, float (&acc)[kR][kMaxN]) {
    constexpr int kBytes = kq_block_bytes(kT);
    const int chunks = static_cast<int>(w.cols >> 5);
    const uint8_t* rows[kR];
    bool live[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {  // rows past the matrix read its last row, with scales and mins 0
      const DevMatrix& m = kGated && r == 1 ? w2 : w;
      const int64_t rr = kGated ? r0 : r0 + r;
      live[r] = rr < m.rows;
      rows[r] = static_cast<const uint8_t*>(m.data) + min(rr, m.rows - 1) * m.row_bytes;
    }
    for (int c0 = lane; c0 < chunks; c0 += 32 * kU) {
      KqChunk ch[kU][kR];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int c = min(c0 + 32 * u, chunks - 1);
        const bool in = c0 + 32 * u < chunks;
#pragma unroll
        for (int r = 0; r < kR; ++r) {
          kq_chunk<kT>(rows[r] + (c >> 3) * kBytes, c & 7, ch[u][r]);
          const bool on = in && live[r];
          ch[u][r].s0 = on ? ch[u][r].s0 : 0.0f, ch[u][r].s1 = on ? ch[u][r].s1 : 0.0f;
          ch[u][r].m0 = on ? ch[u][r].m0 : 0.0f, ch[u][r].m1 = on ? ch[u][r].m1 : 0.0f;
        }
      }
      pdl_wait();  // weights are in flight; x is the previous operation's output
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int c = min(c0 + 32 * u, chunks - 1);
#pragma unroll
        for (int i = 0; i < kMaxN; ++i) {
          if (i >= n) break;
          const XBlock x = x_block(xq, xscale, xsum, chunks, i, c);
#pragma unroll
          for (int r = 0; r < kR; ++r) acc[r][i] += kq_chunk_dot<kT>(ch[u][r], x.v, x.scale, x.sum);
        }
      }
    }
  });
}

// Calls f(std::integral_constant<DType, ...>{}) for a k-quant with int8 products.
template <typename F>
void with_kquant(DType t, F&& f) {
  switch (t) {
    case DType::Q2_K: f(std::integral_constant<DType, DType::Q2_K>{}); break;
    case DType::Q3_K: f(std::integral_constant<DType, DType::Q3_K>{}); break;
    case DType::Q4_K: f(std::integral_constant<DType, DType::Q4_K>{}); break;
    case DType::Q5_K: f(std::integral_constant<DType, DType::Q5_K>{}); break;
    default: f(std::integral_constant<DType, DType::Q6_K>{}); break;
  }
}

// The k-quant int8 launch shape: two chunks a lane in flight; one row a warp
// for matrices of at most 4096 rows (more warps for the short, wide ones:
// Q6_K's ffn_down reached 50% of the DRAM bandwidth at 22% achieved occupancy
// with two rows a warp; H100, q4_k_m Llama-3-8B decode @128: 301.6 / 301.5
// tok/s against 290.8 / 290.8), two rows a warp for the taller ones.
// OPTIQ_CUDA_KQUANT_ROWS=0: two rows a warp everywhere, =2: one everywhere (A/B runs).
constexpr int kKqRows = 2, kKqChunks = 2;

bool kquant_one_row(const DevMatrix& w) {
  static const long long mode = env_int("OPTIQ_CUDA_KQUANT_ROWS", 1);
  return mode == 2 || (mode == 1 && w.rows <= 4096);
}

template <int kMaxN>
void launch_kquant_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                        cudaStream_t s, float* accum) {
  with_kquant(w.kquant, [&](auto t) {
    constexpr DType kT = decltype(t)::value;
    if (kquant_one_row(w))
      launch(kquant_int8_kernel<kT, kMaxN, 1, kKqChunks>, blocks_for(w.rows, kWarps), kWarps * 32, 0, s, w, xq, xs,
             xsum, n, y, DevMatrix{}, GateAct::Silu, accum);
    else
      launch(kquant_int8_kernel<kT, kMaxN, kKqRows, kKqChunks>, blocks_for(w.rows, kWarps * kKqRows), kWarps * 32, 0,
             s, w, xq, xs, xsum, n, y, DevMatrix{}, GateAct::Silu, accum);
  });
}

template <int kBits, int kMaxN, int kW, int kR, int kU>
void int8_with(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
               unsigned grid, cudaStream_t s, float* accum = nullptr) {
  // Decode of one row only; one row a warp is an A/B launch shape: neither splits.
  if constexpr (kR == 2 && kMaxN == 1) {
    if (grid == 0 && split_rows(w.cols)) {  // as many rows a block, twice the warps
      launch(affine_int8_kernel<kBits, kMaxN, kW * kSplitParts, kR, kU, false, kSplitParts>,
             blocks_for(w.rows, kW * kR), kW * kSplitParts * 32, 0, s, w, xq, xs, xsum, n, y, DevMatrix{},
             GateAct::Silu, accum);
      return;
    }
  }
  if (grid == 0) grid = blocks_for(w.rows, kW * kR);
  launch(affine_int8_kernel<kBits, kMaxN, kW, kR, kU>, grid, kW * 32, 0, s, w, xq, xs, xsum, n, y, DevMatrix{},
         GateAct::Silu, accum);
}


// Launch shapes of the int8 products (bench/gpu_kernels.cpp sweeps them):
// two rows a warp, 4 chunks a lane in flight (2 at 8 bits). Measured on an
// H100 with the plane layout, it is the fastest or within 2% of it on every
// Llama-3-8B matrix at every width, 3-44% faster than what the H200 sweep of
// the bit-stream layout had chosen (one row a warp, 3-8 chunks by width).
// OPTIQ_CUDA_DECODE_ROWS=1 restores that for A/B runs (chunks_one_row and
// chunks_two_rows, matvec_rows.cuh). One row a warp only for the matrices of
// at most 4096 rows (what pays for the k-quants) measured 1-2% slower here
// (H100, q4 / mixed4.5 decode @128: 378.9 / 350.3 against 382.8 / 356.1 tok/s).
bool one_row_a_warp() {
  static const bool on = env_int("OPTIQ_CUDA_DECODE_ROWS", 0) == 1;
  return on;
}

template <int kMaxN>
void launch_affine_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                        cudaStream_t s, float* accum) {
  constexpr int kW = 4;
  const bool one_row = one_row_a_warp();
  with_bits(w.bits, [&](auto bits) {
    constexpr int kB = decltype(bits)::value;
    if (one_row)
      int8_with<kB, kMaxN, kW, 1, chunks_one_row(kB)>(w, xq, xs, xsum, n, y, 0, s, accum);
    else
      int8_with<kB, kMaxN, kW, 2, chunks_two_rows(kB)>(w, xq, xs, xsum, n, y, 0, s, accum);
  });
}

template <int kMaxN>
void launch_affine_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  constexpr int kW = 4, kR = 1;
  const unsigned grid = blocks_for(w.rows, kW * kR);
  with_bits(w.bits, [&](auto bits) {
    constexpr int kB = decltype(bits)::value;
    launch(affine_f32_kernel<kB, kMaxN, kW, kR, kB <= 4 ? 4 : 2>, grid, kW * 32, 0, s, w, x, n, y, DevMatrix{},
           GateAct::Silu);
  });
}

// Dense decode launch shape (dense_kernel and dense_group_kernel share it, so
// a grouped row is the same bits as its own launch).
constexpr int kDenseW = 4, kDenseR = 1, kDenseU = 4;

template <DevStorage kStorage, int kMaxN>
void launch_dense(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s, float* accum = nullptr) {
  launch(dense_kernel<kStorage, kMaxN, kDenseW, kDenseR, kDenseU>, blocks_for(w.rows, kDenseW * kDenseR),
         kDenseW * 32, 0, s, w, x, n, y, DevMatrix{}, GateAct::Silu, accum);
}

bool is_dense(const DevMatrix& w) {
  return w.storage == DevStorage::F32 || w.storage == DevStorage::F16 || w.storage == DevStorage::BF16;
}

// Calls f(std::integral_constant<DevStorage, ...>{}) for a dense storage.
template <typename F>
void with_dense(DevStorage st, F&& f) {
  switch (st) {
    case DevStorage::F32: f(std::integral_constant<DevStorage, DevStorage::F32>{}); break;
    case DevStorage::F16: f(std::integral_constant<DevStorage, DevStorage::F16>{}); break;
    default: f(std::integral_constant<DevStorage, DevStorage::BF16>{}); break;
  }
}

// OPTIQ_CUDA_KQUANT_FAST=0 decodes Q4_K and Q6_K through decode_chunk (A/B runs).
bool kquant_fast_enabled() {
  static const bool on = env_switch("OPTIQ_CUDA_KQUANT_FAST", true);
  return on;
}

template <int kMaxN>
void launch_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  switch (w.storage) {
    case DevStorage::Affine: launch_affine_f32<kMaxN>(w, x, n, y, s); return;
    case DevStorage::KQuant: {
      const unsigned grid = blocks_for(w.rows, kWarps * kGenericRows);
      if (w.kquant == DType::Q4_K && kquant_fast_enabled())
        launch(chunk_kernel<ChunkDecode::Q4K, kMaxN>, grid, kWarps * 32, 0, s, w, x, n, y);
      else if (w.kquant == DType::Q6_K && kquant_fast_enabled())
        launch(chunk_kernel<ChunkDecode::Q6K, kMaxN>, grid, kWarps * 32, 0, s, w, x, n, y);
      else
        launch(chunk_kernel<ChunkDecode::Any, kMaxN>, grid, kWarps * 32, 0, s, w, x, n, y);
      return;
    }
    case DevStorage::F32: launch_dense<DevStorage::F32, kMaxN>(w, x, n, y, s); return;
    case DevStorage::F16: launch_dense<DevStorage::F16, kMaxN>(w, x, n, y, s); return;
    case DevStorage::BF16: launch_dense<DevStorage::BF16, kMaxN>(w, x, n, y, s); return;
  }
}

template <int kW, int kR, int kU>
void launch_tuned(const DevMatrix& w, const float* x, const int8_t* xq, const float* xs, const int32_t* xsum, float* y,
                  unsigned grid, cudaStream_t s) {
  if (w.storage == DevStorage::Affine) {
    with_bits(w.bits, [&](auto bits) {
      constexpr int kB = decltype(bits)::value;
      int8_with<kB, 1, kW, kR, kB == 8 ? (kU + 1) / 2 : kU>(w, xq, xs, xsum, 1, y, grid, s);
    });
  } else if (w.storage == DevStorage::BF16) {
    if (grid == 0) grid = blocks_for(w.rows, kW * kR);
    launch(dense_kernel<DevStorage::BF16, 1, kW, kR, kU>, grid, kW * 32, 0, s, w, x, 1, y, DevMatrix{}, GateAct::Silu,
           nullptr);
  }
}

}  // namespace

const char* const kMatvecTunings[kMatvecTuningCount] = {"w4r2u4", "w4r1u8", "w4r1u4", "w8r1u8",
                                                        "w8r2u4", "w4r4u2", "w8r1u4", "default"};

bool matvec_tuned(int tuning, const DevMatrix& w, const float* x, const int8_t* xq, const float* xs,
                  const int32_t* xsum, float* y, unsigned grid, cudaStream_t s) {
  switch (tuning) {
    case 0: launch_tuned<4, 2, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    case 1: launch_tuned<4, 1, 8>(w, x, xq, xs, xsum, y, grid, s); break;
    case 2: launch_tuned<4, 1, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    case 3: launch_tuned<8, 1, 8>(w, x, xq, xs, xsum, y, grid, s); break;
    case 4: launch_tuned<8, 2, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    case 5: launch_tuned<4, 4, 2>(w, x, xq, xs, xsum, y, grid, s); break;
    case 6: launch_tuned<8, 1, 4>(w, x, xq, xs, xsum, y, grid, s); break;
    case 7:  // what the backend launches
      if (w.storage == DevStorage::Affine) {
        matvec_int8(w, xq, xs, xsum, 1, y, s);
      } else {
        matvec_f32(w, x, 1, y, s);
      }
      return true;
    default: return false;
  }
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

void matvec_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s) {
  if (n <= 0) return;
  const bool dense = w.storage == DevStorage::F32 || w.storage == DevStorage::F16 || w.storage == DevStorage::BF16;
  if (dense && w.cols % 8 != 0) {
    launch(dense_scalar_kernel, blocks_for(w.rows, kWarps), kWarps * 32, 0, s, w, x, n, y);
  } else if (n == 1) {
    launch_f32<1>(w, x, n, y, s);
  } else {
    launch_f32<kMatvecMaxRows>(w, x, n, y, s);
  }
  OPTIQ_CUDA_LAUNCHED();
}

// OPTIQ_CUDA_KQUANT_INT8=0: k-quant decode products take fp32 activations
// (chunk_kernel) under fast numerics too (A/B runs).
bool kquant_int8_enabled() {
  static const bool on = env_switch("OPTIQ_CUDA_KQUANT_INT8", true);
  return on;
}

bool has_matvec_int8(const DevMatrix& w) {
  return w.storage == DevStorage::Affine ||
         (w.storage == DevStorage::KQuant && kq_has_int8(w.kquant) && kquant_int8_enabled());
}

// OPTIQ_CUDA_DENSE_FUSE: which dense decode fusions run. "1" (the default):
// the residual add in the o/down products and q/k/v in one launch (the
// group; its first build read x through __ldg and failed the GPU tests under
// PDL; with plain loads it passes them, BENCHMARKS.md §6); "residual" or
// "group": one of them; "0": neither (A/B runs).
bool dense_fuse_enabled(const char* which) {
  static const std::string v = [] {
    const char* e = std::getenv("OPTIQ_CUDA_DENSE_FUSE");
    return std::string(e ? e : "1");
  }();
  return v == "1" || v == which;
}

bool has_matvec_dense(const DevMatrix& w, bool group) {
  return dense_fuse_enabled(group ? "group" : "residual") && is_dense(w) && w.cols % 8 == 0;
}

bool matvec_dense(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s, float* accum) {
  if (!has_matvec_dense(w, false) || n <= 0 || n > kMatvecMaxRows) return false;
  with_dense(w.storage, [&](auto st) {
    constexpr DevStorage kS = decltype(st)::value;
    if (n == 1)
      launch_dense<kS, 1>(w, x, n, y, s, accum);
    else
      launch_dense<kS, kMatvecMaxRows>(w, x, n, y, s, accum);
  });
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

namespace {
template <int kMaxN>
bool launch_gated(const DevMatrix& g, const DevMatrix& u, GateAct act, const float* x, const int8_t* xq,
                  const float* xs, const int32_t* xsum, int n, float* out, cudaStream_t s) {
  constexpr int kW = 4;
  const unsigned grid = blocks_for(g.rows, kW);
  if (g.storage == DevStorage::Affine) {
    if (xq) {
      with_bits(g.bits, [&](auto bits) {
        constexpr int kB = decltype(bits)::value;
        launch(affine_int8_kernel<kB, kMaxN, kW, 2, chunks_gated(kB), true>, grid, kW * 32, 0, s, g, xq,
               xs, xsum, n, out, u, act, nullptr);
      });
    } else {
      with_bits(g.bits, [&](auto bits) {
        constexpr int kB = decltype(bits)::value;
        launch(affine_f32_kernel<kB, kMaxN, kW, 2, kB <= 4 ? 2 : 1, true>, grid, kW * 32, 0, s, g, x, n, out, u, act);
      });
    }
    return true;
  }
  if (g.storage == DevStorage::KQuant) {
    if (!xq || g.kquant != u.kquant || !kq_has_int8(g.kquant)) return false;
    with_kquant(g.kquant, [&](auto t) {
      constexpr DType kT = decltype(t)::value;
      launch(kquant_int8_kernel<kT, kMaxN, 2, kKqChunks, true>, grid, kW * 32, 0, s, g, xq, xs, xsum, n, out, u, act,
             nullptr);
    });
    return true;
  }
  if (g.cols % 8 != 0 || xq || !is_dense(g)) return false;
  with_dense(g.storage, [&](auto st) {
    constexpr DevStorage kS = decltype(st)::value;
    launch(dense_kernel<kS, kMaxN, kW, 2, 2, true>, grid, kW * 32, 0, s, g, x, n, out, u, act, nullptr);
  });
  return true;
}
}  // namespace

bool matvec_gated(const DevMatrix& g, const DevMatrix& u, GateAct act, const float* x, const int8_t* xq,
                  const float* xscale, const int32_t* xsum, int n, float* out, cudaStream_t s) {
  const bool same = g.storage == u.storage && g.rows == u.rows && g.cols == u.cols && g.bits == u.bits &&
                    g.group == u.group && g.bf16_scales == u.bf16_scales && (g.biases == nullptr) == (u.biases == nullptr) &&
                    g.zero_point == u.zero_point && g.act == ActRounding::Exact && u.act == ActRounding::Exact;
  if (!same || n <= 0 || n > kMatvecMaxRows) return false;
  if (n == 1 && xq && g.storage == DevStorage::Affine) {
    PersistentStep st;
    st.kind = StepKind::Gated, st.w[0] = g, st.w[1] = u, st.y[0] = out, st.act = act;
    st.xq = xq, st.xscale = xscale, st.xsum = xsum;
    if (persistent_take(s, st)) return true;
  }
  const bool launched = n == 1 ? launch_gated<1>(g, u, act, x, xq, xscale, xsum, n, out, s)
                               : launch_gated<kMatvecMaxRows>(g, u, act, x, xq, xscale, xsum, n, out, s);
  if (launched) OPTIQ_CUDA_LAUNCHED();
  return launched;
}

void matvec_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                 cudaStream_t s, float* accum) {
  if (n <= 0) return;
  if (w.storage == DevStorage::KQuant) {
    if (n == 1)
      launch_kquant_int8<1>(w, xq, xs, xsum, n, y, s, accum);
    else
      launch_kquant_int8<kMatvecMaxRows>(w, xq, xs, xsum, n, y, s, accum);
    OPTIQ_CUDA_LAUNCHED();
    return;
  }
  // The launch shape the persistent step runs (one warp a row: split rows launch on their own).
  if (n == 1 && !one_row_a_warp() && !split_rows(w.cols)) {
    PersistentStep st;
    st.kind = StepKind::Product, st.w[0] = w, st.y[0] = y, st.accum = accum;
    st.xq = xq, st.xscale = xs, st.xsum = xsum;
    if (persistent_take(s, st)) return;
  }
  if (n == 1)
    launch_affine_int8<1>(w, xq, xs, xsum, n, y, s, accum);
  else
    launch_affine_int8<kMatvecMaxRows>(w, xq, xs, xsum, n, y, s, accum);
  OPTIQ_CUDA_LAUNCHED();
}

namespace {
// ws[0..count) as one run of rows.
MatrixGroup make_group(const DevMatrix* ws, float* const* ys, int count) {
  MatrixGroup g;
  g.w0 = ws[0], g.y0 = ys[0], g.end0 = ws[0].rows;
  g.w1 = count > 1 ? ws[1] : ws[0], g.y1 = count > 1 ? ys[1] : ys[0], g.end1 = g.end0 + (count > 1 ? ws[1].rows : 0);
  g.w2 = count > 2 ? ws[2] : ws[0], g.y2 = count > 2 ? ys[2] : ys[0], g.end2 = g.end1 + (count > 2 ? ws[2].rows : 0);
  return g;
}

template <int kMaxN>
void launch_group(const MatrixGroup& g, const int8_t* xq, const float* xs, const int32_t* xsum, int n, int bits,
                  bool pairs, cudaStream_t s) {
  constexpr int kW = 4;
  with_bits(bits, [&](auto b) {
    constexpr int kB = decltype(b)::value;
    // Split as a product of its own splits (one activation row; rows in pairs: the caller checked).
    if constexpr (kMaxN == 1) {
      if (split_rows(g.w0.cols)) {
        launch(affine_int8_group_kernel<kB, 1, kW * kSplitParts, 2, chunks_two_rows(kB), kSplitParts>,
               blocks_for(g.end2, kW * 2), kW * kSplitParts * 32, 0, s, g, xq, xs, xsum, n);
        return;
      }
    }
    if (pairs)
      launch(affine_int8_group_kernel<kB, kMaxN, kW, 2, chunks_two_rows(kB)>, blocks_for(g.end2, kW * 2), kW * 32, 0,
             s, g, xq, xs, xsum, n);
    else
      launch(affine_int8_group_kernel<kB, kMaxN, kW, 1, chunks_one_row(kB)>, blocks_for(g.end2, kW), kW * 32, 0, s,
             g, xq, xs, xsum, n);
  });
}
// Calls f(integral_constant<int, a>, integral_constant<int, b>) for widths a < b.
template <typename F>
void with_two_bits(int a, int b, F&& f) {
  with_bits(a, [&](auto ca) {
    with_bits(b, [&](auto cb) {
      constexpr int kA = decltype(ca)::value, kB = decltype(cb)::value;
      if constexpr (kA < kB) f(ca, cb);
    });
  });
}

// (Rows in pairs only, as the products of their own run them: 15 kernels.)
void launch_group_mixed(const MatrixGroup& g, const int8_t* xq, const float* xs, const int32_t* xsum, int low,
                        int high, cudaStream_t s) {
  constexpr int kW = 4;
  with_two_bits(low, high, [&](auto a, auto b) {
    constexpr int kA = decltype(a)::value, kB = decltype(b)::value;
    launch(affine_int8_group_mixed_kernel<kA, kB, 1, kW, 2>, blocks_for(g.end2, kW * 2), kW * 32, 0, s, g, xq, xs,
           xsum, 1);
  });
}

// q, k and v of two widths in one launch (a mixed plan's q4/k4/v6). H100,
// decode at 128 tokens: Llama-3-8B mixed4.5 415 -> 432 tok/s, mixed3.5 440
// -> 481 (BENCHMARKS.md §6). OPTIQ_CUDA_MIXED_GROUP=0: three launches again.
bool mixed_groups() {
  static const bool on = env_switch("OPTIQ_CUDA_MIXED_GROUP", true);
  return on;
}
}  // namespace

bool matvec_int8_group(const DevMatrix* ws, float* const* ys, int count, const int8_t* xq, const float* xscale,
                       const int32_t* xsum, int n, cudaStream_t s) {
  if (count < 1 || count > 3 || n <= 0 || n > kMatvecMaxRows) return false;
  const DevMatrix& a = ws[0];
  bool same = true;
  int low = a.bits, high = a.bits;  // the widths (at most two for one launch)
  for (int i = 0; i < count; ++i) {
    const DevMatrix& b = ws[i];
    // Group size, scale type and biases are read per matrix at run time; the width is compiled in.
    if (b.storage != DevStorage::Affine || b.cols != a.cols || b.act != ActRounding::Exact) return false;
    same = same && b.bits == a.bits && b.group == a.group && b.bf16_scales == a.bf16_scales &&
           (b.biases == nullptr) == (a.biases == nullptr) && b.zero_point == a.zero_point;
    low = std::min(low, b.bits), high = std::max(high, b.bits);
  }
  const MatrixGroup g = make_group(ws, ys, count);
  // Two rows a warp where every matrix's rows pair up (a warp stays in one matrix).
  const bool pairs = !one_row_a_warp() && g.end0 % 2 == 0 && g.end1 % 2 == 0;
  // Split rows (one activation row) group only in pairs (else a product each, as the products split).
  if (n == 1 && split_rows(a.cols) && !pairs) return false;
  if (!same) {
    // One or two widths (other details differ), one activation row (decode),
    // rows in pairs and not split: one launch.
    bool two_widths = n == 1 && pairs && !split_rows(a.cols) && mixed_groups();
    for (int i = 0; i < count; ++i) two_widths = two_widths && (ws[i].bits == low || ws[i].bits == high);
    if (!two_widths) return false;
    if (low == high)
      launch_group<1>(g, xq, xscale, xsum, 1, low, pairs, s);
    else
      launch_group_mixed(g, xq, xscale, xsum, low, high, s);
    OPTIQ_CUDA_LAUNCHED();
    return true;
  }
  if (n == 1 && pairs && !split_rows(a.cols)) {
    PersistentStep st;
    st.kind = StepKind::Group, st.count = count;
    for (int i = 0; i < count; ++i) st.w[i] = ws[i], st.y[i] = ys[i];
    st.xq = xq, st.xscale = xscale, st.xsum = xsum;
    if (persistent_take(s, st)) return true;
  }
  if (n == 1)
    launch_group<1>(g, xq, xscale, xsum, n, a.bits, pairs, s);
  else
    launch_group<kMatvecMaxRows>(g, xq, xscale, xsum, n, a.bits, pairs, s);
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

bool matvec_dense_group(const DevMatrix* ws, float* const* ys, int count, const float* x, int n, cudaStream_t s) {
  if (count < 1 || count > 3 || n <= 0 || n > kMatvecMaxRows) return false;
  for (int i = 0; i < count; ++i)
    if (!has_matvec_dense(ws[i], true) || ws[i].storage != ws[0].storage || ws[i].cols != ws[0].cols) return false;
  const MatrixGroup g = make_group(ws, ys, count);
  with_dense(ws[0].storage, [&](auto st) {
    constexpr DevStorage kS = decltype(st)::value;
    const unsigned grid = blocks_for(g.end2, kDenseW * kDenseR);
    if (n == 1)
      launch(dense_group_kernel<kS, 1, kDenseW, kDenseR, kDenseU>, grid, kDenseW * 32, 0, s, g, x, n);
    else
      launch(dense_group_kernel<kS, kMatvecMaxRows, kDenseW, kDenseR, kDenseU>, grid, kDenseW * 32, 0, s, g, x, n);
  });
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

}  // namespace optiq::cuda
