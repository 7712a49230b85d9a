#include "model/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/simd_clones.h"
#include "kernels/matmul.h"
#include "quant/ggml_dequant.h"

namespace optiq {

namespace {

// Loop kernels of the factorisations and updates below, vectorised for the
// CPU at hand (the baseline build leaves them scalar; the factorisations are
// O(n^3) of these, n = 14,336 for an 8B model's down projection).

// sum a[k] b[k]: 32 partial sums (four vectors of AVX-512, so that the adds
// do not wait on one another's latency) over long rows, 8 over the short
// rows of small systems (GridRefit's), which would otherwise pay for summing
// 32 lanes.
OPTIQ_SIMD_CLONES double dot(const double* a, const double* b, int64_t n) {
  int64_t k = 0;
  double s = 0;
  if (n >= 32) {
    double acc[32] = {};
    for (; k + 32 <= n; k += 32) {
#pragma omp simd
      for (int64_t i = 0; i < 32; ++i) acc[i] += a[k + i] * b[k + i];
    }
    for (int64_t i = 0; i < 32; ++i) s += acc[i];
  }
  if (k + 8 <= n) {
    double acc[8] = {};
    for (; k + 8 <= n; k += 8) {
#pragma omp simd
      for (int64_t i = 0; i < 8; ++i) acc[i] += a[k + i] * b[k + i];
    }
    for (int64_t i = 0; i < 8; ++i) s += acc[i];
  }
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

// y -= a x
OPTIQ_SIMD_CLONES void sub_scaled(double* y, const double* x, double a, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] -= a * x[k];
}
OPTIQ_SIMD_CLONES void sub_scaled(float* y, const float* x, float a, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] -= a * x[k];
}
OPTIQ_SIMD_CLONES void sub(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] -= x[k];
}

// Row t's share of GridRefit's M from group g (one call per row and group,
// so that the group sums inline; see GridRefit::run): hcg[j] = (H c_g)_j for
// j >= g * group, h_ones[q * n + j] = (H 1_q)_j, ones[g * G + q] = 1_g^T H 1_q.
// The group sums are in double (the refit compares errors that are small
// differences of large terms: fp32 sums misjudged 8-bit rows); a group size
// known at compile time (MLX's 32, 64, 128) makes them a few vector
// operations each.
template <int kGroup>
inline double group_dot(const float* h, const uint8_t* c, int64_t group) {
  const int64_t len = kGroup > 0 ? kGroup : group;
  double acc[8] = {};
  int64_t j0 = 0;
  for (; j0 + 8 <= len; j0 += 8)
    for (int64_t i = 0; i < 8; ++i) acc[i] += static_cast<double>(h[j0 + i]) * c[j0 + i];
  double d = 0;
  if constexpr (kGroup % 8 != 0 || kGroup == 0)
    for (; j0 < len; ++j0) d += static_cast<double>(h[j0]) * c[j0];
  for (int64_t i = 0; i < 8; ++i) d += acc[i];
  return d;
}

template <int kGroup>
inline void add_group_terms_for(const float* hcg, const uint8_t* c, const float* h_ones, const double* ones,
                                int64_t n, int64_t group, int64_t G, int64_t g, double* m) {
  const int64_t n2 = 2 * G, from = g * group;
  for (int64_t q = 0; q < G; ++q) {
    const double c1 = group_dot<kGroup>(h_ones + q * n + from, c + from, group);
    m[(2 * g) * n2 + 2 * q + 1] = m[(2 * q + 1) * n2 + 2 * g] = c1;
    m[(2 * g + 1) * n2 + 2 * q + 1] = ones[g * G + q];
    if (q >= g)
      m[(2 * g) * n2 + 2 * q] = m[(2 * q) * n2 + 2 * g] = group_dot<kGroup>(hcg + q * group, c + q * group, group);
  }
}

OPTIQ_SIMD_CLONES void add_group_terms(const float* hcg, const uint8_t* c, const float* h_ones, const double* ones,
                                       int64_t n, int64_t group, int64_t G, int64_t g, double* m) {
  switch (group) {
    case 32: return add_group_terms_for<32>(hcg, c, h_ones, ones, n, group, G, g, m);
    case 64: return add_group_terms_for<64>(hcg, c, h_ones, ones, n, group, G, g, m);
    case 128: return add_group_terms_for<128>(hcg, c, h_ones, ones, n, group, G, g, m);
    default: return add_group_terms_for<0>(hcg, c, h_ones, ones, n, group, G, g, m);
  }
}

