#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "eval/reference_scores.h"
#include "kernels/divergence.h"
#include "kernels/elementwise.h"
#include "model/transformer.h"

namespace optiq {

void log_softmax(const float* logits, int64_t n, std::vector<double>& out) {
  out.resize(n);
  log_softmax(logits, n, out.data());
}

double kl_divergence(const std::vector<double>& logp, const std::vector<double>& logq) {
  return kl_divergence(logp.data(), logq.data(), static_cast<int64_t>(logp.size()));
}

namespace {

// One scored position: its NLL and, against a reference, KL, the reference's
// NLL and whether the two argmaxes agree.
struct RowScore {
  double nll = 0, kl = 0, ref_nll = 0;
  bool agree = false;
};

}  // namespace

EvalWindows eval_windows(const Model& model, std::span<const int32_t> tokens, int ctx, int chunks) {
  check(ctx >= 8, "an evaluation window of {} tokens is too small (at least 8)", ctx);
  check(ctx <= model.config.max_seq || model.config.max_seq <= 0, "an evaluation window of {} tokens exceeds the model's context length {}",
        ctx, model.config.max_seq);
  const int64_t available = static_cast<int64_t>(tokens.size()) / ctx;
  check(available > 0, "the text has {} tokens, fewer than one window of {} tokens", tokens.size(), ctx);
  EvalWindows w;
  w.ctx = ctx;
  w.chunks = static_cast<int>(chunks > 0 ? std::min<int64_t>(chunks, available) : available);
  w.first = ctx / 2;
  w.n_out = ctx - w.first;
  // llama.cpp puts BOS first only for models whose tokenizer adds one.
  w.bos = model.tokenizer->adds_bos() ? model.tokenizer->bos() : -1;
  return w;
}

void EvalWindows::fill(std::span<const int32_t> tokens, int chunk, std::vector<int32_t>& window) const {
  window.assign(tokens.begin() + static_cast<int64_t>(chunk) * ctx, tokens.begin() + static_cast<int64_t>(chunk + 1) * ctx);
  if (bos >= 0) window[0] = bos;
}

PerplexityResult evaluate_perplexity(const Model& model, std::span<const int32_t> tokens, const PerplexityOptions& opt) {
  const DeviceWeights weights(model, default_backend());
  return evaluate_perplexity(weights, tokens, opt);
}

PerplexityResult evaluate_perplexity(const DeviceWeights& weights, std::span<const int32_t> tokens,
                                     const PerplexityOptions& opt) {
  const Model& model = weights.model();
  const EvalWindows w = eval_windows(model, tokens, opt.ctx, opt.chunks);
  const int ctx = w.ctx, chunks = w.chunks, first = w.first;
  const int64_t n_out = w.n_out;
  const int vocab = model.config.vocab_size;
  if (opt.ref) {
    check(opt.ref->config.vocab_size == vocab, "the reference model's vocabulary ({}) differs from the model's ({})",
          opt.ref->config.vocab_size, vocab);
  }
  const ReferenceScores* rs = opt.ref_scores;
  if (rs) {
    check(!opt.ref, "evaluate_perplexity: give a reference model or reference scores, not both");
    check(rs->vocab() == vocab && rs->ctx() == ctx && rs->chunks() == chunks,
          "reference scores were computed for vocab {}, ctx {}, {} windows; this evaluation has {}, {}, {}",
          rs->vocab(), rs->ctx(), rs->chunks(), vocab, ctx, chunks);
  }
  const bool has_ref = opt.ref || rs;

  Transformer tf(weights, ctx);
  std::unique_ptr<Transformer> ref_tf;
  if (opt.ref) ref_tf = std::make_unique<Transformer>(*opt.ref, ctx);
  std::vector<float> logits(n_out * vocab), ref_logits(opt.ref ? n_out * vocab : 0);
  std::vector<double> nlls, klds;
  int64_t agree = 0;
  double ref_nll = 0;

  PerplexityResult r;
  r.ctx = ctx;
  r.chunks = chunks;
  r.has_ref = has_ref;
  auto t0 = std::chrono::steady_clock::now();
  std::optional<Progress> progress;
  if (opt.progress) progress.emplace("eval", chunks, "chunks");
  std::vector<int32_t> window;
  int64_t row = 0;
  for (int c = 0; c < chunks; ++c) {
    w.fill(tokens, c, window);
    const size_t window_first_kl = klds.size();
    tf.reset();
    tf.forward(window, logits.data(), first);
    if (ref_tf) {
      ref_tf->reset();
      ref_tf->forward(window, ref_logits.data(), first);
    }
    // Logit row j predicts window[first + j + 1]; the last row predicts past
    // the window. Rows are scored in parallel (a 262k vocabulary's softmaxes
    // in double are most of a GPU evaluation's time) and summed in order, so
    // the results do not depend on the thread count.
    const int64_t scored = n_out - 1, row0 = row;
    std::vector<RowScore> rows(static_cast<size_t>(std::max<int64_t>(scored, 0)));
    parallel_for_range(scored, 1, [&](int64_t j0, int64_t j1) {
      std::vector<double> lq, lp;
      for (int64_t j = j0; j < j1; ++j) {
        const int32_t target = window[first + j + 1];
        RowScore& s = rows[j];
        log_softmax(&logits[j * vocab], vocab, lq);
        s.nll = -lq[target];
        if (ref_tf) {
          log_softmax(&ref_logits[j * vocab], vocab, lp);
          s.kl = kl_divergence(lp, lq);
          s.ref_nll = -lp[target];
          s.agree = argmax(&logits[j * vocab], vocab) == argmax(&ref_logits[j * vocab], vocab);
        } else if (rs) {
          rs->logp(row0 + j, lp);
          s.kl = kl_divergence(lp, lq);
          s.ref_nll = rs->nll(row0 + j);
          s.agree = argmax(&logits[j * vocab], vocab) == rs->argmax(row0 + j);
        }
      }
    });
    for (const RowScore& s : rows) {
      nlls.push_back(s.nll);
      if (has_ref) {
        klds.push_back(s.kl);
        ref_nll += s.ref_nll;
        agree += s.agree;
      }
    }
    row += static_cast<int64_t>(rows.size());
    if (has_ref && klds.size() > window_first_kl) {
      double sum = 0;
      for (size_t i = window_first_kl; i < klds.size(); ++i) sum += klds[i];
      r.window_kld.push_back(sum / static_cast<double>(klds.size() - window_first_kl));
    }
    double mean = 0;
    for (double v : nlls) mean += v;
    mean /= nlls.size();
    if (progress) progress->update(c + 1, fmt::format("ppl {:.4f}", std::exp(mean)));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens = static_cast<int64_t>(nlls.size());
  auto mean_stderr = [](const std::vector<double>& v, double& mean, double& se) {
    mean = 0;
    for (double x : v) mean += x;
    mean /= v.size();
    double var = 0;
    for (double x : v) var += (x - mean) * (x - mean);
    se = v.size() > 1 ? std::sqrt(var / (v.size() - 1) / v.size()) : 0.0;
  };
  mean_stderr(nlls, r.nll, r.nll_stderr);
  r.ppl = std::exp(r.nll);
  r.ppl_stderr = r.ppl * r.nll_stderr;
  if (has_ref) {
    mean_stderr(klds, r.kld, r.kld_stderr);
    std::vector<double> sorted = klds;
    std::sort(sorted.begin(), sorted.end());
    r.kld_p99 = sorted[std::min(sorted.size() - 1, static_cast<size_t>(0.99 * sorted.size()))];
    r.top1 = static_cast<double>(agree) / r.tokens;
    r.ref_ppl = std::exp(ref_nll / r.tokens);
  }
  if (progress) progress->finish(fmt::format("ppl {:.4f}", r.ppl));
  return r;
}

}  // namespace optiq
