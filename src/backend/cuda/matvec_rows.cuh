// The decode products' device code (matvec.cu's kernels and the persistent
// decode kernel, persistent.cu, run the same per-row arithmetic): a warp's
// walk over its weight rows in chunks of 32, the chunks' loads before the
// wait for the activations, int8 blocks met by dp4a.
#pragma once
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/weight_decode.cuh"

namespace optiq::cuda {
namespace {

// What a product waits on after its first weight loads, before it reads its
// activations: the previous kernel (programmatic dependent launch), or in the
// persistent kernel the grid barrier after the previous step.
// Chunks of 32 codes a lane keeps in flight, by width: one row a warp (the
// H200 sweep of 2026-12-04) and two rows a warp (what the backend launches);
// the gated pair (a row of each matrix a warp).
__host__ __device__ constexpr int chunks_one_row(int bits) { return bits == 2 ? 8 : bits == 3 ? 5 : bits == 5 || bits == 6 ? 3 : 4; }
__host__ __device__ constexpr int chunks_two_rows(int bits) { return bits == 8 ? 2 : 4; }
__host__ __device__ constexpr int chunks_gated(int bits) { return bits == 2 ? 4 : bits == 8 ? 1 : 2; }

struct PdlWait {
  __device__ __forceinline__ void operator()() const { pdl_wait(); }
};

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
// grid strides over the rest; fn(r0) does rows r0... With kParts > 1 the
// kParts warps (warp / kParts) share their rows, each a part of the row
// (split_part), and every warp of a block makes the same number of steps
// (they meet in split_sum): r0 may then be past the rows (dead rows: their
// loads clamped, their stores skipped).
template <int kW, int kStep, int kParts = 1, typename Fn>
__device__ __forceinline__ void for_warp_rows(int64_t rows, Fn&& fn) {
  const int warp = threadIdx.x >> 5;
  if constexpr (kParts == 1) {
    for (int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kW + warp) * kStep; r0 < rows;
         r0 += static_cast<int64_t>(gridDim.x) * kW * kStep)
      fn(r0);
  } else {
    constexpr int kGroups = kW / kParts;
    static_assert(kW % kParts == 0, "a block holds whole sets of parts");
    for (int64_t rb = static_cast<int64_t>(blockIdx.x) * kGroups * kStep; rb < rows;
         rb += static_cast<int64_t>(gridDim.x) * kGroups * kStep)
      fn(rb + (warp / kParts) * kStep);
  }
}

// Which part of its rows' chunks a warp walks (split_part: chunks [begin,
// end) of the row): contiguous slices, so a lane's order of chunks within a
// part, and with it the sum's bits, does not depend on how many chunks a
// lane keeps in flight (the q/k/v group and a product of its own give the
// same numbers).
struct ChunkSpan {
  int begin, end;
};
template <int kParts>
__device__ __forceinline__ ChunkSpan split_part(int chunks) {
  if constexpr (kParts == 1) {
    return {0, chunks};
  } else {
    const int part = (threadIdx.x >> 5) % kParts;
    return {chunks * part / kParts, chunks * (part + 1) / kParts};
  }
}

// The parts of a row met: each warp's sums (warp_sum), then the first warp
// of each set adds its set's in a fixed order and keeps the totals in lane 0
// (0 in the other lanes, so a later warp_sum gives them unchanged). Returns
// whether this warp writes the rows. Every warp of the block calls it.
template <int kW, int kR, int kMaxN, int kParts>
__device__ __forceinline__ bool split_sum(float (&acc)[kR][kMaxN]) {
  if constexpr (kParts == 1) {
    return true;
  } else {
    __shared__ float red[kW][kR][kMaxN];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int i = 0; i < kMaxN; ++i) {
        const float v = warp_sum(acc[r][i]);
        if (lane == 0) red[warp][r][i] = v;
      }
    __syncthreads();
    const bool writer = warp % kParts == 0;
    if (writer)
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int i = 0; i < kMaxN; ++i) {
          float t = red[warp][r][i];
#pragma unroll
          for (int q = 1; q < kParts; ++q) t += red[warp + q][r][i];
          acc[r][i] = lane == 0 ? t : 0.0f;
        }
    __syncthreads();  // red is reused by the next step
    return writer;
  }
}

