#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/half.h"
#include "kernels/matmul.h"
#include "quant/quantizer.h"
#include "isa_guard.h"
#include "test_util.h"

namespace optiq {

namespace {

using test::available_isas;

// These tests check the fp32 kernels against a double product at 2e-6, so
// they turn the int8 decode path off (it has its own tests,
// test_int8_decode.cpp, with the tolerance its rounding implies).
struct Fp32Guard {
  Isa saved = active_isa();
  bool int8 = int8_decode();
  Fp32Guard() { set_int8_decode(false); }
  ~Fp32Guard() {
    set_isa(saved);
    set_int8_decode(int8);
  }
};

// Y = X W^T in double; tolerance per element scaled by sum |x||w|.
void check_product(const std::vector<float>& Wf, int64_t rows, int64_t cols, const std::vector<float>& X, int64_t n,
                   const std::vector<float>& Y, const std::string& what) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < cols; ++k) {
        ref += static_cast<double>(X[i * cols + k]) * Wf[r * cols + k];
        mag += std::abs(static_cast<double>(X[i * cols + k]) * Wf[r * cols + k]);
      }
      const double got = Y[i * rows + r];
      if (!(std::abs(got - ref) <= 2e-6 * mag + 1e-30) && bad++ < 5)
        ADD_FAILURE() << what << " Y[" << i << "," << r << "] = " << got << " expected " << ref << " (mag " << mag
                      << ")";
    }
}

}  // namespace

TEST(Kernels, AffineAllFormatsAllPaths) {
  Fp32Guard guard;
  const int64_t row_counts[] = {1, 3, 17, 67};
  const int64_t ns[] = {1, 2, 5, 33};
  uint32_t seed = 1;
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int gs : {32, 64, 128})
      for (bool bf16 : {false, true}) {
        const int64_t col_opts[] = {gs, 3 * gs, 10 * 32 / gs * gs == 320 ? 320 : 5 * gs};
        for (int64_t cols : col_opts) {
          const int64_t rows = row_counts[(seed) % 4];
          auto w = test::random_floats(rows * cols, seed++);
          QuantizeOptions o;
          o.method = QuantMethod::MinMax;
          o.bf16_scales = bf16;
          AffineMatrix m = quantize(w.data(), rows, cols, {bits, gs}, o);
          auto Wf = dequantize(m.view());
          for (int64_t n : ns) {
            auto X = test::random_floats(n * cols, seed++);
            for (Isa isa : available_isas()) {
              set_isa(isa);
              std::vector<float> Y(n * rows, NAN);
              affine_matmul(m.view(), X.data(), n, Y.data());
              check_product(Wf, rows, cols, X, n, Y,
                            fmt::format("{} q{} g{} {} {}x{} n={}", isa_name(isa), bits, gs, bf16 ? "bf16" : "f16",
                                        rows, cols, n));
            }
          }
        }
      }
}