// Both factorisations below go a block of kBlockRows rows at a time: the
// rows finished before the block are read once for the block's rows (in
// chunks of kChunkRows, one chunk a task), not once per row: row by row, a
// 2048-wide factorisation streamed n^3/6 doubles (11 GB) from memory. Each
// row sees the same operations in the same order as row by row, so the bits
// are those of the plain loops.
constexpr int64_t kBlockRows = 32, kChunkRows = 8;

// Rows [i0, i1) of a block, in chunks of kChunkRows (one task each; serial
// when nested or when the matrix is small).
template <typename Fn>
void for_block_chunks(int64_t i0, int64_t i1, int64_t n, Fn&& fn) {
  parallel_for((i1 - i0 + kChunkRows - 1) / kChunkRows,
               [&](int64_t c) { fn(i0 + c * kChunkRows, std::min(i1, i0 + (c + 1) * kChunkRows)); }, 1,
               n >= 256 ? 0 : 1);
}

// Lower Cholesky factor of the n x n row-major a (a = l l^T), in place of l;
// each entry a dot product of two contiguous row prefixes.
bool cholesky_lower(std::vector<double>& l, int64_t n) {
  double* base = l.data();
  for (int64_t b0 = 0; b0 < n; b0 += kBlockRows) {
    const int64_t b1 = std::min(n, b0 + kBlockRows);
    for_block_chunks(b0, b1, n, [&](int64_t i0, int64_t i1) {  // against the finished rows
      for (int64_t j = 0; j < b0; ++j) {
        const double* lj = base + j * n;
        for (int64_t i = i0; i < i1; ++i) {
          double* li = base + i * n;
          li[j] = (li[j] - dot(li, lj, j)) / lj[j];
        }
      }
    });
    for (int64_t i = b0; i < b1; ++i) {  // within the block
      double* li = base + i * n;
      for (int64_t j = b0; j <= i; ++j) {
        const double* lj = base + j * n;
        const double s = li[j] - dot(li, lj, j);
        if (j == i) {
          if (!(s > 0) || !std::isfinite(s)) return false;
          li[i] = std::sqrt(s);
        } else {
          li[j] = s / lj[j];
        }
      }
      std::fill(li + i + 1, li + n, 0.0);
    }
  }
  return true;
}

