// Activations rounded to int8 for the integer dot-product kernels (decode).
// Blocks of 32 consecutive inputs share one fp32 scale, as llama.cpp's Q8_0/Q8_1:
//   x[k] ~ scale[b] * q[k],  b = k / 32,  scale = max|x| / 127 over the block,
// and sum[b] = sum of q over the block (for the affine/min terms of weight
// formats: sum_k w_k x_k = s_w * sum q_w q_x * s_x + m_w * s_x * sum q_x).
// A row whose width is not a multiple of 32 is padded with zeros.
#pragma once
#include <cstdint>
#include <vector>

namespace optiq {

constexpr int64_t kActBlock = 32;

struct Int8Activations {
  int64_t n = 0;     // rows
  int64_t cols = 0;  // logical width of a row
  int64_t blocks = 0;            // per row: ceil(cols / 32)
  std::vector<int8_t> q;         // n x (blocks * 32), zero-padded
  std::vector<float> scale;      // n x blocks
  std::vector<int32_t> sum;      // n x blocks: sum of q in the block
  const int8_t* row_q(int64_t i) const { return q.data() + i * blocks * kActBlock; }
  const float* row_scale(int64_t i) const { return scale.data() + i * blocks; }
  const int32_t* row_sum(int64_t i) const { return sum.data() + i * blocks; }
};

// Quantizes n rows of `cols` floats (row stride cols) into `out`, reusing its
// storage (no allocation once it is large enough).
void quantize_activations(const float* x, int64_t n, int64_t cols, Int8Activations& out);
// The same in two steps, for callers that round rows in parallel: size `out`
// for n rows of `cols`, then round rows [i0, i1) of x into it.
void prepare_activations(int64_t n, int64_t cols, Int8Activations& out);
void quantize_activation_rows(const float* x, int64_t i0, int64_t i1, Int8Activations& out);

}  // namespace optiq

namespace optiq::kernels {
// Process-wide numerics switch: true (default) lets decode products (n < 4)
// round activations to int8 blocks and use integer dot products; false keeps
// fp32 activations everywhere ("exact" mode). The environment variable
// OPTIQ_DECODE_INT8=0 sets the initial value to false.
bool decode_int8_enabled();
void set_decode_int8(bool on);
}  // namespace optiq::kernels
