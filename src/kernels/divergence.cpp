#include "kernels/divergence.h"

#include <algorithm>
#include <cmath>

namespace optiq {

void log_softmax(const float* logits, int64_t n, double* out) {
  double maxv = -INFINITY;
  for (int64_t i = 0; i < n; ++i) maxv = std::max(maxv, static_cast<double>(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - maxv);
  const double lse = maxv + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[i] = logits[i] - lse;
}

double kl_divergence(const double* logp, const double* logq, int64_t n) {
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) kl += std::exp(logp[i]) * (logp[i] - logq[i]);
  return std::max(kl, 0.0);
}

}  // namespace optiq
