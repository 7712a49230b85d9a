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

__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Integer dot product of 32 kBits-bit codes (kBits words, code_planes.h's
// layout) with 32 int8 activations (8 words): the planes put group g's four
// codes in the bytes of activation word g, so each dp4a takes them as they
// are (the MLX bit stream needed a byte shuffle of x per dp4a at 4 bits and a
// code-by-code gather at 3, 5 and 6).
template <int kBits>
__device__ __forceinline__ int dot_chunk(const uint32_t (&w)[kBits], const int (&x)[8]) {
  int acc = 0;
#pragma unroll
  for (int g = 0; g < 8; ++g) acc = dp4a_us(group_codes<kBits>(w, g), x[g], acc);
  return acc;
}


// One weight row of an affine matrix as the kernels walk it. Rows past the
// matrix point at its last row with `live` false: loads stay in bounds and
// branch-free (a branch between loads keeps the compiler from issuing them
// together), and the chunk's scale and bias become 0.
struct AffineRow {
  const uint32_t* words;
  const uint16_t* scales;
  const uint16_t* biases;  // the scales again for symmetric groups (then unused)
  bool live;
};

__device__ __forceinline__ AffineRow affine_row(const DevMatrix& w, int64_t r, int kBits) {
  const int64_t row = min(r, w.rows - 1);
  const int glog = w.group == 32 ? 5 : (w.group == 64 ? 6 : 7);
  const int64_t gpr = w.cols >> glog;  // groups per row (no 64-bit division in the loop)
  AffineRow a;
  a.words = static_cast<const uint32_t*>(w.data) + row * ((w.cols * kBits) >> 5);
  a.scales = w.scales + row * gpr;
  a.biases = (w.biases ? w.biases : w.scales) + row * gpr;
  a.live = r < w.rows;
  return a;
}

// Codes, scale and bias of chunk c of a row; c past the row (or a dead row)
// reads chunk `last` and gets scale and bias 0.
template <int kBits>
__device__ __forceinline__ void load_chunk(const DevMatrix& w, const AffineRow& a, int c, int chunks, int gshift,
                                           uint32_t (&words)[kBits], float& s, float& b) {
  const bool live = a.live && c < chunks;
  const int cc = min(c, chunks - 1);
  load_words<kBits>(a.words + cc * kBits, words);
  const float sv = scale_word(__ldg(a.scales + (cc >> gshift)), w.bf16_scales);
  const float bv = scale_word(__ldg(a.biases + (cc >> gshift)), w.bf16_scales);
  s = live ? sv : 0.0f;
  b = live ? (w.biases ? bv : __fmul_rn(static_cast<float>(-w.zero_point), sv)) : 0.0f;
}

// A warp's row slots: rows r0.. of w, or row r0 of w and of w2 (a gated pair).
template <int kBits, int kR, bool kGated>
__device__ __forceinline__ void affine_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, AffineRow (&rows)[kR]) {
#pragma unroll
  for (int r = 0; r < kR; ++r) rows[r] = affine_row(kGated && r == 1 ? w2 : w, kGated ? r0 : r0 + r, kBits);
}

// The kU chunks (c0, c0 + 32, ...) of every row slot: codes, scales and biases.
template <int kBits, int kR, int kU, bool kGated>
__device__ __forceinline__ void load_chunks(const DevMatrix& w, const DevMatrix& w2, const AffineRow (&rows)[kR],
                                            int c0, int chunks, int gshift, uint32_t (&words)[kU][kR][kBits],
                                            float (&sc)[kU][kR], float (&bi)[kU][kR]) {
#pragma unroll
  for (int u = 0; u < kU; ++u)
#pragma unroll
    for (int r = 0; r < kR; ++r)
      load_chunk<kBits>(kGated && r == 1 ? w2 : w, rows[r], c0 + 32 * u, chunks, gshift, words[u][r], sc[u][r],
                        bi[u][r]);
}

template <int kMaxN>
__device__ __forceinline__ void store_rows(const float (&acc)[kMaxN], int n, int64_t r, int64_t rows, int lane,
                                           float* y, float* accum = nullptr) {
#pragma unroll
  for (int i = 0; i < kMaxN; ++i) {
    const float v = warp_sum(acc[i]);
    if (lane == 0 && i < n && r < rows) {
      y[i * rows + r] = v;
      if (accum) accum[i * rows + r] += v;  // each row has one writer: no race with other warps
    }
  }
}

