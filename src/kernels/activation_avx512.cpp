// AVX-512F gated activations (kernels/activation.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {
using A = VecAvx512;
#include "kernels/activation.inc"
}  // namespace

void gated_activation_avx512(GateAct act, float* gate, const float* up, int64_t n) {
  gated_activation_impl(act, gate, up, n);
}

}  // namespace optiq::kern
