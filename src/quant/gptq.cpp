#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/ggml_dequant.h"

namespace optiq {

namespace {

// Lower Cholesky factor of the n x n row-major a (a = l l^T), in place of l;
// row by row, each entry a dot product of two contiguous row prefixes.
bool cholesky_lower(std::vector<double>& l, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double* li = l.data() + i * n;
    for (int64_t j = 0; j <= i; ++j) {
      const double* lj = l.data() + j * n;
      double s = li[j];
      for (int64_t k = 0; k < j; ++k) s -= li[k] * lj[k];
      if (j == i) {
        if (!(s > 0) || !std::isfinite(s)) return false;
        li[i] = std::sqrt(s);
      } else {
        li[j] = s / lj[j];
      }
    }
    std::fill(li + i + 1, li + n, 0.0);
  }
  return true;
}

// Inverse of a lower-triangular l (row-major), row by row: row i of l^-1 is
// (e_i - sum_{k<i} l_ik row_k(l^-1)) / l_ii, contiguous axpys.
std::vector<double> invert_lower(const std::vector<double>& l, int64_t n) {
  std::vector<double> inv(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* ri = inv.data() + i * n;
    const double* li = l.data() + i * n;
    for (int64_t k = 0; k < i; ++k) {
      const double c = li[k];
      if (c == 0) continue;
      const double* rk = inv.data() + k * n;
      for (int64_t j = 0; j <= k; ++j) ri[j] -= c * rk[j];
    }
    ri[i] += 1.0;
    const double d = 1.0 / li[i];
    for (int64_t j = 0; j <= i; ++j) ri[j] *= d;
  }
  return inv;
}

// The dampened H as double, inputs never seen (H_jj = 0) given 1.
std::vector<double> dampened(const float* h, int64_t n, double damp) {
  std::vector<double> a(static_cast<size_t>(n * n));
  double mean_diag = 0;
  for (int64_t j = 0; j < n; ++j) mean_diag += h[j * n + j];
  mean_diag = std::max(mean_diag / static_cast<double>(n), 1e-30);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = 0.5 * (static_cast<double>(h[i * n + j]) + h[j * n + i]);
  for (int64_t j = 0; j < n; ++j) {
    double& d = a[j * n + j];
    if (d <= 0) {
      for (int64_t k = 0; k < n; ++k) a[j * n + k] = a[k * n + j] = 0;  // a dead input couples to nothing
      d = mean_diag;
    }
    d += damp * mean_diag;
  }
  return a;
}

// Rounds x on an affine grid: code and value.
inline float round_affine(float x, float scale, float bias, int qmax, uint8_t& code) {
  float q = scale != 0 ? std::nearbyint((x - bias) / scale) : 0.0f;
  q = std::clamp(q, 0.0f, static_cast<float>(qmax));
  code = static_cast<uint8_t>(q);
  return q * scale + bias;
}

constexpr int64_t kTileRows = 16;  // rows sharing each read of a U row

}  // namespace

bool gptq_inverse_factor(const float* h, int64_t n, double damp, std::vector<double>& u) {
  // H^-1 = U^T U with U upper  <=>  H = V V^T with V = U^-1 upper; with J the
  // reversal permutation, J H J = (J V J)(J V J)^T is an ordinary (lower)
  // Cholesky factorisation, and U = J (J V J)^-1 J.
  std::vector<double> a = dampened(h, n, damp);
  std::vector<double> l(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) l[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
  if (!cholesky_lower(l, n)) return false;
  const std::vector<double> inv = invert_lower(l, n);
  u.assign(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) u[i * n + j] = inv[(n - 1 - i) * n + (n - 1 - j)];
  for (double v : u)
    if (!std::isfinite(v)) return false;
  return true;
}

void gptq_asymmetric_target(const float* w, int64_t rows, int64_t cols, const float* h, const float* cross,
                            const GptqHessian& hs, float* out) {
  check(hs.cols == cols && hs.ok, "gptq: no factorised statistics for the asymmetric target");
  // E = C - H (cols x cols); per row r: d = w_r E, then z = d H^-1 through
  // hs's factor of the permuted H^-1 = U^T U: t = d_p U^T, z_p = t U.
  std::vector<double> e(static_cast<size_t>(cols * cols));
  for (int64_t i = 0; i < cols * cols; ++i) e[i] = static_cast<double>(cross[i]) - h[i];
  parallel_for_range(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<double> d(static_cast<size_t>(cols)), t(static_cast<size_t>(cols)), z(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = w + r * cols;
      std::fill(d.begin(), d.end(), 0.0);
      for (int64_t i = 0; i < cols; ++i) {
        const double wi = wr[i];
        if (wi == 0.0) continue;
        const double* er = e.data() + i * cols;
        for (int64_t j = 0; j < cols; ++j) d[j] += wi * er[j];
      }
      // t = d_p U^T (t_i = sum_{j >= i} d_p[j] U[i][j]), then z = t U (z_j = sum_{i <= j} t_i U[i][j]).
      for (int64_t i = 0; i < cols; ++i) {
        double acc = 0.0;
        const float* ui = hs.u.data() + i * cols;
        for (int64_t j = i; j < cols; ++j) acc += d[hs.perm[j]] * ui[j];
        t[i] = acc;
      }
      std::fill(z.begin(), z.end(), 0.0);
      for (int64_t i = 0; i < cols; ++i) {
        const double ti = t[i];
        if (ti == 0.0) continue;
        const float* ui = hs.u.data() + i * cols;
        for (int64_t j = i; j < cols; ++j) z[hs.perm[j]] += ti * ui[j];
      }
      float* o = out + r * cols;
      for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<float>(wr[j] + z[j]);
    }
  });
}

