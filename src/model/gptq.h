// GPTQ (Frantar et al. 2022): quantize a matrix column by column and fold each
// column's rounding error into the columns not yet quantized, weighted by the
// inverse of the inputs' second moment H = E[x x^T], so that the output error
// ||(W - W^) X||^2 (not the weight error) is what is minimised.
//
// Formats stay exactly what they are: the rounding grid of each group is the
// format's own (scales/biases from optiq's quantizer, importance = diag H).
//  - Affine (MLX) formats: a group's scale and bias are fitted to the row's
//    error-updated values when the group is reached, then each column is
//    rounded on that grid and its error fed forward (inside the group too).
//    With act_order the columns go in order of decreasing H_jj and the groups'
//    grids are fitted up front on the original values ("static groups"), so
//    the layout is the format's and no permutation is stored.
//    Then (grid_passes) each row's grid is refitted to the codes GPTQ chose:
//    all its groups' scales and biases at once, by least squares on the same
//    output error (GPTQ fixed a group's grid before it saw the group's codes,
//    which the error feedback had already bent), GPTQ rounds again on the
//    refitted grid, and so on; each row keeps its (codes, grid) of least
//    error, so no row gets worse. Measured on Gemma 3 270M (uniform, KLD on
//    wiki.valid): q3 g32 0.518 plain, 0.509 one refit, 0.483 three, 0.484 six;
//    q4 g64 0.173 plain, 0.164 four. Costs about one product with H per row and
//    pass (half of H c_g per group: M is symmetric), and the dampened H kept
//    beside the factor (cols^2 floats).
//  - GGUF block types: their grids are nested (k-quant super-blocks), so a
//    block is quantized whole by the format's quantizer from the updated
//    values and its error is fed forward to the later blocks only.
//
// H is dampened (damp * mean diag added to the diagonal; inputs never seen get
// 1); when its Cholesky factorisation still fails, the dampening grows tenfold
// up to four times, then the matrix is rounded plainly and `fallback` says so.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "quant/format.h"

namespace optiq {

struct GptqOptions {
  double damp = 0.01;     // fraction of mean(diag H) added to the diagonal
  bool act_order = true;  // affine formats: columns by decreasing H_jj, static groups
  // A tied embedding's GPTQ is fitted to its head role (H: the final norm's
  // outputs), but its rows are also looked up, where each row's own error
  // counts, whatever H says: the larger ridge keeps GPTQ's weight error
  // closer to plain rounding's (and steadies H's weak directions, which
  // held-out tokens use). Gemma 3 270M at q3 g64, GPTQ fitted on 8 of 16 C4
  // windows and measured on the other 8 (KLD; plain rounding 0.212): damp
  // 0.01 0.230, 0.1 0.201, 1 0.183 (BENCHMARKS.md §9); both ways round
  // (bench/embed_gptq_heldout; plain 0.246): 0.2 0.221, 0.3 0.217, 0.5
  // 0.213, 1 0.220, 2 0.219, but 0.5 measured no better than 1 on
  // wikitext (the method table at 3.5-4.5 bpw), so 1 stays. A ridge per row
  // growing with its token's calibration count (frequent rows nearer plain
  // rounding) measured worse than one ridge for all rows, at every weight tried.
  double tied_embed_damp = 1.0;
  // Affine formats: GPTQ then a refit of every group's scale and bias to the
  // codes it chose (least squares under H, all groups of a row at once), then
  // GPTQ again on the refitted grid... `grid_passes` refits in all (0: plain
  // GPTQ); each row keeps its pair of least error. See gptq_quantize.
  int grid_passes = 3;
};

struct GptqResult {
  QuantizedMatrix q;
  bool fallback = false;  // H was not positive definite even dampened: plain rounding
  double damp_used = 0;
};

// What GPTQ derives from H alone (the expensive part: O(cols^3)), shared by
// the matrices that read the same inputs (q, k, v; gate, up).
struct GptqHessian {
  int64_t cols = 0;
  bool act_order = false;
  bool ok = false;                // false: not positive definite even dampened
  double damp_used = 0;
  std::vector<float> diag;        // H_jj (the quantizer's importance)
  std::vector<int64_t> perm;      // column order
  std::vector<float> u;           // upper Cholesky factor of the permuted, dampened H^-1
  // Grid refits (affine formats; GptqOptions::grid_passes): their number and
  // the dampened H in the natural order (empty without refits).
  int grid_passes = 0;
  std::vector<float> h;
  // GPTQ on a backend's device (Backend::gptq_factor): the factor lives
  // there, u and h stay empty, and gptq_quantize sends the rows to it.
  Backend* backend = nullptr;
  std::shared_ptr<const Backend::GptqFactor> device;
};
// h: cols x cols, symmetric (any positive multiple of E[x x^T], e.g. a Gram
// sum). act_order is honoured for affine formats only (gptq_uses_act_order).
// backend: a backend to run GPTQ on (its device), when it has GPTQ
// (Backend::gptq_factor) and the order is act-order (affine formats); the
// host otherwise. Null: the host.
GptqHessian gptq_prepare(const float* h, int64_t cols, bool act_order, double damp, int grid_passes = 0,
                         Backend* backend = nullptr);
bool gptq_uses_act_order(const TensorFormat& f, const GptqOptions& g);
// The grid refits GPTQ of format f makes (GptqOptions::grid_passes for affine
// formats, 0 for GGUF blocks, whose grids are themselves quantized): what
// gptq_prepare is given, so that no H is kept where none is refitted.
int gptq_grid_passes(const TensorFormat& f, const GptqOptions& g);

// w: rows x cols fp32 (row-major). opt: the rounding options of the format's
// quantizer (its importance is replaced by diag H). Each row is rounded on its
// own, but in tiles of rows whose products (lazy updates, grid refits) may
// round differently by tile size: calls on blocks of rows that are multiples
// of kGptqRowAlign give the whole matrix's bits.
inline constexpr int64_t kGptqRowAlign = 256;
GptqResult gptq_quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols, const GptqHessian& hs,
                         const QuantizeOptions& opt = {});
// Both steps at once.
GptqResult gptq_quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols, const float* h,
                         const QuantizeOptions& opt = {}, const GptqOptions& g = {});

// GPTQ aimed at the float model's outputs (GPTAQ's asymmetric objective):
// with x the float model's inputs of a matrix and x~ the quantized model's,
// min sum ||W x - W^ x~||^2 = min sum ||(W' - W^) x~||^2 + const, where
// W' = W C H^-1, C = sum x x~^T (`cross`), H = sum x~ x~^T (`h`). Written as
// W' = W + W (C - H) H^-1 with the dampened H^-1 of `hs` (gptq_prepare of h),
// so that W' is W exactly when the inputs agree (C = H) and dampening only
// shrinks the correction. out: rows x cols; GPTQ then quantizes out with hs.
void gptq_asymmetric_target(const float* w, int64_t rows, int64_t cols, const float* h, const float* cross,
                            const GptqHessian& hs, float* out);

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U), rows x cols double,
// after dampening; false when H is not positive definite. Exposed for tests.
bool gptq_inverse_factor(const float* h, int64_t n, double damp, std::vector<double>& u);

}  // namespace optiq
