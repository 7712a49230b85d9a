#include "eval/reference_scores.h"

#include <algorithm>
#include <optional>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "kernels/elementwise.h"
#include "model/transformer.h"

namespace optiq {

ReferenceScores ReferenceScores::compute(const Model& ref, std::span<const int32_t> tokens, int ctx, int chunks,
                                         int64_t f32_limit, bool progress) {
  const EvalWindows w = eval_windows(ref, tokens, ctx, chunks);
  ReferenceScores s;
  s.ctx_ = ctx;
  s.chunks_ = w.chunks;
  s.vocab_ = ref.config.vocab_size;
  const int64_t vocab = s.vocab_;
  const int64_t rows = static_cast<int64_t>(w.chunks) * (w.n_out - 1);
  const bool f32 = rows * vocab * 4 <= f32_limit;
  if (f32) s.logp_f32_.resize(rows * vocab);
  else s.logp_bf16_.resize(rows * vocab);
  s.argmax_.resize(rows);
  s.nll_.resize(rows);

  Transformer tf(ref, ctx);
  std::vector<float> logits(w.n_out * vocab);
  std::vector<int32_t> window;
  std::optional<Progress> bar;
  if (progress) bar.emplace("reference", w.chunks, "chunks");
  int64_t r = 0;
  for (int c = 0; c < w.chunks; ++c) {
    w.fill(tokens, c, window);
    tf.reset();
    tf.forward(window, logits.data(), w.first);
    // The window's rows in parallel (each its own slot: the same values for
    // any thread count).
    parallel_for_range(w.n_out - 1, 1, [&](int64_t j0, int64_t j1) {
      std::vector<double> logp;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t rr = r + j;
        const float* row = &logits[j * vocab];
        log_softmax(row, vocab, logp);
        s.argmax_[rr] = static_cast<int32_t>(optiq::argmax(row, vocab));
        s.nll_[rr] = -logp[window[w.first + j + 1]];
        if (f32) std::copy(logp.begin(), logp.end(), s.logp_f32_.begin() + rr * vocab);
        else
          for (int64_t v = 0; v < vocab; ++v) s.logp_bf16_[rr * vocab + v] = f32_to_bf16(static_cast<float>(logp[v]));
      }
    });
    r += w.n_out - 1;
    if (bar) bar->update(c + 1);
  }
  if (bar) bar->finish();
  return s;
}

void ReferenceScores::logp(int64_t r, std::vector<double>& out) const {
  check(r >= 0 && r < rows(), "reference row {} out of range ({} rows)", r, rows());
  out.resize(vocab_);
  const int64_t off = r * vocab_;
  if (!logp_f32_.empty())
    for (int v = 0; v < vocab_; ++v) out[v] = logp_f32_[off + v];
  else
    for (int v = 0; v < vocab_; ++v) out[v] = bf16_to_f32(logp_bf16_[off + v]);
}

}  // namespace optiq
