#include "kernels/act_quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

namespace optiq {

void prepare_activations(int64_t n, int64_t cols, Int8Activations& out) {
  out.n = n;
  out.cols = cols;
  out.blocks = (cols + kActBlock - 1) / kActBlock;
  const int64_t width = out.blocks * kActBlock;
  if (static_cast<int64_t>(out.q.size()) < n * width) out.q.resize(n * width);
  if (static_cast<int64_t>(out.scale.size()) < n * out.blocks) out.scale.resize(n * out.blocks);
  if (static_cast<int64_t>(out.sum.size()) < n * out.blocks) out.sum.resize(n * out.blocks);
}

void quantize_activation_rows(const float* x, int64_t i0, int64_t i1, Int8Activations& out) {
  const int64_t cols = out.cols, width = out.blocks * kActBlock;
  for (int64_t i = i0; i < i1; ++i) {
    const float* xr = x + i * cols;
    int8_t* qr = out.q.data() + i * width;
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t k0 = b * kActBlock, k1 = std::min(cols, k0 + kActBlock);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float s = amax / 127.0f;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      int32_t sum = 0;
      for (int64_t k = k0; k < k0 + kActBlock; ++k) {
        const int v = k < k1 ? static_cast<int>(std::nearbyint(xr[k] * inv)) : 0;
        qr[k] = static_cast<int8_t>(v);
        sum += v;
      }
      out.scale[i * out.blocks + b] = s;
      out.sum[i * out.blocks + b] = sum;
    }
  }
}

void quantize_activations(const float* x, int64_t n, int64_t cols, Int8Activations& out) {
  prepare_activations(n, cols, out);
  quantize_activation_rows(x, 0, n, out);
}

}  // namespace optiq

namespace optiq::kernels {
namespace {
// OPTIQ_DECODE_INT8=0 starts the process in exact mode.
bool initial_decode_int8() {
  const char* e = std::getenv("OPTIQ_DECODE_INT8");
  return !(e && e[0] == '0');
}
std::atomic<bool> g_decode_int8{initial_decode_int8()};
}
bool decode_int8_enabled() { return g_decode_int8.load(std::memory_order_relaxed); }
void set_decode_int8(bool on) { g_decode_int8.store(on, std::memory_order_relaxed); }
}  // namespace optiq::kernels
