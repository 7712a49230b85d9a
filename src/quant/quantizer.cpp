#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/error.h"
#include "core/half.h"
#include "quant/quantizer_impl.h"

namespace optiq {

namespace detail {

// MLX's rule (mlx/backend/cpu/quantized.cpp, affine quantize), re-derived:
// the edge of larger magnitude gets an exact code, which makes 0 exactly
// representable when the group straddles 0. Returns the unrounded fp32 scale
// and bias (MLX rounds codes with these, then stores them as fp16/bf16).
void minmax_params(const float* w, int gs, int bits, float* scale_out, float* bias_out) {
  // In 16 lanes (vectorised; the order of min and max does not matter).
  constexpr int kLanes = 16;
  float mn[kLanes], mx[kLanes];
  std::fill_n(mn, kLanes, std::numeric_limits<float>::infinity());
  std::fill_n(mx, kLanes, -std::numeric_limits<float>::infinity());
  int j0 = 0;
  for (; j0 + kLanes <= gs; j0 += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      mn[l] = std::min(mn[l], w[j0 + l]);
      mx[l] = std::max(mx[l], w[j0 + l]);
    }
  for (int j = j0; j < gs; ++j) {
    mn[0] = std::min(mn[0], w[j]);
    mx[0] = std::max(mx[0], w[j]);
  }
  float w_min = mn[0], w_max = mx[0];
  for (int l = 1; l < kLanes; ++l) {
    w_min = std::min(w_min, mn[l]);
    w_max = std::max(w_max, mx[l]);
  }
  minmax_params_of(w_min, w_max, bits, scale_out, bias_out);
}

void minmax_params_of(float w_min, float w_max, int bits, float* scale_out, float* bias_out) {
  minmax_params_inline(w_min, w_max, bits, scale_out, bias_out);
}

#define QS_FN(name) name##_base
#include "quant/quantizer_search.inc"
#include "quant/quantizer_minmax.inc"
#undef QS_FN

}  // namespace detail

namespace {

using detail::minmax_params;

// Which build of the quantizer files (baseline, AVX2, AVX-512) this CPU runs.
enum class QuantBuild { Base, Avx2, Avx512 };
QuantBuild quant_build() {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return QuantBuild::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) return QuantBuild::Avx2;
  return QuantBuild::Base;
}

detail::SearchFn pick_search() {
  switch (quant_build()) {
    case QuantBuild::Avx512: return detail::quantize_group_search_avx512;
    case QuantBuild::Avx2: return detail::quantize_group_search_avx2;
    default: return detail::quantize_group_search_base;
  }
}

detail::MinMaxRowsFn pick_minmax_rows() {
  switch (quant_build()) {
    case QuantBuild::Avx512: return detail::minmax_rows_avx512;
    case QuantBuild::Avx2: return detail::minmax_rows_avx2;
    default: return detail::minmax_rows_base;
  }
}

void quantize_group_minmax(const float* w, int gs, int bits, bool bf16, uint8_t* q, uint16_t* s_out,
                           uint16_t* b_out) {
  const float n_bins = static_cast<float>((1 << bits) - 1);
  float scale, bias;
  minmax_params(w, gs, bits, &scale, &bias);
  for (int j = 0; j < gs; ++j) {
    float v = std::rint((w[j] - bias) / scale);
    v = std::min(std::max(v, 0.0f), n_bins);
    q[j] = static_cast<uint8_t>(v);
  }
  *s_out = f32_to_scale(scale, bf16);
  *b_out = f32_to_scale(bias, bf16);
}

}  // namespace

