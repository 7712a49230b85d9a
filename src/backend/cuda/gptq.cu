// GPTQ's device kernels (gptq_kernels.h): the blocked factorisation's small
// pieces, the column loop of a block of 128 columns (one warp per row), and
// the grid refit's normal equations, solved per row in double.
#include <cmath>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/gptq_kernels.h"

namespace optiq::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint16_t to_word(float f, bool bf16) {
  return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
}

__global__ void cholesky_diagonal_kernel(double* a, int64_t n, int64_t k0, int nb, int* fail) {
  pdl_trigger();
  pdl_wait();
  __shared__ double t[kFactorBlock][kFactorBlock + 1];
  const int i = threadIdx.x / kFactorBlock, j = threadIdx.x % kFactorBlock;
  const bool in = i < nb && j < nb;
  if (in) t[i][j] = a[(k0 + i) * n + k0 + j];
  __syncthreads();
  for (int p = 0; p < nb; ++p) {
    if (threadIdx.x == 0) {
      double d = t[p][p];
      if (!(d > 0) || !isfinite(d)) {
        *fail = 1;
        d = 1;  // carry on harmlessly: the caller discards the factor
      }
      t[p][p] = sqrt(d);
    }
    __syncthreads();
    if (j == p && i > p && i < nb) t[i][p] /= t[p][p];
    __syncthreads();
    if (in && j > p && j <= i) t[i][j] -= t[i][p] * t[j][p];
    __syncthreads();
  }
  if (in) a[(k0 + i) * n + k0 + j] = j <= i ? t[i][j] : 0.0;
}

__global__ void lower_solve_kernel(const double* l, int64_t ld, int nb, double* x, int64_t nvec, int64_t vec_stride,
                                   int64_t elem_stride) {
  pdl_trigger();
  pdl_wait();
  __shared__ double t[kFactorBlock][kFactorBlock + 1];
  for (int e = threadIdx.x; e < nb * nb; e += blockDim.x) t[e / nb][e % nb] = l[(e / nb) * ld + e % nb];
  __syncthreads();
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= nvec) return;
  double* p = x + v * vec_stride;
  double y[kFactorBlock];
#pragma unroll
  for (int j = 0; j < kFactorBlock; ++j) {
    if (j >= nb) break;
    double s = p[j * elem_stride];
#pragma unroll
    for (int m = 0; m < kFactorBlock; ++m) {
      if (m >= j) break;
      s -= t[j][m] * y[m];
    }
    y[j] = s / t[j][j];
    p[j * elem_stride] = y[j];
  }
}

__global__ void set_identity_kernel(double* a, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n * n) a[e] = e / n == e % n ? 1.0 : 0.0;
}

__global__ void reverse_to_upper_kernel(const double* inv, int64_t n, float* u, int* fail) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * n) return;
  const int64_t i = e / n, j = e % n;
  const double v = j >= i ? inv[(n - 1 - i) * n + (n - 1 - j)] : 0.0;
  if (!isfinite(v)) *fail = 1;
  u[e] = static_cast<float>(v);
}

__global__ void permute_columns_kernel(const float* w, int64_t rows, int64_t cols, const int32_t* perm, float* wp) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= rows * cols) return;
  const int64_t r = e / cols, k = e % cols;
  wp[e] = w[r * cols + perm[k]];
}

__global__ void words_to_f32_kernel(const uint16_t* words, int64_t n, bool bf16, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) out[e] = scale_word(words[e], bf16);
}

