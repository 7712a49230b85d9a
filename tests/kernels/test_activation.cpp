// Gated activations (kernels/activation.h) on every ISA against double
// precision silu / tanh-GELU, over odd lengths (vector tails) and values from
// deep in both saturated ranges.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/activation.h"
#include "kernels/matmul.h"
#include "isa_guard.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::IsaGuard;

double reference(GateAct act, double x) {
  if (act == GateAct::Silu) return x / (1.0 + std::exp(-x));
  // 0.5 x (1 + tanh u), written so that it keeps its precision for x << 0.
  return x / (1.0 + std::exp(-2.0 * 0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

}  // namespace

TEST(GatedActivation, MatchesReferenceAllIsas) {
  IsaGuard guard;
  for (GateAct act : {GateAct::Silu, GateAct::GeluTanh})
    for (int64_t n : {1, 7, 15, 16, 17, 33, 100, 20000}) {  // 20000: the parallel split
      auto gate = test::random_floats(n, 11 + static_cast<uint32_t>(n), 4.0f);
      const auto up = test::random_floats(n, 12 + static_cast<uint32_t>(n));
      if (n > 2) gate[0] = -95.0f, gate[1] = 95.0f, gate[2] = -12.0f;  // saturated (exp clamped)
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
        if (!isa_supported(isa)) continue;
        set_isa(isa);
        std::vector<float> out = gate;
        gated_activation(act, out.data(), up.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          const double x = gate[i], want = reference(act, x) * up[i];
          // exp(-z) inherits the rounding of its fp32 argument z: relative error ~ ulp * |z|.
          const double z = act == GateAct::Silu ? x : 1.5957691216057308 * (x + 0.044715 * x * x * x);
          ASSERT_NEAR(out[i], want, (4e-7 + 2.5e-7 * std::abs(z)) * std::abs(want) + 1e-30)
              << isa_name(isa) << " act " << static_cast<int>(act) << " n " << n << " x " << gate[i];
        }
      }
    }
}

}  // namespace optiq