// One matrix (or a gated pair) against x: each warp's row slots summed by
// rows_fn(r0, lane, acc) (acc[r][i] = row slot r . x_i, zeroed here), then
// stored: a gated pair through its activation, else row by row (and added
// to accum when given).
template <int kMaxN, int kW, int kR, bool kGated, int kParts = 1, typename RowsFn>
__device__ __forceinline__ void matvec_rows(const DevMatrix& w, int n, float* y, GateAct act, float* accum,
                                            RowsFn&& rows_fn) {
  static_assert(!kGated || kR == 2, "a gated pair takes two row slots");
  const int lane = threadIdx.x & 31;
  for_warp_rows<kW, warp_rows<kGated, kR>(), kParts>(w.rows, [&](int64_t r0) {
    float acc[kR][kMaxN] = {};
    rows_fn(r0, lane, acc);
    if (!split_sum<kW, kR, kMaxN, kParts>(acc)) return;
    if constexpr (kGated) {
      store_gated<kMaxN>(acc[0], acc[1], act, n, r0, w.rows, lane, y);
    } else {
#pragma unroll
      for (int r = 0; r < kR; ++r) store_rows<kMaxN>(acc[r], n, r0 + r, w.rows, lane, y, accum);
    }
  });
}

// Activation block c of row i (int8 blocks of 32, matvec's layout): its codes
// as 8 words, its scale and the sum of its codes. Plain loads: x is the
// previous kernel's output (see dense_rows).
struct XBlock {
  int v[8];
  float scale;
  int32_t sum;
};
__device__ __forceinline__ XBlock x_block(const int8_t* xq, const float* xscale, const int32_t* xsum, int chunks,
                                          int i, int c) {
  const int64_t b = static_cast<int64_t>(i) * chunks + c;
  const int4* p = reinterpret_cast<const int4*>(xq + b * 32);
  const int4 lo = p[0], hi = p[1];
  return {{lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w}, xscale[b], xsum[b]};
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
      const XBlock x = x_block(xq, xscale, xsum, chunks, i, c);
      const float sx = x.scale;
      const float sumx = sx * static_cast<float>(x.sum);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const int d = dot_chunk<kBits>(words[u][r], x.v);
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
template <int kBits, int kR, int kU, bool kGated, int kParts = 1, typename Wait, typename ChunksFn>
__device__ __forceinline__ void affine_chunk_walk(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                                  Wait&& wait, ChunksFn&& chunks_fn) {
  const int chunks = static_cast<int>(w.cols >> 5);
  const ChunkSpan span = split_part<kParts>(chunks);
  const int gshift = w.group == 32 ? 0 : (w.group == 64 ? 1 : 2);
  AffineRow rows[kR];
  affine_rows<kBits, kR, kGated>(w, w2, r0, rows);
  for (int c0 = span.begin + lane; c0 < span.end; c0 += 32 * kU) {
    uint32_t words[kU][kR][kBits];
    float sc[kU][kR], bi[kU][kR];
    // Chunks past the part (up to the row's end) weigh 0 like those past the row.
    load_chunks<kBits, kR, kU, kGated>(w, w2, rows, c0, span.end, gshift, words, sc, bi);
    wait();  // weights are in flight; x is the previous operation's output
    chunks_fn(c0, chunks, words, sc, bi);
  }
}

// Against int8 activation blocks: acc[r][i] = row slot r . x_i.
template <int kBits, int kMaxN, int kR, int kU, bool kGated, int kParts = 1, typename Wait>
__device__ __forceinline__ void int8_rows(const DevMatrix& w, const DevMatrix& w2, int64_t r0, int lane,
                                          const int8_t* xq, const float* xscale,
                                          const int32_t* xsum, int n, float (&acc)[kR][kMaxN], Wait&& wait) {
  auto chunks_fn = [&](int c0, int chunks, const uint32_t (&words)[kU][kR][kBits], const float (&sc)[kU][kR],
                       const float (&bi)[kU][kR]) {
    int8_chunks<kBits, kMaxN, kR, kU>(c0, chunks, words, sc, bi, xq, xscale, xsum, n, acc);
  };
  affine_chunk_walk<kBits, kR, kU, kGated, kParts>(w, w2, r0, lane, wait, chunks_fn);
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
template <int kMaxN, int kW, int kR, int kParts = 1, typename RowsFn>
__device__ __forceinline__ void group_rows(const MatrixGroup& g, int n, RowsFn&& rows_fn) {
  const int lane = threadIdx.x & 31;
  for_warp_rows<kW, kR, kParts>(g.end2, [&](int64_t R) {
    // Past end2 (kParts > 1: a block's last rows) group_row names some row
    // (with fewer than three matrices, maybe a live one): summed for the
    // barrier in split_sum, never stored.
    const GroupRow gr = group_row(g, R);
    float acc[kR][kMaxN] = {};
    rows_fn(gr, lane, acc);
    if (!split_sum<kW, kR, kMaxN, kParts>(acc) || R >= g.end2) return;
#pragma unroll
    for (int i = 0; i < kR; ++i) store_rows<kMaxN>(acc[i], n, gr.r + i, gr.w.rows, lane, gr.y);
  });
}

}  // namespace
}  // namespace optiq::cuda
