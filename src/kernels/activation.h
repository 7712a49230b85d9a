// Gated MLP activations: gate[i] = act(gate[i]) * up[i] over n values, for
// SwiGLU (silu) and GeGLU (tanh-approximated GELU). Written through exp:
//   silu(x) = x / (1 + e^-x),  gelu_tanh(x) = x / (1 + e^(-2u)),
//   u = sqrt(2/pi) (x + 0.044715 x^3)   (0.5 x (1 + tanh u) rearranged),
// so the AVX2/AVX-512 paths share one body (activation.inc) and exp; the scalar path uses
// std::exp. Large n runs in parallel (core/parallel.h).
#pragma once
#include <cstdint>

namespace optiq {

enum class GateAct { Silu, GeluTanh };

void gated_activation(GateAct act, float* gate, const float* up, int64_t n);

namespace kern {
void gated_activation_scalar(GateAct act, float* gate, const float* up, int64_t n);
void gated_activation_avx2(GateAct act, float* gate, const float* up, int64_t n);
void gated_activation_avx512(GateAct act, float* gate, const float* up, int64_t n);
}  // namespace kern

}  // namespace optiq
