#include "backend/cuda/cuda_gptq.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/gptq_kernels.h"
#include "core/error.h"

namespace optiq::cuda {

namespace {

class CudaGptqFactor final : public Backend::GptqFactor {
 public:
  int64_t n = 0;
  DeviceMemory u;     // fp32 n x n: the upper factor of the permuted H^-1
  DeviceMemory perm;  // int32 n
  DeviceMemory diag;  // fp32 n, natural order
  DeviceMemory h;     // fp32 n x n, the dampened H in the natural order (refits); empty without
};

template <class T>
DeviceMemory upload(const T* host, size_t count, cudaStream_t s) {
  DeviceMemory d(count * sizeof(T));
  OPTIQ_CUDA_OK(cudaMemcpyAsync(d.get(), host, count * sizeof(T), cudaMemcpyHostToDevice, s));
  return d;
}

// Row-major products through cuBLAS's column-major GEMM: a row-major R
// (r x c, leading dimension ld) is the column-major R^T. fp32 without TF32
// (the host's GPTQ is fp32 throughout); the factorisation in double.
template <class T>
void gemm(cublasHandle_t blas, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, T alpha,
          const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, const char* what) {
  constexpr bool f64 = std::is_same_v<T, double>;
  constexpr cudaDataType type = f64 ? CUDA_R_64F : CUDA_R_32F;
  check_blas(cublas_api().gemm_ex(blas, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha,
                                  a, type, static_cast<int>(lda), b, type, static_cast<int>(ldb), &beta, c, type,
                                  static_cast<int>(ldc), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT),
             what);
}

int read_flag(const DeviceMemory& flag, cudaStream_t s) {
  int v = 0;
  OPTIQ_CUDA_OK(cudaMemcpyAsync(&v, flag.get(), sizeof(int), cudaMemcpyDeviceToHost, s));
  OPTIQ_CUDA_OK(cudaStreamSynchronize(s));
  return v;
}

}  // namespace

// U with H^-1 = U^T U, as gptq_inverse_factor (model/gptq.cpp) makes it: with
// J the reversal, J a J = L L^T (lower Cholesky), U = J L^-1 J.
std::unique_ptr<Backend::GptqFactor> gptq_factor(const double* a, const int64_t* perm, const float* diag,
                                                 const float* h, int64_t n, cudaStream_t s, cublasHandle_t blas) {
  check(n > 0 && n <= (int64_t{1} << 16), "cuda gptq: {} inputs (at most 65,536)", n);
  auto f = std::make_unique<CudaGptqFactor>();
  f->n = n;
  const size_t nn = static_cast<size_t>(n) * static_cast<size_t>(n);
  std::vector<double> rev(nn);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) rev[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
  DeviceMemory l = upload(rev.data(), nn, s);
  DeviceMemory flag(sizeof(int));
  OPTIQ_CUDA_OK(cudaMemsetAsync(flag.get(), 0, sizeof(int), s));
  double* L = l.as<double>();
  int* fail = flag.as<int>();
  for (int64_t k0 = 0; k0 < n; k0 += kFactorBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kFactorBlock, n - k0));
    const int64_t k1 = k0 + nb, rest = n - k1;
    cholesky_diagonal_block(L, n, k0, nb, fail, s);
    if (rest == 0) break;
    // L21 L11^T = A21, row by row; then A22 -= L21 L21^T.
    lower_solve(L + k0 * n + k0, n, nb, L + k1 * n + k0, rest, n, 1, s);
    gemm<double>(blas, CUBLAS_OP_T, CUBLAS_OP_N, rest, rest, nb, -1.0, L + k1 * n + k0, n, L + k1 * n + k0, n, 1.0,
             L + k1 * n + k1, n, "cublasGemmEx (gptq cholesky)");
  }
  // L's strict upper triangle still holds A's: the inverse below reads only the lower.
  DeviceMemory xinv(nn * sizeof(double));
  double* X = xinv.as<double>();
  set_identity(X, n, s);
  for (int64_t k0 = 0; k0 < n; k0 += kFactorBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kFactorBlock, n - k0));
    const int64_t k1 = k0 + nb, rest = n - k1;
    // Block row k of L^-1 (only its first k1 columns are not zero), then its
    // share of the rows below: X[k1:, :k1] -= L[k1:, k0:k1] X[k0:k1, :k1].
    lower_solve(L + k0 * n + k0, n, nb, X + k0 * n, k1, 1, n, s);
    if (rest == 0) break;
    gemm<double>(blas, CUBLAS_OP_N, CUBLAS_OP_N, k1, rest, nb, -1.0, X + k0 * n, n, L + k1 * n + k0, n, 1.0, X + k1 * n, n,
             "cublasGemmEx (gptq inverse)");
  }
  f->u = DeviceMemory(nn * sizeof(float));
  reverse_to_upper(X, n, f->u.as<float>(), fail, s);
  f->ok = read_flag(flag, s) == 0;
  if (!f->ok) return f;
  std::vector<int32_t> p32(perm, perm + n);
  f->perm = upload(p32.data(), p32.size(), s);
  f->diag = upload(diag, static_cast<size_t>(n), s);
  if (h) f->h = upload(h, nn, s);
  OPTIQ_CUDA_OK(cudaStreamSynchronize(s));  // the host arrays may go once this returns
  return f;
}