// Gated pairs (matvec_gated): a warp's two row slots are row r of G and row r
// of U; their sums meet in act(g) * u.
template <int kMaxN>
__device__ __forceinline__ void store_gated(const float (&g)[kMaxN], const float (&u)[kMaxN], GateAct act, int n,
                                            int64_t r, int64_t rows, int lane, float* y) {
#pragma unroll
  for (int i = 0; i < kMaxN; ++i) {
    const float gs = warp_sum(g[i]), us = warp_sum(u[i]);
    if (lane == 0 && i < n && r < rows) y[i * rows + r] = (act == GateAct::Silu ? silu(gs) : gelu_tanh(gs)) * us;
  }
}

// Rows a warp owns per step: kR, or one row of each matrix of a gated pair.
template <bool kGated, int kR>
__host__ __device__ constexpr int warp_rows() {
  return kGated ? 1 : kR;
}

// The walk every product kernel makes: warps take kStep rows at a time, the
// grid strides over the rest; fn(r0) does rows r0...
template <int kW, int kStep, typename Fn>
__device__ __forceinline__ void for_warp_rows(int64_t rows, Fn&& fn) {
  const int warp = threadIdx.x >> 5;
  for (int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kW + warp) * kStep; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.x) * kW * kStep)
    fn(r0);
}

// One matrix (or a gated pair) against x: each warp's row slots summed by
// rows_fn(r0, lane, acc) (acc[r][i] = row slot r . x_i, zeroed here), then
// stored: a gated pair through its activation, else row by row (and added
// to accum when given).
template <int kMaxN, int kW, int kR, bool kGated, typename RowsFn>
__device__ __forceinline__ void matvec_rows(const DevMatrix& w, int n, float* y, GateAct act, float* accum,
                                            RowsFn&& rows_fn) {
  static_assert(!kGated || kR == 2, "a gated pair takes two row slots");
  const int lane = threadIdx.x & 31;
  for_warp_rows<kW, warp_rows<kGated, kR>()>(w.rows, [&](int64_t r0) {
    float acc[kR][kMaxN] = {};
    rows_fn(r0, lane, acc);
    if constexpr (kGated) {
      store_gated<kMaxN>(acc[0], acc[1], act, n, r0, w.rows, lane, y);
    } else {
#pragma unroll
      for (int r = 0; r < kR; ++r) store_rows<kMaxN>(acc[r], n, r0 + r, w.rows, lane, y, accum);
    }
  });
}

// One set of kU chunks of every row slot against the int8 activation blocks.
template <int kBits, int kMaxN, int kR, int kU>
__device__ __forceinline__ void int8_chunks(int c0, int chunks, const uint32_t (&words)[kU][kR][kBits],
                                            const float (&sc)[kU][kR], const float (&bi)[kU][kR],
                                            const int8_t* xq, const float* xscale,
                                            const int32_t* xsum, int n, float (&acc)[kR][kMaxN]) {
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int c = min(c0 + 32 * u, chunks - 1);  // a valid address; its scale is 0 past the row
#pragma unroll
    for (int i = 0; i < kMaxN; ++i) {
      if (i >= n) break;
      const int4* p = reinterpret_cast<const int4*>(xq + (static_cast<int64_t>(i) * chunks + c) * 32);
      const int4 a = p[0], b = p[1];  // plain loads: the previous kernel's output (see dense_rows)
      const int xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      const float sx = xscale[i * chunks + c];
      const float sumx = sx * static_cast<float>(xsum[i * chunks + c]);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const int d = dot_chunk<kBits>(words[u][r], xv);
        acc[r][i] += sc[u][r] * (sx * static_cast<float>(d)) + bi[u][r] * sumx;
      }
    }
  }
}

// The walk over the kR row slots of a warp (rows r0.. of w, or row r0 of w
// and of w2) in sets of kU chunks a lane: each set's codes and grid words
// loaded, then chunks_fn(c0, chunks, words, sc, bi) does its arithmetic.
// (Loading the next set of chunks before this set's arithmetic made the down
// product slower on the H200, 17.7 -> 22.6 us: the registers it takes cost
// more occupancy than the overlap gains.)
template <int kBits, int kR, int kU, bool kGated, typename ChunksFn>
__device__ __forceinline__ void affine_chunk_walk(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                                  ChunksFn&& chunks_fn) {
  const int chunks = static_cast<int>(w.cols >> 5);
  const int gshift = w.group == 32 ? 0 : (w.group == 64 ? 1 : 2);
  AffineRow rows[kR];
  affine_rows<kBits, kR, kGated>(w, w2, r0, rows);
  for (int c0 = lane; c0 < chunks; c0 += 32 * kU) {
    uint32_t words[kU][kR][kBits];
    float sc[kU][kR], bi[kU][kR];
    load_chunks<kBits, kR, kU, kGated>(w, w2, rows, c0, chunks, gshift, words, sc, bi);
    pdl_wait();  // weights are in flight; x is the previous operation's output
    chunks_fn(c0, chunks, words, sc, bi);
  }
}