// One warp per row; lane l holds columns k0 + l, k0 + 32 + l, ... of the
// block. Column k's value reaches every lane by a shuffle, each lane rounds
// it (the grid word is the same for all), and each lane updates its own
// later columns: GPTQ's rank-1 update inside the block, as the host's
// LazyUpdates::propagate does it.
__global__ void gptq_columns_kernel(float* wp, int64_t rows, int64_t cols, int64_t k0, int width,
                                    const int32_t* perm, const float* gs, const float* gb, int64_t groups, int group,
                                    float qmax, const float* u, uint8_t* codes, float* err) {
  pdl_trigger();
  pdl_wait();
  constexpr int kSlots = kGptqBlock / 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps: blockDim is a multiple of 32
  const float* row = wp + r * cols + k0;
  float v[kSlots], e[kSlots];
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    const int c = 32 * i + lane;
    v[i] = c < width ? row[c] : 0.0f;
    e[i] = 0.0f;
  }
  const float* rs = gs + r * groups;
  const float* rb = gb + r * groups;
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    for (int l = 0; l < 32; ++l) {
      const int c = 32 * i + l;
      if (c >= width) break;  // the same for the whole warp
      const int64_t k = k0 + c;
      const float x = __shfl_sync(0xffffffffu, v[i], l);
      const int64_t j = perm[k];
      const int64_t q = j / group;
      const float s = rs[q], b = rb[q];
      float qf = s != 0.0f ? nearbyintf(__fdiv_rn(x - b, s)) : 0.0f;
      qf = fminf(fmaxf(qf, 0.0f), qmax);
      const float xhat = __fadd_rn(__fmul_rn(qf, s), b);
      const float ek = __fdiv_rn(x - xhat, u[k * cols + k]);
      if (lane == l) {
        e[i] = ek;
        codes[r * cols + j] = static_cast<uint8_t>(qf);
      }
      const float* urow = u + k * cols + k0;
#pragma unroll
      for (int i2 = i; i2 < kSlots; ++i2) {
        const int c2 = 32 * i2 + lane;
        if (c2 > c && c2 < width) v[i2] -= ek * urow[c2];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    const int c = 32 * i + lane;
    if (c < width) err[r * kGptqBlock + c] = e[i];
  }
}

__global__ void codes_to_f32_kernel(const uint8_t* codes, int64_t n, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) out[e] = codes[e];
}

// h_ones[q][j] = sum_{m in q} h[j][m] (summed in double as the host does).
__global__ void h_ones_kernel(const float* h, int64_t cols, int group, float* h_ones) {
  pdl_trigger();
  pdl_wait();
  const int64_t groups = cols / group;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= groups * cols) return;
  const int64_t q = e / cols, j = e % cols;
  double t = 0;
  for (int m = 0; m < group; ++m) t += h[j * cols + q * group + m];
  h_ones[e] = static_cast<float>(t);
}

// ones[g][q] = sum_{j in q, m in g} h[j][m].
__global__ void ones_kernel(const float* h, int64_t cols, int group, double* ones) {
  pdl_trigger();
  pdl_wait();
  const int64_t groups = cols / group;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= groups * groups) return;
  const int64_t g = e / groups, q = e % groups;
  double t = 0;
  for (int jj = 0; jj < group; ++jj) {
    double row = 0;
    for (int m = 0; m < group; ++m) row += h[(q * group + jj) * cols + g * group + m];
    t += row;
  }
  ones[e] = t;
}

__global__ void fill_kernel(double* x, int64_t n, double v) {
  pdl_trigger();
  pdl_wait();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) x[e] = v;
}

