// GPTQ's device kernels (gptq.cu) as host-callable launchers; cuda_gptq.cpp
// strings them together with cuBLAS products into model/gptq.h's algorithm.
// Matrices are row-major.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace optiq::cuda {

// --- The inverse factor: blocked Cholesky and triangular inverse in double.
// Columns go kFactorBlock at a time; the trailing updates between the
// launches below are cuBLAS GEMMs (cuda_gptq.cpp).
constexpr int kFactorBlock = 32;
// Factors the diagonal block a[k0:k0+nb, k0:k0+nb] (n x n, earlier blocks'
// updates applied) into its lower Cholesky factor in place (zeros above);
// *fail = 1 when a pivot is not positive (or not finite).
void cholesky_diagonal_block(double* a, int64_t n, int64_t k0, int nb, int* fail, cudaStream_t s);
// Forward substitution with the nb x nb lower-triangular l (leading
// dimension ld), nb <= kFactorBlock, for nvec vectors at once: vector v's
// element j is x[v * vec_stride + j * elem_stride], replaced by
// (x_j - sum_{m<j} l_jm x_m) / l_jj.
void lower_solve(const double* l, int64_t ld, int nb, double* x, int64_t nvec, int64_t vec_stride,
                 int64_t elem_stride, cudaStream_t s);
void set_identity(double* a, int64_t n, cudaStream_t s);
// u (fp32) = J inv J on and above the diagonal, zero below (J: the reversal
// permutation); *fail = 1 where a value is not finite.
void reverse_to_upper(const double* inv, int64_t n, float* u, int* fail, cudaStream_t s);

// --- The column loop.
// wp[r][k] = w[r][perm[k]].
void permute_columns(const float* w, int64_t rows, int64_t cols, const int32_t* perm, float* wp, cudaStream_t s);
// Grid words (fp16/bf16) to fp32.
void words_to_f32(const uint16_t* words, int64_t n, bool bf16, float* out, cudaStream_t s);
// Columns GPTQ's lazy batch updates cover at once (model/gptq.cpp's kLazyWidth).
constexpr int kGptqBlock = 128;
// Columns [k0, k0 + width) of wp (width <= kGptqBlock; the earlier blocks'
// errors applied) rounded in order on each row's grid (gs/gb: rows x groups,
// the group of permuted column k is perm[k] / group), each column's error
// fed to the rest of the block through u (the upper factor, permuted order):
// codes[r][perm[k]] the code, err[r][k - k0] the error over u_kk.
void gptq_columns(float* wp, int64_t rows, int64_t cols, int64_t k0, int width, const int32_t* perm,
                  const float* gs, const float* gb, int64_t groups, int group, int qmax, const float* u,
                  uint8_t* codes, float* err, cudaStream_t s);

// --- The grid refits (GridRefit in model/gptq.cpp).
// out (rows x cols) = codes as fp32.
void codes_to_f32(const uint8_t* codes, int64_t n, float* out, cudaStream_t s);
// h_ones (groups x cols, fp32) = H 1_q per group q; ones (groups x groups,
// double) = 1_g^T H 1_q, for the dampened, symmetric h (cols x cols).
void group_sums(const float* h, int64_t cols, int group, float* h_ones, double* ones, cudaStream_t s);
void fill(double* x, int64_t n, double v, cudaStream_t s);

// One refit of rows [r0, r0 + nt): per row, the normal equations of its
// groups' scales and biases under H (M theta = rhs, 2G unknowns) from
// y (G x nt x cols: H c_g of each row's codes in group g), the current
// codes, hw (rows x cols: H w), h_ones and ones; the current words' error
// and the solved (rounded to storage) words' error; the better of the two
// becomes the row's grid (words and fp32), and replaces the row's best
// (codes, words) when below best_err. m: scratch of 2 * nt * (2G)^2 doubles.
struct RefitTile {
  int64_t r0 = 0, nt = 0, cols = 0, groups = 0;
  int group = 0;
  bool bf16 = false;
  const float* y = nullptr;
  const uint8_t* codes = nullptr;
  const float* hw = nullptr;
  const float* h_ones = nullptr;
  const double* ones = nullptr;
  uint16_t* s_words = nullptr;  // rows x groups, in/out: the grid of the next pass
  uint16_t* b_words = nullptr;
  float* gs = nullptr;  // the same as fp32
  float* gb = nullptr;
  uint8_t* best_codes = nullptr;
  uint16_t* best_s = nullptr;
  uint16_t* best_b = nullptr;
  double* best_err = nullptr;
  double* m = nullptr;
};
void grid_refit(const RefitTile& t, cudaStream_t s);

}  // namespace optiq::cuda