// Against int8 activation blocks: acc[r][i] = row slot r . x_i.
template <int kBits, int kMaxN, int kR, int kU, bool kGated>
__device__ __forceinline__ void int8_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                          const int8_t* xq, const float* xscale,
                                          const int32_t* xsum, int n, float (&acc)[kR][kMaxN]) {
  affine_chunk_walk<kBits, kR, kU, kGated>(
      w, w2, r0, lane,
      [&](int c0, int chunks, const uint32_t (&words)[kU][kR][kBits], const float (&sc)[kU][kR],
          const float (&bi)[kU][kR]) {
        int8_chunks<kBits, kMaxN, kR, kU>(c0, chunks, words, sc, bi, xq, xscale, xsum, n, acc);
      });
}

template <int kBits, int kMaxN, int kW, int kR, int kU, bool kGated = false>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_kernel(DevMatrix w, const int8_t* xq, const float* xscale,
                       const int32_t* xsum, int n, float* __restrict__ y, DevMatrix w2 = {},
                       GateAct act = GateAct::Silu, float* accum = nullptr) {
  pdl_trigger();
  matvec_rows<kMaxN, kW, kR, kGated>(w, n, y, act, accum, [&](int64_t r0, int lane, float (&acc)[kR][kMaxN]) {
    int8_rows<kBits, kMaxN, kR, kU, kGated>(w, w2, r0, lane, xq, xscale, xsum, n, acc);
  });
}

// Up to three matrices of one format that read the same input (q, k, v) in
// one launch: their rows are numbered one after the other and a warp takes
// one row at a time, so the small k and v products share the launch (and
// its fixed cost) with q.
struct MatrixGroup {
  DevMatrix w0, w1, w2;
  float *y0 = nullptr, *y1 = nullptr, *y2 = nullptr;
  int64_t end0 = 0, end1 = 0, end2 = 0;  // running row counts
};

// Row R of a group's run of rows: its matrix, that matrix's output, and its
// row within the matrix (uniform in a warp: a warp's rows share a matrix).
struct GroupRow {
  DevMatrix w;
  float* y;
  int64_t r;
};
__device__ __forceinline__ GroupRow group_row(const MatrixGroup& g, int64_t R) {
  const int m = R < g.end0 ? 0 : (R < g.end1 ? 1 : 2);
  return {m == 0 ? g.w0 : (m == 1 ? g.w1 : g.w2), m == 0 ? g.y0 : (m == 1 ? g.y1 : g.y2),
          R - (m == 0 ? 0 : (m == 1 ? g.end0 : g.end1))};
}

// A group's rows, kR a warp (the host keeps each matrix's row count a
// multiple of kR, so a warp's rows are all in one matrix), summed by
// rows_fn(gr, lane, acc) and stored.
template <int kMaxN, int kW, int kR, typename RowsFn>
__device__ __forceinline__ void group_rows(const MatrixGroup& g, int n, RowsFn&& rows_fn) {
  const int lane = threadIdx.x & 31;
  for_warp_rows<kW, kR>(g.end2, [&](int64_t R) {
    const GroupRow gr = group_row(g, R);
    float acc[kR][kMaxN] = {};
    rows_fn(gr, lane, acc);
#pragma unroll
    for (int i = 0; i < kR; ++i) store_rows<kMaxN>(acc[i], n, gr.r + i, gr.w.rows, lane, gr.y);
  });
}

template <int kBits, int kMaxN, int kW, int kR, int kU>
__global__ void __launch_bounds__(kW * 32)
    affine_int8_group_kernel(MatrixGroup g, const int8_t* xq, const float* xscale,
                             const int32_t* xsum, int n) {
  pdl_trigger();
  group_rows<kMaxN, kW, kR>(g, n, [&](const GroupRow& gr, int lane, float (&acc)[kR][kMaxN]) {
    int8_rows<kBits, kMaxN, kR, kU, false>(gr.w, gr.w, gr.r, lane, xq, xscale, xsum, n, acc);
  });
}