__device__ double block_sum_double(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// theta^T M theta - 2 theta^T rhs (the output error less w^T H w).
__device__ double refit_error(const double* m, const double* th, const double* rhs, int64_t n2, double* scratch) {
  double part = 0;
  for (int64_t i = threadIdx.x; i < n2; i += blockDim.x) {
    double mi = 0;
    for (int64_t k = 0; k < n2; ++k) mi += m[i * n2 + k] * th[k];
    part += th[i] * (mi - 2 * rhs[i]);
  }
  return block_sum_double(part, scratch);
}

// One block per row of the tile (GridRefit::run + solve_row + the selection
// in gptq_quantize).
__global__ void grid_refit_kernel(RefitTile t) {
  pdl_trigger();
  pdl_wait();
  extern __shared__ double shared[];
  const int64_t G = t.groups, n2 = 2 * G, n = t.cols, row = blockIdx.x, r = t.r0 + row;
  const int group = t.group;
  double* rhs = shared;           // n2
  double* th = rhs + n2;          // n2: the current words, then the solution
  double* scratch = th + n2;      // 32
  __shared__ int bad;
  __shared__ double err_cur, err_new;
  double* m = t.m + row * 2 * n2 * n2;
  double* f = m + n2 * n2;
  const uint8_t* c = t.codes + r * n;
  const float* hw = t.hw + r * n;
  // M: (s_g, s_q) = c_g^T H c_q from y; (s_g, b_q) = c_g^T H 1_q; (b_g, b_q) = ones.
  for (int64_t e = threadIdx.x; e < G * G; e += blockDim.x) {
    const int64_t g = e / G, q = e % G, from = g * group;
    double c1 = 0;
    for (int jj = 0; jj < group; ++jj) c1 += static_cast<double>(t.h_ones[q * n + from + jj]) * c[from + jj];
    m[(2 * g) * n2 + 2 * q + 1] = c1;
    m[(2 * q + 1) * n2 + 2 * g] = c1;
    m[(2 * g + 1) * n2 + 2 * q + 1] = t.ones[g * G + q];
    if (q >= g) {
      const float* yg = t.y + (g * t.nt + row) * n + q * group;
      double d = 0;
      for (int jj = 0; jj < group; ++jj) d += static_cast<double>(yg[jj]) * c[q * group + jj];
      m[(2 * g) * n2 + 2 * q] = d;
      m[(2 * q) * n2 + 2 * g] = d;
    }
  }
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    double a = 0, b = 0;
    for (int jj = 0; jj < group; ++jj) {
      const int64_t j = g * group + jj;
      a += static_cast<double>(c[j]) * hw[j];
      b += hw[j];
    }
    rhs[2 * g] = a;
    rhs[2 * g + 1] = b;
    th[2 * g] = scale_word(t.s_words[r * G + g], t.bf16);
    th[2 * g + 1] = scale_word(t.b_words[r * G + g], t.bf16);
  }
  __syncthreads();
  const double ec = refit_error(m, th, rhs, n2, scratch);
  // f = M + a ridge of 1e-9 of the mean diagonal, factored in place (lower).
  double tr = 0;
  for (int64_t i = threadIdx.x; i < n2; i += blockDim.x) tr += m[i * n2 + i];
  tr = block_sum_double(tr, scratch);
  for (int64_t e = threadIdx.x; e < n2 * n2; e += blockDim.x)
    f[e] = m[e] + (e / n2 == e % n2 ? 1e-9 * tr / static_cast<double>(n2) : 0.0);
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  for (int64_t j = 0; j < n2; ++j) {
    if (threadIdx.x == 0) {
      const double d = f[j * n2 + j];
      if (!(d > 0) || !isfinite(d)) bad = 1;
      else f[j * n2 + j] = sqrt(d);
    }
    __syncthreads();
    if (bad) break;
    const double ljj = f[j * n2 + j];
    for (int64_t i = j + 1 + threadIdx.x; i < n2; i += blockDim.x) f[i * n2 + j] /= ljj;
    __syncthreads();
    const int64_t rem = n2 - j - 1;
    for (int64_t e = threadIdx.x; e < rem * rem; e += blockDim.x) {
      const int64_t i = j + 1 + e / rem, k = j + 1 + e % rem;
      if (k <= i) f[i * n2 + k] -= f[i * n2 + j] * f[k * n2 + j];
    }
    __syncthreads();
  }
  double en = INFINITY;
  if (!bad) {
    for (int64_t i = threadIdx.x; i < n2; i += blockDim.x) th[i] = rhs[i];
    __syncthreads();
    for (int64_t i = 0; i < n2; ++i) {  // L y = rhs
      if (threadIdx.x == 0) th[i] /= f[i * n2 + i];
      __syncthreads();
      for (int64_t k = i + 1 + threadIdx.x; k < n2; k += blockDim.x) th[k] -= f[k * n2 + i] * th[i];
      __syncthreads();
    }
    for (int64_t i = n2 - 1; i >= 0; --i) {  // L^T x = y
      if (threadIdx.x == 0) th[i] /= f[i * n2 + i];
      __syncthreads();
      for (int64_t k = threadIdx.x; k < i; k += blockDim.x) th[k] -= f[i * n2 + k] * th[i];
      __syncthreads();
    }
    // The solution as stored (fp16/bf16 words), and its error.
    int finite = 1;
    for (int64_t i = threadIdx.x; i < n2; i += blockDim.x) {
      th[i] = scale_word(to_word(static_cast<float>(th[i]), t.bf16), t.bf16);
      if (!isfinite(th[i])) finite = 0;
    }
    finite = __syncthreads_and(finite);
    if (finite) en = refit_error(m, th, rhs, n2, scratch);
  }
  if (threadIdx.x == 0) {
    err_cur = ec;
    err_new = en;
  }
  __syncthreads();
  const bool better = err_new < err_cur;
  const double e = better ? err_new : err_cur;
  const bool best = e < t.best_err[r];
  __syncthreads();  // every thread has read best_err before it changes
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    const uint16_t sw = better ? to_word(static_cast<float>(th[2 * g]), t.bf16) : t.s_words[r * G + g];
    const uint16_t bw = better ? to_word(static_cast<float>(th[2 * g + 1]), t.bf16) : t.b_words[r * G + g];
    if (best) {
      t.best_s[r * G + g] = sw;
      t.best_b[r * G + g] = bw;
    }
    t.s_words[r * G + g] = sw;
    t.b_words[r * G + g] = bw;
    t.gs[r * G + g] = scale_word(sw, t.bf16);
    t.gb[r * G + g] = scale_word(bw, t.bf16);
  }
  if (best) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) t.best_codes[r * n + j] = c[j];
    if (threadIdx.x == 0) t.best_err[r] = e;
  }
}

}  // namespace

