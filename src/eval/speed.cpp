#include "eval/speed.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "model/transformer.h"

namespace optiq {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

SpeedResult measure_speed(const Model& m, const SpeedOptions& o) {
  check(o.prompt_tokens >= 0 && o.gen_tokens >= 0 && o.reps > 0 && o.prompt_tokens + o.gen_tokens > 0,
        "speed: prompt and generated token counts must be >= 0 (not both 0) and reps positive");
  const int ctx = std::max(o.prompt_tokens, o.gen_tokens);
  check(ctx <= m.config.max_seq, "{} tokens exceed the model's context of {}", ctx, m.config.max_seq);
  Transformer tf(m, ctx);
  // Deterministic, non-degenerate token ids spread over the vocabulary.
  std::vector<int32_t> prompt(std::max(o.prompt_tokens, 1));
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % m.config.vocab_size);
  std::vector<float> logits(m.config.vocab_size);
  SpeedResult r;
  for (int rep = 0; rep < o.reps; ++rep) {
    if (o.prompt_tokens > 0) {
      tf.reset();
      const auto t0 = std::chrono::steady_clock::now();
      tf.forward(prompt, logits.data(), o.prompt_tokens - 1);
      r.prefill_runs.push_back(o.prompt_tokens / seconds_since(t0));
    }
    if (o.gen_tokens > 0) {
      tf.reset();
      const auto t0 = std::chrono::steady_clock::now();
      int32_t tok = prompt[0];
      for (int i = 0; i < o.gen_tokens; ++i) tok = std::max(tf.forward_greedy(tok), 0);
      r.decode_runs.push_back(o.gen_tokens / seconds_since(t0));
    }
  }
  r.prefill_tok_s = median(r.prefill_runs);
  r.decode_tok_s = median(r.decode_runs);
  r.kv_cache_bytes = tf.kv_cache_bytes();
  return r;
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

}  // namespace optiq
