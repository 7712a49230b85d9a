// Internal: per-ISA block functions behind kernels/matmul.h. Each computes the
// output columns r in [r0, r1) of Y (ld = rows of W) for all n activation rows.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>

#include "core/parallel.h"
#include "quant/affine.h"

namespace optiq::kern {

// Rows of W handled by one task (and one dequantized tile in prefill).
constexpr int64_t kRowBlock = 16;
// n below this uses the fused unpack+FMA path (decode); n >= uses tiles.
constexpr int64_t kFusedMaxN = 4;

// Splits rows into blocks of kRowBlock and runs fn(r0, r1) on each, in
// parallel when there is enough work (`work`: multiply-adds). Several blocks
// per task when there are many, so that a task is worth the hand-off; small
// enough (>= 8 tasks per thread) to rebalance when a thread is preempted.
template <typename Fn>
void for_row_blocks(int64_t rows, double work, Fn&& fn) {
  const int64_t nb = (rows + kRowBlock - 1) / kRowBlock;
  const bool par = work > 2e5 && nb > 1;
  const int64_t per_task = std::max<int64_t>(1, nb / (8 * std::max(1, num_threads())));
  parallel_for_range(
      nb, per_task,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r0 = b * kRowBlock;
          fn(r0, std::min(rows, r0 + kRowBlock));
        }
      },
      par ? 0 : 1);
}

struct AffineArgs {
  const AffineMatrixView* W;
  const float* X;
  int64_t n;
  float* Y;
  const float* xsum;  // n x groups_per_row: sum of x over each group (fused path)
  const float* xperm = nullptr;  // n x cols, X reordered by permute_x_q4_avx512 (or null)
};

// AVX-512 4-bit decode reads 16 words (128 codes) at once and wants X in the
// matching order: within each full block of 128, xp[k*16 + i] = x[8*i + k];
// a tail shorter than 128 stays in natural order.
void permute_x_q4_avx512(const float* x, int64_t cols, float* xp);

// Integer decode path (n < kFusedMaxN, int8 activations): per weight group g
// of row r and activation row i,
//   y += s_w[g] * sum_{b in g} s_x[b] * dot(q_w, q_x over block b)
//      + bias_w[g] * xsum[i][g],   xsum[i][g] = sum_{b in g} s_x[b] * sum(q_x over b).
struct Int8Args {
  const AffineMatrixView* W;
  int64_t n;
  const int8_t* xq;    // n rows of ldq int8 codes; 4-bit SIMD paths: permuted (permute_q4_act)
  int64_t ldq;         // blocks * 32
  const float* sx;     // n x blocks: activation block scales
  const float* xsum;   // n x groups_per_row
  float* Y;
};

// Int8 activations reordered for 4-bit kernels that split the nibbles of a
// chunk of `cb` blocks (16*cb bytes of weights): per chunk, the even inputs of
// each block (low nibbles) come first, block after block, then the odd ones
// (high nibbles). A short last chunk of m < cb blocks uses the same layout
// with m. Natural order in, `blocks * 32` bytes out.
void permute_q4_act(const int8_t* q, int64_t blocks, int cb, int8_t* out);

// Codes of row r of a packed matrix as bytes (any bit width), cols of them.
void unpack_codes_row(const AffineMatrixView& W, int64_t r, uint8_t* out);
// The same, 8 codes per step with AVX2 (matmul_avx2.cpp; call only on AVX2 CPUs).
void unpack_codes_row_avx2(const AffineMatrixView& W, int64_t r, uint8_t* out);

// Row r's scales and biases into the cache ahead of use: the AVX-512 decode
// kernels prefetch the packed codes of the rows two passes ahead, and these
// live in arrays of their own (their first touch at a row's end stalled the
// batch-1 kernel: 22% of its time on one masked load in perf; prefetching
// them made its decode 6-14% faster on a Zen AVX-512 EPYC; the AVX2 kernel,
// which reads them chunk by chunk, measured the same or 2% slower with it).
inline void prefetch_row_scales(const AffineMatrixView& W, int64_t r) {
  const int64_t ng = W.groups_per_row();
  __builtin_prefetch(W.scales + r * ng);
  if (W.biases) __builtin_prefetch(W.biases + r * ng);
}

void int8_block_scalar(const Int8Args& a, int64_t r0, int64_t r1);
void int8_block_avx2(const Int8Args& a, int64_t r0, int64_t r1);     // AVX2 maddubs (q4 chunks of 2 blocks)
void int8_block_avxvnni(const Int8Args& a, int64_t r0, int64_t r1);  // same layout, VEX dpbusd
void int8_block_avx512(const Int8Args& a, int64_t r0, int64_t r1);   // AVX-512 VNNI (q4 chunks of 4 blocks)

void affine_block_scalar(const AffineArgs& a, int64_t r0, int64_t r1);
void affine_block_avx2(const AffineArgs& a, int64_t r0, int64_t r1);
void affine_block_avx512(const AffineArgs& a, int64_t r0, int64_t r1);

// W16: 0 = fp32 W (float*), 1 = fp16, 2 = bf16 (uint16_t*).
struct DenseArgs {
  const void* W;
  int kind;
  int64_t rows, cols;
  const float* X;
  int64_t n;
  float* Y;
};

void dense_block_scalar(const DenseArgs& a, int64_t r0, int64_t r1);
void dense_block_avx2(const DenseArgs& a, int64_t r0, int64_t r1);
void dense_block_avx512(const DenseArgs& a, int64_t r0, int64_t r1);

// pshufb pattern and per-lane shifts that put code i (i < lanes) of a
// `lanes`-code chunk into the low bits of dword lane i, the chunk's bytes being
// broadcast to every 128-bit lane (lanes = 8 for AVX2, 16 for AVX-512).
template <int bits, int lanes>
struct CodeUnpackTables {
  alignas(4 * lanes) std::array<uint8_t, 4 * lanes> shuf{};
  alignas(4 * lanes) std::array<uint32_t, lanes> shift{};
  constexpr CodeUnpackTables() {
    for (int i = 0; i < lanes; ++i) {
      const int bit = bits * i, s = bit >> 3, off = bit & 7;
      shuf[4 * i] = static_cast<uint8_t>(s);
      shuf[4 * i + 1] = off + bits > 8 ? static_cast<uint8_t>(s + 1) : 0x80;
      shuf[4 * i + 2] = 0x80;
      shuf[4 * i + 3] = 0x80;
      shift[i] = static_cast<uint32_t>(off);
    }
  }
};

}  // namespace optiq::kern