bool gptq_uses_act_order(const TensorFormat& f, const GptqOptions& g) {
  return g.act_order && f.affine() != nullptr;
}

GptqHessian gptq_prepare(const float* h, int64_t cols, bool act_order, double damp) {
  GptqHessian hs;
  hs.cols = cols;
  hs.act_order = act_order;
  // diag H is the importance the format's own quantizer weighs errors by.
  hs.diag.resize(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) hs.diag[j] = std::max(h[j * cols + j], 0.0f);
  // Column order: decreasing H_jj with act_order, else natural.
  hs.perm.resize(static_cast<size_t>(cols));
  std::iota(hs.perm.begin(), hs.perm.end(), 0);
  if (act_order)
    std::stable_sort(hs.perm.begin(), hs.perm.end(), [&](int64_t a, int64_t b) { return hs.diag[a] > hs.diag[b]; });
  std::vector<float> hp(static_cast<size_t>(cols * cols));
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) hp[i * cols + j] = h[hs.perm[i] * cols + hs.perm[j]];
  std::vector<double> u;
  for (int attempt = 0; attempt < 5 && !hs.ok; ++attempt, damp *= 10) {
    hs.ok = gptq_inverse_factor(hp.data(), cols, damp, u);
    if (hs.ok) hs.damp_used = damp;
  }
  if (hs.ok) hs.u.assign(u.begin(), u.end());  // fp32 for the updates (as GPTQ implementations do)
  return hs;
}

GptqResult gptq_quantize(const TensorFormat& nominal, const float* w, int64_t rows, int64_t cols, const float* h,
                         const QuantizeOptions& opt, const GptqOptions& g) {
  return gptq_quantize(nominal, w, rows, cols, gptq_prepare(h, cols, gptq_uses_act_order(nominal, g), g.damp), opt);
}

