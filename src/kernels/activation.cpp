#include "kernels/activation.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "kernels/matmul.h"

namespace optiq {

namespace kern {
void gated_activation_scalar(GateAct act, float* gate, const float* up, int64_t n) {
  constexpr float k2 = 2.0f * 0.7978845608028654f;  // 2 sqrt(2/pi)
  for (int64_t i = 0; i < n; ++i) {
    const float x = gate[i];
    const float z = act == GateAct::Silu ? x : k2 * (x + 0.044715f * x * x * x);
    gate[i] = x / (1.0f + std::exp(-z)) * up[i];
  }
}
}  // namespace kern

void gated_activation(GateAct act, float* gate, const float* up, int64_t n) {
  const Isa isa = active_isa();
  auto fn = isa == Isa::Avx512 ? kern::gated_activation_avx512
            : isa == Isa::Avx2 ? kern::gated_activation_avx2
                               : kern::gated_activation_scalar;
  constexpr int64_t kChunk = 4096;  // values per task; a multiple of every vector width
  if (n < 4 * kChunk) return fn(act, gate, up, n);
  parallel_for_range((n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    const int64_t i0 = c0 * kChunk, i1 = std::min(n, c1 * kChunk);
    fn(act, gate + i0, up + i0, i1 - i0);
  });
}

}  // namespace optiq