// fp32 activations, affine storage: codes decoded in registers, scale and
// bias applied once per chunk through the chunk's sum of x. The kR row slots
// of a warp: acc[r][i] = row slot r . x_i (x read with plain loads after
// pdl_wait(), as in dense_rows).
template <int kBits, int kMaxN, int kR, int kU, bool kGated>
__device__ __forceinline__ void affine_f32_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                                const float* x, int n, float (&acc)[kR][kMaxN]) {
  affine_chunk_walk<kBits, kR, kU, kGated>(
      w, w2, r0, lane,
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


template <int kBits, int kMaxN, int kW, int kR, int kU>
void int8_with(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
               unsigned grid, cudaStream_t s, float* accum = nullptr) {
  if (grid == 0) grid = blocks_for(w.rows, kW * kR);
  launch(affine_int8_kernel<kBits, kMaxN, kW, kR, kU>, grid, kW * 32, 0, s, w, xq, xs, xsum, n, y, DevMatrix{},
         GateAct::Silu, accum);
}


// Launch shapes of the int8 products (bench/gpu_kernels.cpp sweeps them):
// two rows a warp, 4 chunks a lane in flight (2 at 8 bits). Measured on an
// H100 with the plane layout, it is the fastest or within 2% of it on every
// Llama-3-8B matrix at every width, 3-44% faster than what the H200 sweep of
// the bit-stream layout had chosen (one row a warp, 3-8 chunks by width).
// OPTIQ_CUDA_DECODE_ROWS=1 restores that for A/B runs.
// Chunks of 32 codes a lane keeps in flight, by width: one row a warp (the
// H200 sweep of 2026-12-04) and two rows a warp (what the backend launches).
constexpr int chunks_one_row(int bits) { return bits == 2 ? 8 : bits == 3 ? 5 : bits == 5 || bits == 6 ? 3 : 4; }
constexpr int chunks_two_rows(int bits) { return bits == 8 ? 2 : 4; }

bool one_row_a_warp() {
  static const bool on = [] {
    const char* v = std::getenv("OPTIQ_CUDA_DECODE_ROWS");
    return v && std::string(v) == "1";
  }();
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
  static const bool on = [] {
    const char* v = std::getenv("OPTIQ_CUDA_KQUANT_FAST");
    return !(v && std::string(v) == "0");
  }();
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

bool has_matvec_int8(const DevMatrix& w) { return w.storage == DevStorage::Affine; }

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
        launch(affine_int8_kernel<kB, kMaxN, kW, 2, kB == 2 ? 4 : kB == 8 ? 1 : 2, true>, grid, kW * 32, 0, s, g, xq,
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
  const bool launched = n == 1 ? launch_gated<1>(g, u, act, x, xq, xscale, xsum, n, out, s)
                               : launch_gated<kMatvecMaxRows>(g, u, act, x, xq, xscale, xsum, n, out, s);
  if (launched) OPTIQ_CUDA_LAUNCHED();
  return launched;
}

void matvec_int8(const DevMatrix& w, const int8_t* xq, const float* xs, const int32_t* xsum, int n, float* y,
                 cudaStream_t s, float* accum) {
  if (n <= 0) return;
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
    if (pairs)
      launch(affine_int8_group_kernel<kB, kMaxN, kW, 2, chunks_two_rows(kB)>, blocks_for(g.end2, kW * 2), kW * 32, 0,
             s, g, xq, xs, xsum, n);
    else
      launch(affine_int8_group_kernel<kB, kMaxN, kW, 1, chunks_one_row(kB)>, blocks_for(g.end2, kW), kW * 32, 0, s,
             g, xq, xs, xsum, n);
  });
}
}  // namespace

bool matvec_int8_group(const DevMatrix* ws, float* const* ys, int count, const int8_t* xq, const float* xscale,
                       const int32_t* xsum, int n, cudaStream_t s) {
  if (count < 1 || count > 3 || n <= 0 || n > kMatvecMaxRows) return false;
  const DevMatrix& a = ws[0];
  for (int i = 0; i < count; ++i) {
    const DevMatrix& b = ws[i];
    const bool same = b.storage == DevStorage::Affine && a.storage == DevStorage::Affine && b.cols == a.cols &&
                      b.bits == a.bits && b.group == a.group && b.bf16_scales == a.bf16_scales &&
                      (b.biases == nullptr) == (a.biases == nullptr) && b.zero_point == a.zero_point &&
                      b.act == ActRounding::Exact;
    if (!same) return false;
  }
  const MatrixGroup g = make_group(ws, ys, count);
  // Two rows a warp where every matrix's rows pair up (a warp stays in one matrix).
  const bool pairs = !one_row_a_warp() && g.end0 % 2 == 0 && g.end1 % 2 == 0;
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