// Inverse of a lower-triangular l (row-major): row i of l^-1 is
// (e_i - sum_{k<i} l_ik row_k(l^-1)) / l_ii, contiguous axpys.
std::vector<double> invert_lower(const std::vector<double>& l, int64_t n) {
  std::vector<double> inv(static_cast<size_t>(n * n), 0.0);
  auto update = [&](int64_t i, int64_t k) {
    const double c = l[i * n + k];
    if (c != 0) sub_scaled(inv.data() + i * n, inv.data() + k * n, c, k + 1);
  };
  for (int64_t b0 = 0; b0 < n; b0 += kBlockRows) {
    const int64_t b1 = std::min(n, b0 + kBlockRows);
    for_block_chunks(b0, b1, n, [&](int64_t i0, int64_t i1) {  // the finished rows' share
      for (int64_t k = 0; k < b0; ++k)
        for (int64_t i = i0; i < i1; ++i) update(i, k);
    });
    for (int64_t i = b0; i < b1; ++i) {
      for (int64_t k = b0; k < i; ++k) update(i, k);
      double* ri = inv.data() + i * n;
      ri[i] += 1.0;
      const double d = 1.0 / l[i * n + i];
      for (int64_t j = 0; j <= i; ++j) ri[j] *= d;
    }
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
constexpr int64_t kLazyWidth = 128;  // columns a lazy batch update covers (LazyUpdates)

// GPTQ's lazy batch updates (Frantar et al., section 3): a column's error
// reaches only the columns of its own block of `width` at once; the columns
// past the block get the whole block's errors in one product,
// row[k1:] -= err[:, k0:k1] U[k0:k1, k1:], a GEMM instead of a rank-1 update
// per column. The same arithmetic up to fp32 summation order. `ut` holds,
// per block, U[k0:k1, k1:] transposed ((cols - k1) x (k1 - k0)): the W of
// f32_matmul's Y = X W^T.
class LazyUpdates {
 public:
  LazyUpdates(const std::vector<float>& u, int64_t cols, int64_t width) : cols_(cols), width_(width) {
    for (int64_t k0 = 0; k0 < cols; k0 += width) {
      const int64_t k1 = std::min(cols, k0 + width), bw = k1 - k0, rest = cols - k1;
      std::vector<float> t(static_cast<size_t>(rest * bw));
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t c = k1; c < cols; ++c) t[(c - k1) * bw + (k - k0)] = u[k * cols + c];
      ut_.push_back(std::move(t));
    }
  }
  // Column k's scaled errors (err[t * width + k % width], one a row of the
  // tile) reach the rest of k's block in rows (nr x cols, the tile's updated
  // values); after the block's last column, the columns past it too.
  void propagate(int64_t k, const float* urow, const float* err, int64_t nr, float* rows,
                 std::vector<float>& scratch) const {
    const int64_t k0 = k - k % width_, k1 = std::min(cols_, k0 + width_);
    for (int64_t t = 0; t < nr; ++t) {
      float* row = rows + t * cols_;
      sub_scaled(row + k + 1, urow + k + 1, err[t * width_ + (k - k0)], k1 - k - 1);
    }
    if (k + 1 == k1) apply(k0, err, nr, rows, scratch);
  }

 private:
  // rows (nr x cols, row-major) -= err (nr x width, this block's columns) U[k0:k1, k1:].
  void apply(int64_t k0, const float* err, int64_t nr, float* rows, std::vector<float>& scratch) const {
    const int64_t k1 = std::min(cols_, k0 + width_), bw = k1 - k0, rest = cols_ - k1;
    if (rest == 0) return;
    std::vector<float> x(static_cast<size_t>(nr * bw));
    for (int64_t t = 0; t < nr; ++t) std::copy_n(err + t * width_, bw, x.data() + t * bw);
    scratch.resize(static_cast<size_t>(nr * rest));
    f32_matmul(ut_[k0 / width_].data(), rest, bw, x.data(), nr, scratch.data());
    for (int64_t t = 0; t < nr; ++t) sub(rows + t * cols_ + k1, scratch.data() + t * rest, rest);
  }

  int64_t cols_, width_;
  std::vector<std::vector<float>> ut_;
};

// Solves the symmetric positive definite n x n system a x = b in place of b
// (Cholesky, double); false when a is not positive definite.
bool solve_spd(std::vector<double>& a, std::vector<double>& b, int64_t n) {
  if (!cholesky_lower(a, n)) return false;
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    b[i] = (b[i] - dot(a.data() + i * n, b.data(), i)) / a[i * n + i];
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[i];
    for (int64_t k = i + 1; k < n; ++k) s -= a[k * n + i] * b[k];
    b[i] = s / a[i * n + i];
  }
  return true;
}

// With a row's codes fixed, the scales and biases of all its groups jointly
// minimise the output error (w - w^)^T H (w - w^), w^_j = s_g(j) c_j + b_g(j):
// GPTQ chose each code against the grid it had, so a grid fitted to the codes
// it chose lowers the error GPTQ minimises. theta = (s_0, b_0, s_1, ...)
// solves (A^T H A) theta = A^T H w, A the cols x 2G matrix of codes and ones.
// Both sides come from H w and H c_g (c_g: the row's codes in group g, zero
// elsewhere), computed for a block of rows at once as products with H.
class GridRefit {
 public:
  GridRefit(const float* h, int64_t cols, int64_t group, bool bf16)
      : h_(h), cols_(cols), group_(group), groups_(cols / group), bf16_(bf16) {
    // H's columns of group g as a cols x group row-major block (the W of f32_matmul).
    h_by_group_.resize(static_cast<size_t>(cols * cols));
    std::vector<double> h_ones(static_cast<size_t>(groups_ * cols));  // H 1_g per group
    for (int64_t g = 0; g < groups_; ++g)
      for (int64_t i = 0; i < cols; ++i) {
        double t = 0;
        for (int64_t jj = 0; jj < group; ++jj) {
          const float v = h[i * cols + g * group + jj];
          h_by_group_[(g * cols + i) * group + jj] = v;
          t += v;
        }
        h_ones[g * cols + i] = t;
      }
    h_ones_.assign(h_ones.begin(), h_ones.end());
    ones_.resize(static_cast<size_t>(groups_ * groups_));
    for (int64_t g = 0; g < groups_; ++g)
      for (int64_t q = 0; q < groups_; ++q) {
        double t = 0;
        for (int64_t j = q * group; j < (q + 1) * group; ++j) t += h_ones[g * cols + j];
        ones_[g * groups_ + q] = t;
      }
  }

