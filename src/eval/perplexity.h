// Perplexity by llama.cpp's protocol, plus KL divergence and top-1 agreement
// against a reference model over exactly the same scored tokens.
//
// Protocol (as llama.cpp's perplexity tool): tokenize the whole text once with
// BOS; cut it into non-overlapping windows of `ctx` tokens; overwrite the first
// token of every window with BOS (for models whose tokenizer adds BOS); run each window from an empty KV cache; score
// the predictions of tokens ctx/2+1 .. ctx-1 of the window (the second half),
// i.e. ctx - ctx/2 - 1 tokens per window.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/device_weights.h"
#include "model/model.h"

namespace optiq {

class ReferenceScores;

struct PerplexityOptions {
  int ctx = 512;
  int chunks = -1;               // -1: every full window in the text
  const Model* ref = nullptr;    // when set: KL(ref || model) and top-1 agreement
  // Instead of `ref`: the reference's scores, computed once (eval/reference_scores.h)
  // with the same ctx and chunks.
  const ReferenceScores* ref_scores = nullptr;
  bool progress = true;
};

// The windows of the protocol above for a text: which tokens each holds and
// which of its positions are scored.
struct EvalWindows {
  int ctx = 0;
  int chunks = 0;
  int first = 0;      // logits are computed for positions first .. ctx-1
  int64_t n_out = 0;  // ctx - first; rows 0 .. n_out-2 are scored
  int bos = -1;       // overwrites each window's first token (-1: none)
  void fill(std::span<const int32_t> tokens, int chunk, std::vector<int32_t>& window) const;
};
// Throws for a context below 8, above the model's, or longer than the text.
EvalWindows eval_windows(const Model& model, std::span<const int32_t> tokens, int ctx, int chunks);

struct PerplexityResult {
  int ctx = 0;
  int chunks = 0;
  int64_t tokens = 0;         // scored tokens
  double nll = 0;             // mean negative log-likelihood (nats)
  double nll_stderr = 0;
  double ppl = 0;             // exp(nll)
  double ppl_stderr = 0;      // delta method
  bool has_ref = false;
  double kld = 0;             // mean KL(ref || model), nats per token
  double kld_stderr = 0;
  double kld_p99 = 0;
  std::vector<double> window_kld;  // mean KL of each window's scored tokens (paired comparisons)
  double top1 = 0;            // fraction of tokens where argmax agrees
  double ref_ppl = 0;
  double seconds = 0;
};

PerplexityResult evaluate_perplexity(const Model& model, std::span<const int32_t> tokens, const PerplexityOptions& opt);
// The same on weights uploaded already (e.g. with matrices swapped by a WeightSwap).
PerplexityResult evaluate_perplexity(const DeviceWeights& weights, std::span<const int32_t> tokens,
                                     const PerplexityOptions& opt);

// log-softmax helpers shared with profiling.
void log_softmax(const float* logits, int64_t n, std::vector<double>& out);
// KL(p || q) from log-probabilities.
double kl_divergence(const std::vector<double>& logp, const std::vector<double>& logq);

}  // namespace optiq
