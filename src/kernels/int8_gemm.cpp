#include "kernels/int8_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/kernels_impl.h"
#include "kernels/kquant_impl.h"
#include "kernels/matmul.h"

namespace optiq {
namespace kern {

void Int8Tile::reset(int64_t k, int sub_block, int valid_rows) {
  K = k;
  sub = sub_block;
  rows = valid_rows;
  wide = false;
  codes.assign(static_cast<size_t>(K * kTileRows), 0);
  scale.assign(static_cast<size_t>(K / sub * kTileRows), 0.0f);
  bias.assign(static_cast<size_t>(K / sub * kTileRows), 0.0f);
}

namespace {
// Row m's codes (K bytes) into the interleaved layout: input k of row m goes
// to byte ((k/4)*16 + m)*4 + k%4, i.e. 32-bit words moved whole.
void put_codes(const uint8_t* row, int m, Int8Tile& t) {
  uint32_t* dst = reinterpret_cast<uint32_t*>(t.codes.data());
  for (int64_t q = 0; q < t.K / 4; ++q) std::memcpy(dst + q * kTileRows + m, row + 4 * q, 4);
}
}  // namespace

void build_int8_tile(const AffineMatrixView& W, int64_t r0, int64_t r1, Int8Tile& t) {
  const int64_t K = W.cols, gs = W.fmt.group_size;
  t.reset(K, 32, static_cast<int>(r1 - r0));
  t.wide = W.fmt.bits == 8;
  thread_local std::vector<uint8_t> row;
  if (static_cast<int64_t>(row.size()) < K) row.resize(K);
  for (int64_t r = r0; r < r1; ++r) {
    const int m = static_cast<int>(r - r0);
    unpack_codes_row(W, r, row.data());
    put_codes(row.data(), m, t);
    for (int64_t j = 0; j < K / 32; ++j) {
      t.scale[j * kTileRows + m] = W.scale(r, j * 32 / gs);
      t.bias[j * kTileRows + m] = W.bias(r, j * 32 / gs);
    }
  }
}

void build_int8_tile(const KQuantView& W, int64_t r0, int64_t r1, Int8Tile& t) {
  const int64_t K = W.cols, nb = K / 256, rb = static_cast<int64_t>(W.row_bytes() / nb);
  // Q4_K/Q5_K share one scale per 32 inputs; the others have one per 16.
  const int sub = W.dtype == DType::Q4_K || W.dtype == DType::Q5_K ? 32 : 16;
  // Signed codes are shifted to unsigned ones: c = q - qmin, b = s * qmin - min.
  const int qmin = W.dtype == DType::Q3_K ? -4 : W.dtype == DType::Q6_K ? -32 : 0;
  t.reset(K, sub, static_cast<int>(r1 - r0));
  thread_local std::vector<uint8_t> row;
  if (static_cast<int64_t>(row.size()) < K) row.resize(K);
  KBlock blk;
  for (int64_t r = r0; r < r1; ++r) {
    const int m = static_cast<int>(r - r0);
    for (int64_t ib = 0; ib < nb; ++ib) {
      kq_unpack(W.dtype, W.row(r) + ib * rb, blk);
      for (int k = 0; k < 256; ++k) row[ib * 256 + k] = static_cast<uint8_t>(blk.q[k] - qmin);
      for (int j = 0; j < 256 / sub; ++j) {
        const int h = j * sub / 16;
        const int64_t at = (ib * (256 / sub) + j) * kTileRows + m;
        t.scale[at] = blk.scale[h];
        t.bias[at] = blk.scale[h] * static_cast<float>(qmin) - blk.min[h];
      }
    }
    put_codes(row.data(), m, t);
  }
}

void activation_sub_sums(const Int8Activations& A, int sub, std::vector<float>& xs) {
  const int64_t nsub = A.blocks * 32 / sub;
  if (static_cast<int64_t>(xs.size()) < A.n * nsub) xs.resize(A.n * nsub);
  for (int64_t i = 0; i < A.n; ++i) {
    const float* sx = A.row_scale(i);
    if (sub == 32) {
      const int32_t* s = A.row_sum(i);
      for (int64_t b = 0; b < A.blocks; ++b) xs[i * nsub + b] = sx[b] * static_cast<float>(s[b]);
      continue;
    }
    const int8_t* q = A.row_q(i);
    for (int64_t j = 0; j < nsub; ++j) {
      int32_t s = 0;
      for (int k = 0; k < sub; ++k) s += q[j * sub + k];
      xs[i * nsub + j] = sx[j * sub / 32] * static_cast<float>(s);
    }
  }
}

// Reference: the same sums in the same order as the SIMD kernel, per lane.
void int8_gemm_tile_scalar(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0) {
  const int64_t nsub = t.K / t.sub, nblk = a.A->blocks;
  for (int64_t i = 0; i < a.n; ++i) {
    const int8_t* x = a.A->row_q(i);
    const float* sx = a.A->row_scale(i);
    for (int m = 0; m < t.rows; ++m) {
      float acc = 0;
      for (int64_t j = 0; j < nsub; ++j) {
        int32_t d = 0;
        for (int64_t k = j * t.sub; k < (j + 1) * t.sub; ++k)
          d += static_cast<int32_t>(t.codes[(k / 4 * kTileRows + m) * 4 + k % 4]) * x[k];
        const float s = t.scale[j * kTileRows + m] * sx[j * t.sub / 32];
        acc += static_cast<float>(d) * s;
        acc += t.bias[j * kTileRows + m] * a.xs[i * nsub + j];
      }
      (void)nblk;
      a.Y[i * a.ldy + r0 + m] = acc;
    }
  }
}

}  // namespace kern

namespace {
// The tile kernel and activation rounding of the active ISA: AVX-512 VNNI on
// the avx512 path of a CPU that has it; AVX-VNNI or AVX2 maddubs on any other
// SIMD path (an avx512 CPU without VNNI included); scalar otherwise.
enum class GemmKernel { Scalar, Avx2, AvxVnni, Avx512 };
GemmKernel gemm_kernel() {
  static const bool avx512_vnni = __builtin_cpu_supports("avx512vnni");
  const Isa isa = active_isa();
  if (isa == Isa::Avx512 && avx512_vnni) return GemmKernel::Avx512;
  if (isa == Isa::Scalar) return GemmKernel::Scalar;
  return avx_vnni_enabled() ? GemmKernel::AvxVnni : GemmKernel::Avx2;
}
}  // namespace

void quantize_activation_rows_simd(const float* X, int64_t i0, int64_t i1, Int8Activations& out) {
  switch (active_isa()) {
    case Isa::Avx512: kern::quantize_activation_rows_avx512(X, i0, i1, out); break;
    case Isa::Avx2: kern::quantize_activation_rows_avx2(X, i0, i1, out); break;
    default: quantize_activation_rows(X, i0, i1, out); break;
  }
}

void quantize_activations_simd(const float* X, int64_t n, int64_t cols, Int8Activations& out) {
  prepare_activations(n, cols, out);
  quantize_activation_rows_simd(X, 0, n, out);
}

// OPTIQ_FORCE_INT8_PREFILL (any value) takes the int8 path on the scalar ISA
// too, through the reference kernel: how the tests of fast numerics run there
// with the rounding the SIMD kernels apply.
bool int8_prefill_active() {
  static const bool forced = std::getenv("OPTIQ_FORCE_INT8_PREFILL") != nullptr;
  return (forced || gemm_kernel() != GemmKernel::Scalar) && kernels::decode_int8_enabled();
}

namespace {

struct GemmScratch {
  Int8Activations act;
  std::vector<float> xs;
};

// Rounds X (in parallel over rows) and runs fn(r0, r1, tile) per 16-row tile.
template <typename Build>
void int8_gemm(int64_t rows, int64_t cols, int sub, const float* X, int64_t n, float* Y, Build&& build) {
  if (n <= 0) return;
  // A reference, not the thread_local itself: inside the lambdas below the
  // name would denote each worker thread's own (empty) scratch.
  static thread_local GemmScratch scratch;
  GemmScratch& s = scratch;
  const GemmKernel kernel = gemm_kernel();
  prepare_activations(n, cols, s.act);
  parallel_for_range(n, std::max<int64_t>(1, n / (4 * num_threads())),
                     [&](int64_t i0, int64_t i1) { quantize_activation_rows_simd(X, i0, i1, s.act); },
                     n * cols > 1 << 16 ? 0 : 1);
  kern::activation_sub_sums(s.act, sub, s.xs);
  const kern::Int8GemmArgs a{&s.act, s.xs.data(), n, Y, rows};
  auto fn = kernel == GemmKernel::Avx512    ? kern::int8_gemm_tile_avx512
            : kernel == GemmKernel::AvxVnni ? kern::int8_gemm_tile_avxvnni
            : kernel == GemmKernel::Avx2    ? kern::int8_gemm_tile_avx2
                                            : kern::int8_gemm_tile_scalar;
  kern::for_row_blocks(rows, static_cast<double>(rows) * cols * n, [&](int64_t r0, int64_t r1) {
    static thread_local kern::Int8Tile tile;
    build(r0, r1, tile);
    fn(tile, a, r0);
  });
}

}  // namespace

void affine_matmul_int8_gemm(const AffineMatrixView& W, const float* X, int64_t n, float* Y) {
  check_view(W);
  int8_gemm(W.rows, W.cols, 32, X, n, Y,
            [&](int64_t r0, int64_t r1, kern::Int8Tile& t) { kern::build_int8_tile(W, r0, r1, t); });
}

void kquant_matmul_int8_gemm(const KQuantView& W, const float* X, int64_t n, float* Y) {
  check_view(W);
  const int sub = W.dtype == DType::Q4_K || W.dtype == DType::Q5_K ? 32 : 16;
  int8_gemm(W.rows, W.cols, sub, X, n, Y,
            [&](int64_t r0, int64_t r1, kern::Int8Tile& t) { kern::build_int8_tile(W, r0, r1, t); });
}

}  // namespace optiq