void cholesky_diagonal_block(double* a, int64_t n, int64_t k0, int nb, int* fail, cudaStream_t s) {
  launch(cholesky_diagonal_kernel, 1, kFactorBlock * kFactorBlock, 0, s, a, n, k0, nb, fail);
  OPTIQ_CUDA_LAUNCHED();
}

void lower_solve(const double* l, int64_t ld, int nb, double* x, int64_t nvec, int64_t vec_stride,
                 int64_t elem_stride, cudaStream_t s) {
  if (nvec <= 0) return;
  launch(lower_solve_kernel, blocks_for(nvec, 128), 128, 0, s, l, ld, nb, x, nvec, vec_stride, elem_stride);
  OPTIQ_CUDA_LAUNCHED();
}

void set_identity(double* a, int64_t n, cudaStream_t s) {
  launch(set_identity_kernel, blocks_for(n * n, kThreads), kThreads, 0, s, a, n);
  OPTIQ_CUDA_LAUNCHED();
}

void reverse_to_upper(const double* inv, int64_t n, float* u, int* fail, cudaStream_t s) {
  launch(reverse_to_upper_kernel, blocks_for(n * n, kThreads), kThreads, 0, s, inv, n, u, fail);
  OPTIQ_CUDA_LAUNCHED();
}

void permute_columns(const float* w, int64_t rows, int64_t cols, const int32_t* perm, float* wp, cudaStream_t s) {
  if (rows * cols == 0) return;
  launch(permute_columns_kernel, blocks_for(rows * cols, kThreads), kThreads, 0, s, w, rows, cols, perm, wp);
  OPTIQ_CUDA_LAUNCHED();
}

void words_to_f32(const uint16_t* words, int64_t n, bool bf16, float* out, cudaStream_t s) {
  if (n == 0) return;
  launch(words_to_f32_kernel, blocks_for(n, kThreads), kThreads, 0, s, words, n, bf16, out);
  OPTIQ_CUDA_LAUNCHED();
}

void gptq_columns(float* wp, int64_t rows, int64_t cols, int64_t k0, int width, const int32_t* perm,
                  const float* gs, const float* gb, int64_t groups, int group, int qmax, const float* u,
                  uint8_t* codes, float* err, cudaStream_t s) {
  if (rows == 0) return;
  launch(gptq_columns_kernel, blocks_for(rows * 32, kThreads), kThreads, 0, s, wp, rows, cols, k0, width, perm, gs,
         gb, groups, group, static_cast<float>(qmax), u, codes, err);
  OPTIQ_CUDA_LAUNCHED();
}

void codes_to_f32(const uint8_t* codes, int64_t n, float* out, cudaStream_t s) {
  if (n == 0) return;
  launch(codes_to_f32_kernel, blocks_for(n, kThreads), kThreads, 0, s, codes, n, out);
  OPTIQ_CUDA_LAUNCHED();
}

void group_sums(const float* h, int64_t cols, int group, float* h_ones, double* ones, cudaStream_t s) {
  const int64_t groups = cols / group;
  launch(h_ones_kernel, blocks_for(groups * cols, kThreads), kThreads, 0, s, h, cols, group, h_ones);
  OPTIQ_CUDA_LAUNCHED();
  launch(ones_kernel, blocks_for(groups * groups, kThreads), kThreads, 0, s, h, cols, group, ones);
  OPTIQ_CUDA_LAUNCHED();
}

void fill(double* x, int64_t n, double v, cudaStream_t s) {
  if (n == 0) return;
  launch(fill_kernel, blocks_for(n, kThreads), kThreads, 0, s, x, n, v);
  OPTIQ_CUDA_LAUNCHED();
}

void grid_refit(const RefitTile& t, cudaStream_t s) {
  if (t.nt == 0) return;
  const size_t smem = static_cast<size_t>(2 * (2 * t.groups) + 32) * sizeof(double);
  if (smem > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(grid_refit_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute (grid refit)", __FILE__, __LINE__);
  launch(grid_refit_kernel, static_cast<unsigned>(t.nt), 128, smem, s, t);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
