#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "kernels/half_matvec.h"
#include "kernels/kernels_impl.h"

namespace optiq {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

namespace {

Isa best_supported(Isa want) {
  for (int i = static_cast<int>(want); i > 0; --i)
    if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::Scalar;
}

Isa initial_isa() {
  Isa want = Isa::Avx512;
  if (const char* e = std::getenv("OPTIQ_ISA")) {
    std::string_view s(e);
    if (s == "scalar") want = Isa::Scalar;
    else if (s == "avx2") want = Isa::Avx2;
    else if (s == "avx512") want = Isa::Avx512;
  }
  return best_supported(want);
}

std::atomic<int> g_isa{-1};

// Splits rows into blocks of kRowBlock and runs fn(r0, r1) on each, in
// parallel when there is enough work.
template <typename Fn>
void for_row_blocks(int64_t rows, double work, Fn&& fn) {
  const int64_t nb = (rows + kern::kRowBlock - 1) / kern::kRowBlock;
  const bool par = work > 2e5 && nb > 1;
  // Several blocks per task when there are many, so that a task is worth the
  // hand-off; small enough (>= 8 tasks per thread) to rebalance when a thread
  // is preempted.
  const int64_t per_task = std::max<int64_t>(1, nb / (8 * std::max(1, num_threads())));
  parallel_for_range(
      nb, per_task,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r0 = b * kern::kRowBlock;
          fn(r0, std::min(rows, r0 + kern::kRowBlock));
        }
      },
      par ? 0 : 1);
}

}  // namespace

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

Isa set_isa(Isa isa) {
  const Isa got = best_supported(isa);
  g_isa.store(static_cast<int>(got), std::memory_order_relaxed);
  return got;
}

namespace kern {

void affine_block_scalar(const AffineArgs& a, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t K = W.cols;
  std::vector<float> row(K);
  for (int64_t r = r0; r < r1; ++r) {
    dequantize_row(W, r, row.data());
    for (int64_t i = 0; i < a.n; ++i) {
      const float* x = a.X + i * K;
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += row[k] * x[k];
      a.Y[i * W.rows + r] = acc;
    }
  }
}

void dense_block_scalar(const DenseArgs& a, int64_t r0, int64_t r1) {
  const int64_t K = a.cols;
  std::vector<float> row(K);
  for (int64_t r = r0; r < r1; ++r) {
    const float* w;
    if (a.kind == 0) {
      w = static_cast<const float*>(a.W) + r * K;
    } else {
      const uint16_t* h = static_cast<const uint16_t*>(a.W) + r * K;
      for (int64_t k = 0; k < K; ++k) row[k] = a.kind == 2 ? bf16_to_f32(h[k]) : f16_to_f32(h[k]);
      w = row.data();
    }
    for (int64_t i = 0; i < a.n; ++i) {
      const float* x = a.X + i * K;
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
      a.Y[i * a.rows + r] = acc;
    }
  }
}

}  // namespace kern

void affine_matmul(const AffineMatrixView& W, const float* X, int64_t n, float* Y) {
  check_view(W);
  if (n <= 0) return;
  const Isa isa = active_isa();
  const int64_t ng = W.groups_per_row(), gs = W.fmt.group_size;
  std::vector<float> xsum;
  if (n < kern::kFusedMaxN) {
    xsum.resize(n * ng);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        const float* x = X + i * W.cols + g * gs;
        float s = 0;
        for (int64_t j = 0; j < gs; ++j) s += x[j];
        xsum[i * ng + g] = s;
      }
  }
  std::vector<float> xperm;
  if (isa == Isa::Avx512 && W.fmt.bits == 4 && n < kern::kFusedMaxN) {
    xperm.resize(n * W.cols);
    for (int64_t i = 0; i < n; ++i) kern::permute_x_q4_avx512(X + i * W.cols, W.cols, xperm.data() + i * W.cols);
  }
  const kern::AffineArgs a{&W, X, n, Y, xsum.data(), xperm.empty() ? nullptr : xperm.data()};
  auto fn = isa == Isa::Avx512 ? kern::affine_block_avx512
            : isa == Isa::Avx2 ? kern::affine_block_avx2
                               : kern::affine_block_scalar;
  for_row_blocks(W.rows, static_cast<double>(W.rows) * W.cols * n, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

namespace {
void dense_matmul(const kern::DenseArgs& a) {
  check(a.rows > 0 && a.cols > 0, "matmul: empty {}x{} weight matrix", a.rows, a.cols);
  if (a.n <= 0) return;
  const Isa isa = active_isa();
  auto fn = isa == Isa::Avx512 ? kern::dense_block_avx512
            : isa == Isa::Avx2 ? kern::dense_block_avx2
                               : kern::dense_block_scalar;
  if (a.kind != 0 && a.n < kern::kFusedMaxN && isa != Isa::Scalar)  // decode: widen fp16/bf16 in registers
    fn = isa == Isa::Avx512 ? kern::half_matvec_block_avx512 : kern::half_matvec_block_avx2;
  for_row_blocks(a.rows, static_cast<double>(a.rows) * a.cols * a.n, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}
}  // namespace

void f32_matmul(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y) {
  dense_matmul({W, 0, rows, cols, X, n, Y});
}

void half_matmul(const uint16_t* W, bool bf16, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y) {
  dense_matmul({W, bf16 ? 2 : 1, rows, cols, X, n, Y});
}

}  // namespace optiq