GptqResult gptq_quantize(const TensorFormat& nominal, const float* w, int64_t rows, int64_t cols,
                         const GptqHessian& hs, const QuantizeOptions& opt) {
  check(nominal.has_value(), "gptq: a float matrix is not quantized");
  const TensorFormat f = format_for_shape(nominal, cols);
  check(format_fits(f, cols), "gptq: {} inputs do not fit {}", cols, tensor_format_name(f));
  check(hs.cols == cols, "gptq: statistics of {} inputs for a matrix of {}", hs.cols, cols);
  const AffineFormat* af = f.affine();
  check(!hs.act_order || af, "gptq: act-order statistics for {}, whose blocks need the natural order",
        tensor_format_name(f));
  GptqResult res;
  const std::vector<float>& diag = hs.diag;
  QuantizeOptions qo = opt;
  qo.importance = diag.data();
  if (!hs.ok) {
    res.q = quantize_matrix(f, w, rows, cols, qo);
    res.fallback = true;
    return res;
  }
  res.damp_used = hs.damp_used;
  const bool act_order = hs.act_order;
  const std::vector<int64_t>& perm = hs.perm;
  const std::vector<float>& uf = hs.u;

  if (af) {
    const int group = af->group_size, qmax = (1 << af->bits) - 1;
    const int64_t groups = cols / group;
    // Static groups (act_order): the grids of the original values.
    std::optional<AffineMatrix> fixed;
    if (act_order) fixed = quantize(w, rows, cols, *af, qo);
    std::vector<uint16_t> scales(static_cast<size_t>(rows * groups)), biases(static_cast<size_t>(rows * groups));
    std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
    bool symmetric = false;
    int32_t zero_point = 0;
    if (fixed) {
      scales = fixed->scales;
      symmetric = fixed->biases.empty();
      zero_point = fixed->zero_point;
      if (!symmetric) biases = fixed->biases;
    }
    parallel_for((rows + kTileRows - 1) / kTileRows, [&](int64_t tile) {
      const int64_t r0 = tile * kTileRows, nr = std::min(kTileRows, rows - r0);
      std::vector<float> wt(static_cast<size_t>(nr * cols));
      for (int64_t t = 0; t < nr; ++t)
        for (int64_t k = 0; k < cols; ++k) wt[t * cols + k] = w[(r0 + t) * cols + perm[k]];
      std::vector<float> gs(static_cast<size_t>(nr * groups)), gb(static_cast<size_t>(nr * groups));
      if (fixed) {
        const AffineMatrixView v = fixed->view();
        for (int64_t t = 0; t < nr; ++t)
          for (int64_t q = 0; q < groups; ++q) {
            gs[t * groups + q] = v.scale(r0 + t, q);
            gb[t * groups + q] = v.bias(r0 + t, q);
          }
      }
      for (int64_t k = 0; k < cols; ++k) {
        const int64_t j = perm[k], q = j / group;
        if (!fixed && k % group == 0) {
          // Dynamic groups: the grid of the row's values as updated so far.
          for (int64_t t = 0; t < nr; ++t) {
            QuantizeOptions go = qo;
            go.importance = diag.data() + k;
            const AffineMatrix m = quantize(wt.data() + t * cols + k, 1, group, AffineFormat{af->bits, group}, go);
            const AffineMatrixView v = m.view();
            scales[(r0 + t) * groups + q] = m.scales[0];
            biases[(r0 + t) * groups + q] = m.biases.empty() ? f32_to_scale(v.bias(0, 0), opt.bf16_scales) : m.biases[0];
            gs[t * groups + q] = v.scale(0, 0);
            gb[t * groups + q] = v.bias(0, 0);
          }
        }
        const float ukk = uf[k * cols + k];
        const float* urow = uf.data() + k * cols;
        for (int64_t t = 0; t < nr; ++t) {
          float* row = wt.data() + t * cols;
          uint8_t code;
          const float x = row[k];
          const float xhat = round_affine(x, gs[t * groups + q], gb[t * groups + q], qmax, code);
          codes[(r0 + t) * cols + j] = code;
          const float e = (x - xhat) / ukk;
          for (int64_t c = k + 1; c < cols; ++c) row[c] -= e * urow[c];
        }
      }
    }, 1);
    AffineMatrix m = pack(codes.data(), rows, cols, *af, std::move(scales), symmetric ? std::vector<uint16_t>{}
                                                                                          : std::move(biases),
                          opt.bf16_scales);
    m.zero_point = zero_point;
    res.q = QuantizedMatrix{f, rows, cols, std::move(m), {}};
    return res;
  }

  // GGUF blocks: each block quantized whole from its updated values; the
  // loop below then feeds its (fixed) rounding error forward.
  const DType type = f.ggml()->type;
  const BlockLayout layout = block_layout(type);
  const int64_t block = layout.block_elems, nblocks = cols / block;
  const size_t row_bytes = static_cast<size_t>(nblocks) * layout.block_bytes;
  std::vector<uint8_t> bytes(static_cast<size_t>(rows) * row_bytes);
  parallel_for((rows + kTileRows - 1) / kTileRows, [&](int64_t tile) {
    const int64_t r0 = tile * kTileRows, nr = std::min(kTileRows, rows - r0);
    std::vector<float> wt(w + r0 * cols, w + (r0 + nr) * cols);
    std::vector<float> xhat(static_cast<size_t>(nr * block));
    for (int64_t k = 0; k < cols; ++k) {
      const int64_t b = k / block, in_block = k % block;
      if (in_block == 0) {
        for (int64_t t = 0; t < nr; ++t) {
          QuantizeOptions go = qo;
          go.importance = diag.data() + k;
          const QuantizedMatrix qm = quantize_matrix(f, wt.data() + t * cols + k, 1, block, go);
          std::memcpy(bytes.data() + (r0 + t) * row_bytes + b * layout.block_bytes, qm.blocks.data(),
                      layout.block_bytes);
          dequantize_row(type, qm.blocks.data(), xhat.data() + t * block, block);
        }
      }
      const float ukk = uf[k * cols + k];
      const float* urow = uf.data() + k * cols;
      for (int64_t t = 0; t < nr; ++t) {
        float* row = wt.data() + t * cols;
        const float e = (row[k] - xhat[t * block + in_block]) / ukk;
        for (int64_t c = k + 1; c < cols; ++c) row[c] -= e * urow[c];
      }
    }
  }, 1);
  res.q = QuantizedMatrix{f, rows, cols, std::nullopt, std::move(bytes)};
  return res;
}

}  // namespace optiq