  // H w for rows [r0, r0 + nr) of w (fp32, rows x cols): nr x cols. The
  // same for every pass (w does not change).
  std::vector<float> h_times(const float* w, int64_t r0, int64_t nr) const {
    std::vector<float> hw(static_cast<size_t>(nr * cols_));
    f32_matmul(h_, cols_, cols_, w + r0 * cols_, nr, hw.data());
    return hw;
  }

  // Rows [r0, r0 + nr) with their codes and grid words (rows x G) and their
  // H w (h_times): err_cur[t] = the error of the current words, and
  // new_s/new_b the refitted words (rounded to storage) with err_new[t]
  // their error (+inf where the system could not be solved). Errors are
  // relative to w^T H w (the same constant for both).
  void run(const std::vector<float>& hw, const uint8_t* codes, const uint16_t* s_words, const uint16_t* b_words,
           int64_t r0, int64_t nr, uint16_t* new_s, uint16_t* new_b, double* err_cur, double* err_new) const {
    const int64_t n = cols_, G = groups_;
    // A tile of rows at a time: H c_g for the tile stays in cache while it is
    // reduced into M (all groups' products of a block at once, G x rows x
    // cols floats, went through memory and cost 10x GPTQ).
    parallel_for((nr + kTile - 1) / kTile, [&](int64_t tile) {
      const int64_t t0 = tile * kTile, nt = std::min(kTile, nr - t0), n2 = 2 * G;
      std::vector<float> cg(static_cast<size_t>(nt * group_)), hcg(static_cast<size_t>(nt * n));
      std::vector<std::vector<double>> m(static_cast<size_t>(nt), std::vector<double>(static_cast<size_t>(n2 * n2)));
      // M is symmetric: (s_g, s_q) = c_g^T H c_q, from H c_g's entries in
      // the groups q >= g only (half the product); (s_g, b_q) = (b_q, s_g) =
      // c_g^T (H 1_q) from the precomputed H 1_q; (b_g, b_q) = 1_g^T H 1_q,
      // the same for every row.
      for (int64_t g = 0; g < G; ++g) {
        const int64_t from = g * group_, len = n - from;
        for (int64_t t = 0; t < nt; ++t)
          for (int64_t jj = 0; jj < group_; ++jj) cg[t * group_ + jj] = codes[(r0 + t0 + t) * n + from + jj];
        f32_matmul(h_by_group_.data() + (g * n + from) * group_, len, group_, cg.data(), nt, hcg.data());
        for (int64_t t = 0; t < nt; ++t)  // hcg row t holds (H c_g)_j for j >= from
          add_group_terms(hcg.data() + t * len - from, codes + (r0 + t0 + t) * n, h_ones_.data(), ones_.data(), n,
                          group_, G, g, m[t].data());
      }
      for (int64_t t = t0; t < t0 + nt; ++t) solve_row(hw, codes, s_words, b_words, r0, t, std::move(m[t - t0]), new_s,
                                                       new_b, err_cur, err_new);
    });
  }

 private:
  static constexpr int64_t kTile = 16;

