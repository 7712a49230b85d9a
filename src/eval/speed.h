// Prefill and decode speed of a loaded model, measured as llama-bench does:
// prefill = one batch of `prompt_tokens`; decode = `gen_tokens` single-token
// steps from an empty cache, feeding back the greedy token. Medians over reps.
#pragma once
#include <vector>

#include "model/model.h"

namespace optiq {

struct SpeedOptions {
  int prompt_tokens = 512;  // 0: skip prefill
  int gen_tokens = 128;     // 0: skip decode
  int reps = 3;
};

struct SpeedResult {
  double prefill_tok_s = 0;  // medians
  double decode_tok_s = 0;
  std::vector<double> prefill_runs, decode_runs;
  size_t kv_cache_bytes = 0;
};

// Throws when the tokens exceed the model's context.
SpeedResult measure_speed(const Model& model, const SpeedOptions& opt = {});

// Peak resident set size of this process so far, in MB.
double peak_rss_mb();

}  // namespace optiq
