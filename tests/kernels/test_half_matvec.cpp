// fp16/bf16 decode kernels (kernels/half_matvec_*.cpp): every ISA, odd shapes,
// n = 1..5 (n >= 4 takes the tile path), against a double-precision product of
// the widened weights.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "core/half.h"
#include "kernels/matmul.h"
#include "isa_guard.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::IsaGuard;

// Returns the number of bad elements; tolerance is fp32 rounding of the sum.
int check(const std::vector<float>& Wf, int64_t rows, int64_t cols, const std::vector<float>& X, int64_t n,
          const std::vector<float>& Y, const std::string& what) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < cols; ++k) {
        const double p = static_cast<double>(X[i * cols + k]) * Wf[r * cols + k];
        ref += p;
        mag += std::abs(p);
      }
      const double got = Y[i * rows + r];
      if (!(std::abs(got - ref) <= 1e-6 * mag + 1e-30) && bad++ < 3)
        ADD_FAILURE() << what << " Y[" << i << "," << r << "] = " << got << " expected " << ref << " (mag " << mag
                      << ")";
    }
  return bad;
}

void run_case(int64_t rows, int64_t cols, int64_t n, uint32_t seed) {
  auto W = test::random_floats(rows * cols, seed);
  auto X = test::random_floats(n * cols, seed + 7);
  std::vector<uint16_t> h(W.size()), b(W.size());
  std::vector<float> Wh(W.size()), Wb(W.size());
  for (size_t j = 0; j < W.size(); ++j) {
    h[j] = f32_to_f16(W[j]);
    b[j] = f32_to_bf16(W[j]);
    Wh[j] = f16_to_f32(h[j]);
    Wb[j] = bf16_to_f32(b[j]);
  }
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_isa(isa);
    const std::string tag = fmt::format("{} {}x{} n={}", isa_name(isa), rows, cols, n);
    std::vector<float> Y(n * rows, NAN);
    half_matmul(h.data(), false, rows, cols, X.data(), n, Y.data());
    check(Wh, rows, cols, X, n, Y, "f16 " + tag);
    std::fill(Y.begin(), Y.end(), NAN);
    half_matmul(b.data(), true, rows, cols, X.data(), n, Y.data());
    check(Wb, rows, cols, X, n, Y, "bf16 " + tag);
  }
}

}  // namespace

TEST(HalfMatvec, OddShapesAllIsas) {
  IsaGuard guard;
  uint32_t seed = 1;
  for (int64_t rows : {1, 2, 3, 4, 5, 7, 15, 16, 17, 33, 67})
    for (int64_t cols : {1, 5, 8, 15, 16, 17, 31, 33, 48, 64, 100, 333})
      for (int64_t n = 1; n <= 5; ++n) run_case(rows, cols, n, seed++);
}

// Large enough to run in parallel over row blocks, with a row count that is
// not a multiple of the 16-row block and a width that leaves a tail.
TEST(HalfMatvec, ParallelShapes) {
  IsaGuard guard;
  for (int64_t n = 1; n <= 3; ++n) {
    run_case(301, 1000, n, 500 + n);
    run_case(576, 576, n, 600 + n);
  }
}

// Magnitudes far from 1 (bf16 keeps fp32's range; fp16 near its limits).
TEST(HalfMatvec, WideRangeValues) {
  IsaGuard guard;
  const int64_t rows = 19, cols = 77;
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_isa(isa);
    std::vector<uint16_t> b(rows * cols), h(rows * cols);
    std::vector<float> Wb(b.size()), Wh(h.size());
    auto g = test::random_floats(b.size(), 9);
    for (size_t j = 0; j < b.size(); ++j) {
      b[j] = f32_to_bf16(g[j] * std::ldexp(1.0f, static_cast<int>(j % 81) - 40) * 1e20f);
      h[j] = f32_to_f16(g[j] * std::ldexp(1.0f, static_cast<int>(j % 25) - 12));  // within fp16's range
      Wb[j] = bf16_to_f32(b[j]);
      Wh[j] = f16_to_f32(h[j]);
    }
    for (int64_t n = 1; n <= 3; ++n) {
      auto X = test::random_floats(n * cols, 10 + n);
      std::vector<float> Y(n * rows, NAN);
      half_matmul(b.data(), true, rows, cols, X.data(), n, Y.data());
      check(Wb, rows, cols, X, n, Y, fmt::format("bf16 wide {} n={}", isa_name(isa), n));
      half_matmul(h.data(), false, rows, cols, X.data(), n, Y.data());
      check(Wh, rows, cols, X, n, Y, fmt::format("f16 wide {} n={}", isa_name(isa), n));
    }
  }
}

}  // namespace optiq