// The packed words of a matrix whose rows are shorter than the 16 bytes the
// SIMD decode loads (32 columns at 2 to 3 bits: 8 or 12 bytes) end right
// before an inaccessible page: no path may read past the matrix (ASan found
// the decode reading 16 bytes from the start of the second-to-last row's
// last chunk, past the end of a 3-row matrix).
TEST(Kernels, AffineShortRowsNeverReadPastTheMatrix) {
  Fp32Guard guard;
  const long page = sysconf(_SC_PAGESIZE);
  void* mem = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  ASSERT_EQ(mprotect(static_cast<char*>(mem) + page, page, PROT_NONE), 0);
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int64_t rows : {1, 2, 3, 5}) {
      const int64_t cols = 32;
      auto w = test::random_floats(rows * cols, 11 + bits * 7 + rows);
      QuantizeOptions o;
      o.method = QuantMethod::MinMax;
      AffineMatrix m = quantize(w.data(), rows, cols, {bits, 32}, o);
      const size_t nbytes = m.packed.size() * sizeof(uint32_t);
      uint32_t* at_end = reinterpret_cast<uint32_t*>(static_cast<char*>(mem) + page - nbytes);
      std::memcpy(at_end, m.packed.data(), nbytes);
      AffineMatrixView v = m.view();
      v.packed = at_end;
      auto Wf = dequantize(m.view());
      for (int64_t n : {1, 2, 5}) {
        auto X = test::random_floats(n * cols, 3 + n);
        for (Isa isa : available_isas()) {
          set_isa(isa);
          std::vector<float> Y(n * rows, NAN);
          affine_matmul(v, X.data(), n, Y.data());
          check_product(Wf, rows, cols, X, n, Y, fmt::format("{} q{} {}x32 n={}", isa_name(isa), bits, rows, n));
          // The int8 decode path reads the same words (its accuracy is tested in test_int8_decode.cpp).
          set_int8_decode(true);
          affine_matmul(v, X.data(), n, Y.data());
          set_int8_decode(false);
          for (float y : Y) ASSERT_TRUE(std::isfinite(y));
        }
      }
    }
  munmap(mem, 2 * page);
}

TEST(Kernels, AffineOddRowCounts) {
  Fp32Guard guard;
  for (int64_t rows : {1, 3, 17, 67})
    for (int64_t n : {1, 2, 3, 4, 5, 33}) {
      const int64_t cols = 96;
      auto w = test::random_floats(rows * cols, 77 + rows);
      AffineMatrix m = quantize(w.data(), rows, cols, {3, 32});
      auto Wf = dequantize(m.view());
      auto X = test::random_floats(n * cols, 5 + n);
      for (Isa isa : available_isas()) {
        set_isa(isa);
        std::vector<float> Y(n * rows, NAN);
        affine_matmul(m.view(), X.data(), n, Y.data());
        check_product(Wf, rows, cols, X, n, Y, fmt::format("{} rows={} n={}", isa_name(isa), rows, n));
      }
    }
}

TEST(Kernels, DenseF32AndHalf) {
  Fp32Guard guard;
  for (int64_t rows : {1, 3, 17, 67})
    for (int64_t cols : {1, 7, 32, 96, 333})
      for (int64_t n : {1, 2, 5, 33}) {
        auto W = test::random_floats(rows * cols, 1000 + rows * cols);
        auto X = test::random_floats(n * cols, 2000 + n);
        std::vector<uint16_t> h(W.size()), b(W.size());
        std::vector<float> Wh(W.size()), Wb(W.size());
        for (size_t j = 0; j < W.size(); ++j) {
          h[j] = f32_to_f16(W[j]);
          b[j] = f32_to_bf16(W[j]);
          Wh[j] = f16_to_f32(h[j]);
          Wb[j] = bf16_to_f32(b[j]);
        }
        for (Isa isa : available_isas()) {
          set_isa(isa);
          const std::string tag = fmt::format("{} {}x{} n={}", isa_name(isa), rows, cols, n);
          std::vector<float> Y(n * rows, NAN);
          f32_matmul(W.data(), rows, cols, X.data(), n, Y.data());
          check_product(W, rows, cols, X, n, Y, "f32 " + tag);
          half_matmul(h.data(), false, rows, cols, X.data(), n, Y.data());
          check_product(Wh, rows, cols, X, n, Y, "f16 " + tag);
          half_matmul(b.data(), true, rows, cols, X.data(), n, Y.data());
          check_product(Wb, rows, cols, X, n, Y, "bf16 " + tag);
        }
      }
}

TEST(Kernels, IsaSelection) {
  Fp32Guard guard;
  EXPECT_EQ(set_isa(Isa::Scalar), Isa::Scalar);
  EXPECT_EQ(active_isa(), Isa::Scalar);
  Isa got = set_isa(Isa::Avx512);
  EXPECT_TRUE(isa_supported(got));
}

}  // namespace optiq
