#include "kernels/kquant_matmul.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/act_quant.h"
#include "kernels/int8_gemm.h"
#include "kernels/kernels_impl.h"
#include "kernels/kquant_impl.h"
#include "kernels/matmul.h"
#include "quant/ggml_dequant.h"

namespace optiq {

bool is_iq4(DType t) { return t == DType::IQ4_NL || t == DType::IQ4_XS; }

bool is_kquant(DType t) {
  return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K ||
         is_iq4(t);
}

size_t KQuantView::row_bytes() const {
  const BlockLayout b = block_layout(dtype);
  return static_cast<size_t>(cols / b.block_elems) * b.block_bytes;
}

void check_view(const KQuantView& v) {
  check(is_kquant(v.dtype), "k-quant matrix: {} is not a k-quant type", dtype_name(v.dtype));
  const int be = block_layout(v.dtype).block_elems;
  check(v.rows > 0 && v.cols > 0 && v.cols % be == 0,
        "k-quant matrix: {}x{} {}: rows must be a whole number of {}-weight blocks", v.rows, v.cols,
        dtype_name(v.dtype), be);
  check(v.data != nullptr, "k-quant matrix: no data");
}

void kquant_dequantize_row(const KQuantView& W, int64_t r, float* out) {
  dequantize_row(W.dtype, W.row(r), out, W.cols);
}

namespace kern {
void kquant_decode_scalar(const KQuantArgs& a, int64_t r0, int64_t r1) { kq_decode_generic(a, r0, r1); }
}  // namespace kern

namespace {

// fp32 path: the tile is dequantized (ggml_dequant's values) and multiplied
// exactly as f32_matmul would multiply the dequantized matrix.
void tile_block(Isa isa, const KQuantView& W, const float* X, int64_t n, float* Y, int64_t r0, int64_t r1) {
  static thread_local std::vector<float> tile;
  const int64_t K = W.cols;
  tile.resize(static_cast<size_t>((r1 - r0) * K));
  for (int64_t r = r0; r < r1; ++r) dequantize_row(W.dtype, W.row(r), tile.data() + (r - r0) * K, K);
  if (isa == Isa::Avx512) {
    kern::gemm_tile_avx512(tile.data(), r1 - r0, K, X, n, Y + r0, W.rows);
  } else if (isa == Isa::Avx2) {
    kern::gemm_tile_avx2(tile.data(), r1 - r0, K, X, n, Y + r0, W.rows);
  } else {  // as kern::dense_block_scalar
    for (int64_t r = r0; r < r1; ++r) {
      const float* w = tile.data() + (r - r0) * K;
      for (int64_t i = 0; i < n; ++i) {
        const float* x = X + i * K;
        float acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
        Y[i * W.rows + r] = acc;
      }
    }
  }
}

}  // namespace

void kquant_matmul(const KQuantView& W, const float* X, int64_t n, float* Y, bool int8) {
  check_view(W);
  if (n <= 0) return;
  const Isa isa = active_isa();
  const double work = static_cast<double>(W.rows) * W.cols * n;
  // IQ4s have no int8 kernels yet: dequantized tiles, fp32 products.
  const bool iq4 = is_iq4(W.dtype);
  if (int8 && !iq4 && n >= kern::kFusedMaxN && int8_prefill_active()) return kquant_matmul_int8_gemm(W, X, n, Y);
  if (!int8 || iq4 || n >= kern::kFusedMaxN) {
    kern::for_row_blocks(W.rows, work, [&](int64_t r0, int64_t r1) { tile_block(isa, W, X, n, Y, r0, r1); });
    return;
  }
  static thread_local Int8Activations act;
  quantize_activations_simd(X, n, W.cols, act);
  const kern::KQuantArgs a{&W, &act, n, Y};
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  auto fn = isa == Isa::Avx512 && vnni ? kern::kquant_decode_avx512
            : isa != Isa::Scalar       ? kern::kquant_decode_avx2
                                       : kern::kquant_decode_scalar;
  kern::for_row_blocks(W.rows, work, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

}  // namespace optiq
