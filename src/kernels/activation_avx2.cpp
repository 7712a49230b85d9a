// AVX2 + FMA gated activations (kernels/activation.h).
#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {
using A = VecAvx2;
#include "kernels/activation.inc"
}  // namespace

void gated_activation_avx2(GateAct act, float* gate, const float* up, int64_t n) {
  gated_activation_impl(act, gate, up, n);
}

}  // namespace optiq::kern
