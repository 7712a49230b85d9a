// Log-probabilities and KL divergence of one row of logits, in double: the
// statistics profiling and evaluation accumulate over thousands of rows, so
// they are taken in double whatever precision the logits came in.
#pragma once
#include <cstdint>

namespace optiq {

// out[i] = logits[i] - logsumexp(logits), for n values.
void log_softmax(const float* logits, int64_t n, double* out);
// KL(p || q) = sum_i p_i (log p_i - log q_i) from the log-probabilities of
// both (clamped at 0: rounding can leave a tiny negative sum).
double kl_divergence(const double* logp, const double* logq, int64_t n);

}  // namespace optiq