void gptq_affine(const Backend::GptqFactor& base, const float* w, int64_t rows, AffineFormat fmt,
                 const QuantizeOptions& grid, int grid_passes, uint8_t* codes_out, uint16_t* scales_out,
                 uint16_t* biases_out, cudaStream_t s, cublasHandle_t blas) {
  const auto& f = static_cast<const CudaGptqFactor&>(base);
  check(f.ok, "cuda gptq: the factor failed");
  const int64_t cols = f.n, group = fmt.group_size, groups = cols / group;
  check(cols % group == 0 && (group == 32 || group == 64 || group == 128), "cuda gptq: {} inputs in groups of {}",
        cols, group);
  if (rows == 0) return;
  const int qmax = (1 << fmt.bits) - 1;
  const bool bf16 = grid.bf16_scales;
  const size_t n = static_cast<size_t>(rows * cols), ng = static_cast<size_t>(rows * groups);
  DeviceMemory wd = upload(w, n, s), wp(n * sizeof(float)), codes(n), err(static_cast<size_t>(rows) * kGptqBlock * 4);
  DeviceMemory sw(ng * 2), bw(ng * 2), gs(ng * 4), gb(ng * 4);
  const float* W = wd.as<float>();
  const float* U = f.u.as<float>();
  // The static groups: the grid of the original values, searched with diag H.
  check(fake_quantize_affine(W, rows, cols, fmt.bits, static_cast<int>(group), bf16,
                             grid.method == QuantMethod::Search, grid.grid, grid.refit_iters, f.diag.as<float>(), false,
                             nullptr, s, sw.as<uint16_t>(), bw.as<uint16_t>()),
        "cuda gptq: no grid search for {} inputs in groups of {}", cols, group);
  words_to_f32(sw.as<uint16_t>(), static_cast<int64_t>(ng), bf16, gs.as<float>(), s);
  words_to_f32(bw.as<uint16_t>(), static_cast<int64_t>(ng), bf16, gb.as<float>(), s);

  auto pass = [&] {
    permute_columns(W, rows, cols, f.perm.as<int32_t>(), wp.as<float>(), s);
    for (int64_t k0 = 0; k0 < cols; k0 += kGptqBlock) {
      const int width = static_cast<int>(std::min<int64_t>(kGptqBlock, cols - k0));
      const int64_t k1 = k0 + width, rest = cols - k1;
      gptq_columns(wp.as<float>(), rows, cols, k0, width, f.perm.as<int32_t>(), gs.as<float>(), gb.as<float>(),
                   groups, static_cast<int>(group), qmax, U, codes.as<uint8_t>(), err.as<float>(), s);
      // wp[:, k1:] -= err[:, :width] U[k0:k1, k1:] (column-major: C^T -= U_block^T err^T).
      if (rest > 0)
        gemm<float>(blas, CUBLAS_OP_N, CUBLAS_OP_N, rest, rows, width, -1.0f, U + k0 * cols + k1, cols, err.as<float>(),
                 kGptqBlock, 1.0f, wp.as<float>() + k1, cols, "cublasGemmEx (gptq lazy update)");
    }
  };
  pass();
  const uint8_t* result_codes = codes.as<uint8_t>();
  const uint16_t* result_s = sw.as<uint16_t>();
  const uint16_t* result_b = bw.as<uint16_t>();
  DeviceMemory best_codes, best_s, best_b, best_err;
  if (grid_passes > 0 && f.h.get()) {
    const float* H = f.h.as<float>();
    DeviceMemory h_ones(static_cast<size_t>(groups * cols) * 4), ones(static_cast<size_t>(groups * groups) * 8);
    group_sums(H, cols, static_cast<int>(group), h_ones.as<float>(), ones.as<double>(), s);
    DeviceMemory hw(n * sizeof(float));  // H w (H symmetric: the column-major product H W^T)
    gemm<float>(blas, CUBLAS_OP_N, CUBLAS_OP_N, cols, rows, cols, 1.0f, H, cols, W, cols, 0.0f, hw.as<float>(), cols,
             "cublasGemmEx (gptq H w)");
    best_codes = DeviceMemory(n);
    best_s = DeviceMemory(ng * 2);
    best_b = DeviceMemory(ng * 2);
    best_err = DeviceMemory(static_cast<size_t>(rows) * 8);
    OPTIQ_CUDA_OK(cudaMemcpyAsync(best_codes.get(), codes.get(), n, cudaMemcpyDeviceToDevice, s));
    OPTIQ_CUDA_OK(cudaMemcpyAsync(best_s.get(), sw.get(), ng * 2, cudaMemcpyDeviceToDevice, s));
    OPTIQ_CUDA_OK(cudaMemcpyAsync(best_b.get(), bw.get(), ng * 2, cudaMemcpyDeviceToDevice, s));
    fill(best_err.as<double>(), rows, INFINITY, s);
    // Rows a tile at a time: H c_g for every group g of the tile's rows
    // (G x nt x cols floats) and two (2G)^2 systems a row, bounded to
    // ~256 MB and ~128 MB.
    const int64_t n2 = 2 * groups;
    const int64_t nt = std::clamp<int64_t>(
        std::min<int64_t>((int64_t{64} << 20) / (groups * cols), (int64_t{8} << 20) / (n2 * n2)), 1, rows);
    DeviceMemory cf(static_cast<size_t>(nt * cols) * 4), y(static_cast<size_t>(groups * nt * cols) * 4),
        m(static_cast<size_t>(2 * nt * n2 * n2) * 8);
    for (int p = 0; p < grid_passes; ++p) {
      for (int64_t r0 = 0; r0 < rows; r0 += nt) {
        const int64_t tn = std::min(nt, rows - r0);
        codes_to_f32(codes.as<uint8_t>() + r0 * cols, tn * cols, cf.as<float>(), s);
        // y_g (tn x cols) = C_g H[g rows, :]: column-major, y_g^T = H[g rows, :]^T C_g^T.
        const float one = 1.0f, zero = 0.0f;
        check_blas(cublas_api().gemm_strided_batched_ex(
                       blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(tn),
                       static_cast<int>(group), &one, H, CUDA_R_32F, static_cast<int>(cols), group * cols,
                       cf.as<float>(), CUDA_R_32F, static_cast<int>(cols), group, &zero, y.as<float>(), CUDA_R_32F,
                       static_cast<int>(cols), tn * cols, static_cast<int>(groups), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
                   "cublasGemmStridedBatchedEx (gptq refit)");
        RefitTile t;
        t.r0 = r0;
        t.nt = tn;
        t.cols = cols;
        t.groups = groups;
        t.group = static_cast<int>(group);
        t.bf16 = bf16;
        t.y = y.as<float>();
        t.codes = codes.as<uint8_t>();
        t.hw = hw.as<float>();
        t.h_ones = h_ones.as<float>();
        t.ones = ones.as<double>();
        t.s_words = sw.as<uint16_t>();
        t.b_words = bw.as<uint16_t>();
        t.gs = gs.as<float>();
        t.gb = gb.as<float>();
        t.best_codes = best_codes.as<uint8_t>();
        t.best_s = best_s.as<uint16_t>();
        t.best_b = best_b.as<uint16_t>();
        t.best_err = best_err.as<double>();
        t.m = m.as<double>();
        grid_refit(t, s);
      }
      if (p + 1 < grid_passes) pass();  // GPTQ again on the refitted grid
    }
    result_codes = best_codes.as<uint8_t>();
    result_s = best_s.as<uint16_t>();
    result_b = best_b.as<uint16_t>();
  }
  OPTIQ_CUDA_OK(cudaMemcpyAsync(codes_out, result_codes, n, cudaMemcpyDeviceToHost, s));
  OPTIQ_CUDA_OK(cudaMemcpyAsync(scales_out, result_s, ng * 2, cudaMemcpyDeviceToHost, s));
  OPTIQ_CUDA_OK(cudaMemcpyAsync(biases_out, result_b, ng * 2, cudaMemcpyDeviceToHost, s));
  OPTIQ_CUDA_OK(cudaStreamSynchronize(s));
}

}  // namespace optiq::cuda