  // Row r0 + t's refit from its M: the right-hand side, the current words'
  // error, the solve and the refitted words' error.
  void solve_row(const std::vector<float>& hw, const uint8_t* codes, const uint16_t* s_words,
                 const uint16_t* b_words, int64_t r0, int64_t t, std::vector<double> m, uint16_t* new_s,
                 uint16_t* new_b, double* err_cur, double* err_new) const {
    const int64_t n = cols_, G = groups_, r = r0 + t, n2 = 2 * G;
    const uint8_t* c = codes + r * n;
    const float* hwr = hw.data() + t * n;
    std::vector<double> rhs(static_cast<size_t>(n2), 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = g * group_; j < (g + 1) * group_; ++j) {
        rhs[2 * g] += static_cast<double>(c[j]) * hwr[j];
        rhs[2 * g + 1] += hwr[j];
      }
    // E(theta) - w^T H w = theta^T M theta - 2 theta^T rhs.
    const std::vector<double> mm = m;
    auto error = [&](const std::vector<double>& th) {
      double e = 0;
      for (int64_t i = 0; i < n2; ++i) e += th[i] * (dot(mm.data() + i * n2, th.data(), n2) - 2 * rhs[i]);
      return e;
    };
    std::vector<double> th(static_cast<size_t>(n2));
    for (int64_t g = 0; g < G; ++g) {
      th[2 * g] = scale_to_f32(s_words[r * G + g], bf16_);
      th[2 * g + 1] = scale_to_f32(b_words[r * G + g], bf16_);
    }
    err_cur[t] = error(th);
    err_new[t] = std::numeric_limits<double>::infinity();
    double trace = 0;
    for (int64_t i = 0; i < n2; ++i) trace += m[i * n2 + i];
    for (int64_t i = 0; i < n2; ++i) m[i * n2 + i] += 1e-9 * trace / static_cast<double>(n2);
    th = rhs;
    if (!solve_spd(m, th, n2)) return;
    for (int64_t g = 0; g < G; ++g) {
      new_s[t * G + g] = f32_to_scale(static_cast<float>(th[2 * g]), bf16_);
      new_b[t * G + g] = f32_to_scale(static_cast<float>(th[2 * g + 1]), bf16_);
      th[2 * g] = scale_to_f32(new_s[t * G + g], bf16_);
      th[2 * g + 1] = scale_to_f32(new_b[t * G + g], bf16_);
    }
    for (double v : th)
      if (!std::isfinite(v)) return;
    err_new[t] = error(th);
  }

  const float* h_;
  int64_t cols_, group_, groups_;
  bool bf16_;
  std::vector<float> h_by_group_;
  std::vector<float> h_ones_;   // H 1_q (G x cols)
  std::vector<double> ones_;    // 1_g^T H 1_q (G x G)
};

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
  check(hs.cols == cols && hs.ok && !hs.u.empty(), "gptq: no factorised statistics on the host for the asymmetric target");
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

int gptq_grid_passes(const TensorFormat& f, const GptqOptions& g) { return f.affine() ? g.grid_passes : 0; }

GptqHessian gptq_prepare(const float* h, int64_t cols, bool act_order, double damp, int grid_passes,
                         Backend* backend) {
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
  hs.grid_passes = grid_passes;
  if (backend && act_order) {
    // The factorisation on the device; the dampening (and its growth when
    // the factorisation fails) as below.
    for (int attempt = 0; attempt < 5; ++attempt, damp *= 10) {
      const std::vector<double> a = dampened(hp.data(), cols, damp);
      std::vector<float> hd;
      if (grid_passes > 0) {
        const std::vector<double> d = dampened(h, cols, damp);
        hd.assign(d.begin(), d.end());
      }
      std::unique_ptr<Backend::GptqFactor> f =
          backend->gptq_factor(a.data(), hs.perm.data(), hs.diag.data(), hd.empty() ? nullptr : hd.data(), cols);
      if (!f) break;  // this backend has no GPTQ: the host's below
      if (f->ok) {
        hs.ok = true;
        hs.damp_used = damp;
        hs.backend = backend;
        hs.device = std::move(f);
        return hs;
      }
      if (attempt == 4) return hs;  // not positive definite even dampened
    }
  }
  std::vector<double> u;
  for (int attempt = 0; attempt < 5 && !hs.ok; ++attempt, damp *= 10) {
    hs.ok = gptq_inverse_factor(hp.data(), cols, damp, u);
    if (hs.ok) hs.damp_used = damp;
  }
  if (hs.ok) hs.u.assign(u.begin(), u.end());  // fp32 for the updates (as GPTQ implementations do)
  if (hs.ok && grid_passes > 0) {
    const std::vector<double> a = dampened(h, cols, hs.damp_used);
    hs.h.assign(a.begin(), a.end());
  }
  return hs;
}