AffineMatrix quantize(const float* w, int64_t rows, int64_t cols, AffineFormat fmt, const QuantizeOptions& opt) {
  check_affine_shape(fmt, rows, cols);
  const int gs = fmt.group_size;
  const int64_t ng = cols / gs, wpr = affine_words_per_row(fmt, cols);
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = fmt;
  m.bf16_scales = opt.bf16_scales;
  m.packed.resize(rows * wpr);
  m.scales.resize(rows * ng);
  m.biases.resize(rows * ng);
  std::vector<float> ones(gs, 1.0f);
  static const detail::SearchFn search = pick_search();
  parallel_for_range(rows, 4, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> codes(cols);
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = w + r * cols;
      for (int64_t g = 0; g < ng; ++g) {
        uint16_t* s = &m.scales[r * ng + g];
        uint16_t* b = &m.biases[r * ng + g];
        if (opt.method == QuantMethod::MinMax) {
          quantize_group_minmax(wr + g * gs, gs, fmt.bits, opt.bf16_scales, codes.data() + g * gs, s, b);
        } else {
          const float* imp = opt.importance ? opt.importance + g * gs : ones.data();
          search(wr + g * gs, imp, gs, fmt.bits, opt.bf16_scales, opt.grid, opt.refit_iters,
                                codes.data() + g * gs, s, b);
        }
      }
      pack_row(codes.data(), cols, fmt.bits, m.packed.data() + r * wpr);
    }
  });
  return m;
}

void quantize_minmax_rows(const void* w, SourceWords type, int64_t cols, int64_t r0, int64_t r1, AffineFormat fmt,
                          bool bf16_scales, uint32_t* packed, uint16_t* scales, uint16_t* biases) {
  check_affine_shape(fmt, std::max<int64_t>(r1, 1), cols);
  static const detail::MinMaxRowsFn fn = pick_minmax_rows();
  if (r1 > r0) fn(w, static_cast<int>(type), cols, r0, r1, fmt.bits, fmt.group_size, bf16_scales, packed, scales, biases);
}

AffineMatrix quantize_minmax(const void* w, SourceWords type, int64_t rows, int64_t cols, AffineFormat fmt,
                             bool bf16_scales) {
  check_affine_shape(fmt, rows, cols);
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = fmt;
  m.bf16_scales = bf16_scales;
  m.packed.resize(rows * affine_words_per_row(fmt, cols));
  m.scales.resize(rows * affine_groups_per_row(fmt, cols));
  m.biases.resize(m.scales.size());
  // Ranges of ~256 KB of fp32-equivalent work: small enough to balance two
  // threads on small matrices, large enough that the pool's overhead is nil.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
  parallel_for_range(rows, grain, [&](int64_t r0, int64_t r1) {
    quantize_minmax_rows(w, type, cols, r0, r1, fmt, bf16_scales, m.packed.data(), m.scales.data(), m.biases.data());
  });
  return m;
}

QuantError quantization_error(const float* w, const AffineMatrixView& q, const float* importance) {
  check_view(q);
  // Per-row sums in fixed order: the result does not depend on the thread count.
  std::vector<double> row_se(q.rows), row_swe(q.rows), row_sw2(q.rows);
  parallel_for_range(q.rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(q.cols);
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(q, r, row.data());
      const float* wr = w + r * q.cols;
      double a = 0, b = 0, c = 0;
      for (int64_t j = 0; j < q.cols; ++j) {
        const double d = static_cast<double>(wr[j]) - row[j];
        a += d * d;
        b += (importance ? importance[j] : 1.0) * d * d;
        c += static_cast<double>(wr[j]) * wr[j];
      }
      row_se[r] = a;
      row_swe[r] = b;
      row_sw2[r] = c;
    }
  });
  double se = 0, swe = 0, sw2 = 0;
  for (int64_t r = 0; r < q.rows; ++r) {
    se += row_se[r];
    swe += row_swe[r];
    sw2 += row_sw2[r];
  }
  const double n = static_cast<double>(q.rows) * q.cols;
  QuantError e;
  e.mse = se / n;
  e.weighted_mse = swe / n;
  e.rel_rmse = sw2 > 0 ? std::sqrt(se / sw2) : 0.0;
  return e;
}

}  // namespace optiq