GptqResult gptq_quantize(const TensorFormat& nominal, const float* w, int64_t rows, int64_t cols, const float* h,
                         const QuantizeOptions& opt, const GptqOptions& g) {
  const TensorFormat f = format_for_shape(nominal, cols);
  return gptq_quantize(
      nominal, w, rows, cols,
      gptq_prepare(h, cols, gptq_uses_act_order(f, g), g.damp, gptq_grid_passes(f, g)), opt);
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

  if (af && hs.device) {
    // On the device (Backend::gptq_affine): the same steps, static groups.
    check(act_order, "gptq: a device factor without act-order");
    const int64_t groups = cols / af->group_size;
    std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
    std::vector<uint16_t> scales(static_cast<size_t>(rows * groups)), biases(scales.size());
    check(hs.backend->gptq_affine(*hs.device, w, rows, *af, qo, hs.grid_passes, codes.data(), scales.data(),
                                  biases.data()),
          "gptq: the {} backend made a GPTQ factor but has no GPTQ", hs.backend->name());
    res.q = QuantizedMatrix{f, rows, cols,
                            pack(codes.data(), rows, cols, *af, std::move(scales), std::move(biases), opt.bf16_scales),
                            {}};
    return res;
  }
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
    // The grid each pass rounds on (fp32 scale and bias per row and group);
    // empty: dynamic groups, fitted when the pass reaches them.
    std::vector<float> grid_s, grid_b;
    if (fixed) {
      scales = fixed->scales;
      symmetric = fixed->biases.empty();
      zero_point = fixed->zero_point;
      if (!symmetric) biases = fixed->biases;
      const AffineMatrixView v = fixed->view();
      grid_s.resize(static_cast<size_t>(rows * groups));
      grid_b.resize(static_cast<size_t>(rows * groups));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t q = 0; q < groups; ++q) {
          grid_s[r * groups + q] = v.scale(r, q);
          grid_b[r * groups + q] = v.bias(r, q);
        }
    }
    // Blocks of whole groups (a dynamic group's grid is fitted to values that
    // every earlier column's error has reached).
    const int64_t bw = std::max<int64_t>(kLazyWidth, group);
    const LazyUpdates lazy(uf, cols, bw);
    // One GPTQ pass over rows [b0, b1): codes (and, with dynamic groups, the
    // grid words).
    auto gptq_pass = [&](int64_t b0, int64_t b1, bool dynamic) {
      parallel_for((b1 - b0 + kTileRows - 1) / kTileRows, [&](int64_t tile) {
        const int64_t r0 = b0 + tile * kTileRows, nr = std::min(kTileRows, b1 - r0);
        std::vector<float> wt(static_cast<size_t>(nr * cols));
        for (int64_t t = 0; t < nr; ++t)
          for (int64_t k = 0; k < cols; ++k) wt[t * cols + k] = w[(r0 + t) * cols + perm[k]];
        std::vector<float> gs(static_cast<size_t>(nr * groups)), gb(static_cast<size_t>(nr * groups));
        std::vector<float> err(static_cast<size_t>(nr * bw)), scratch;
        if (!dynamic) {
          std::copy_n(grid_s.data() + r0 * groups, nr * groups, gs.data());
          std::copy_n(grid_b.data() + r0 * groups, nr * groups, gb.data());
        }
        for (int64_t k = 0; k < cols; ++k) {
          const int64_t j = perm[k], q = j / group;
          if (dynamic && k % group == 0) {
            // Dynamic groups: the grid of the row's values as updated so far.
            for (int64_t t = 0; t < nr; ++t) {
              QuantizeOptions go = qo;
              go.importance = diag.data() + k;
              const AffineMatrix m = quantize(wt.data() + t * cols + k, 1, group, AffineFormat{af->bits, group}, go);
              const AffineMatrixView v = m.view();
              scales[(r0 + t) * groups + q] = m.scales[0];
              biases[(r0 + t) * groups + q] =
                  m.biases.empty() ? f32_to_scale(v.bias(0, 0), opt.bf16_scales) : m.biases[0];
              gs[t * groups + q] = v.scale(0, 0);
              gb[t * groups + q] = v.bias(0, 0);
            }
          }
          const float ukk = uf[k * cols + k];
          for (int64_t t = 0; t < nr; ++t) {
            uint8_t code;
            const float x = wt[t * cols + k];
            const float xhat = round_affine(x, gs[t * groups + q], gb[t * groups + q], qmax, code);
            codes[(r0 + t) * cols + j] = code;
            err[t * bw + k % bw] = (x - xhat) / ukk;
          }
          lazy.propagate(k, uf.data() + k * cols, err.data(), nr, wt.data(), scratch);
        }
      }, 1);
    };
    if (hs.grid_passes == 0 || symmetric || hs.h.empty()) {
      gptq_pass(0, rows, !fixed);
    } else {
      // Alternate, a block of rows at a time (its H w computed once): GPTQ,
      // refit the grid to the codes, round again on the refitted grid (static
      // groups), refit... each row keeps the (codes, grid) pair of least
      // error it saw.
      const GridRefit refit(hs.h.data(), cols, group, opt.bf16_scales);
      std::vector<uint8_t> best_codes = codes;
      std::vector<uint16_t> best_s = scales, best_b = biases;
      std::vector<double> best_err(static_cast<size_t>(rows), std::numeric_limits<double>::infinity());
      constexpr int64_t kRefitRows = kGptqRowAlign;
      std::vector<uint16_t> ns(static_cast<size_t>(kRefitRows * groups)), nb(ns.size());
      std::vector<double> ec(static_cast<size_t>(kRefitRows)), en(ec.size());
      grid_s.resize(static_cast<size_t>(rows * groups));
      grid_b.resize(static_cast<size_t>(rows * groups));
      for (int64_t r0 = 0; r0 < rows; r0 += kRefitRows) {
        const int64_t nr = std::min(kRefitRows, rows - r0);
        gptq_pass(r0, r0 + nr, !fixed);
        const std::vector<float> hw = refit.h_times(w, r0, nr);
        for (int pass = 0; pass < hs.grid_passes; ++pass) {
          refit.run(hw, codes.data(), scales.data(), biases.data(), r0, nr, ns.data(), nb.data(), ec.data(),
                    en.data());
          for (int64_t t = 0; t < nr; ++t) {
            const int64_t r = r0 + t;
            const bool better = en[t] < ec[t];
            const double e = better ? en[t] : ec[t];
            const uint16_t* sw = better ? ns.data() + t * groups : scales.data() + r * groups;
            const uint16_t* bwd = better ? nb.data() + t * groups : biases.data() + r * groups;
            if (e < best_err[r]) {
              best_err[r] = e;
              std::copy_n(codes.data() + r * cols, cols, best_codes.data() + r * cols);
              std::copy_n(sw, groups, best_s.data() + r * groups);
              std::copy_n(bwd, groups, best_b.data() + r * groups);
            }
            for (int64_t q = 0; q < groups; ++q) {  // the next pass's grid
              scales[r * groups + q] = sw[q];
              biases[r * groups + q] = bwd[q];
              grid_s[r * groups + q] = scale_to_f32(sw[q], opt.bf16_scales);
              grid_b[r * groups + q] = scale_to_f32(bwd[q], opt.bf16_scales);
            }
          }
          if (pass + 1 < hs.grid_passes) gptq_pass(r0, r0 + nr, false);
        }
      }
      codes = std::move(best_codes);
      scales = std::move(best_s);
      biases = std::move(best_b);
    }
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
  const int64_t bw = std::max<int64_t>(kLazyWidth, block);  // whole blocks (each quantized from updated values)
  const LazyUpdates lazy(uf, cols, bw);
  parallel_for((rows + kTileRows - 1) / kTileRows, [&](int64_t tile) {
    const int64_t r0 = tile * kTileRows, nr = std::min(kTileRows, rows - r0);
    std::vector<float> wt(w + r0 * cols, w + (r0 + nr) * cols);
    std::vector<float> xhat(static_cast<size_t>(nr * block));
    std::vector<float> err(static_cast<size_t>(nr * bw)), scratch;
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
      for (int64_t t = 0; t < nr; ++t) err[t * bw + k % bw] = (wt[t * cols + k] - xhat[t * block + in_block]) / ukk;
      lazy.propagate(k, uf.data() + k * cols, err.data(), nr, wt.data(), scratch);
    }
  }, 1);
  res.q = QuantizedMatrix{f, rows, cols, std::nullopt, std::move(bytes)};
  return res;
}

}  // namespace optiq
