#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kernels/elementwise.h"

namespace optiq {

Sampler::Sampler(SamplerOptions opt) : opt_(opt), rng_(opt.seed) {}

namespace {

using Candidate = std::pair<float, int32_t>;  // (logit, token)

// a ranks below b: a smaller value, or an equal one later in the vocabulary.
bool ranks_below(const Candidate& a, const Candidate& b) {
  return a.first < b.first || (a.first == b.first && a.second > b.second);
}

// The k largest logits (NaNs skipped), best first, equal values by index.
// One pass with the k best so far in a heap whose root is the worst of them;
// a block of values whose maximum does not beat that root is skipped whole
// (after the first few blocks nearly all are: a 128k vocabulary in ~20 us,
// where sorting candidates for every token took ~135 us).
void top_k(std::span<const float> logits, int64_t k, std::vector<Candidate>& out) {
  out.clear();
  const int64_t n = static_cast<int64_t>(logits.size());
  const float* x = logits.data();
  // a before b: a ranks higher. As a heap's order it puts the worst of the kept ones at the front.
  const auto better = [](const Candidate& a, const Candidate& b) { return ranks_below(b, a); };
  if (k >= n) {  // every token: a plain sort
    for (int64_t i = 0; i < n; ++i)
      if (!std::isnan(x[i])) out.emplace_back(x[i], static_cast<int32_t>(i));
    std::sort(out.begin(), out.end(), better);
    return;
  }
  constexpr int64_t kBlock = 64;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    if (static_cast<int64_t>(out.size()) == k) {
      float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t i = b0; i < b1; ++i) m = x[i] > m ? x[i] : m;  // NaNs never win
      if (!(m > out.front().first)) continue;  // an equal value later in the vocabulary ranks below
    }
    for (int64_t i = b0; i < b1; ++i) {
      const float v = x[i];
      if (std::isnan(v)) continue;
      if (static_cast<int64_t>(out.size()) < k) {
        out.emplace_back(v, static_cast<int32_t>(i));
        std::push_heap(out.begin(), out.end(), better);
      } else if (v > out.front().first) {
        std::pop_heap(out.begin(), out.end(), better);
        out.back() = {v, static_cast<int32_t>(i)};
        std::push_heap(out.begin(), out.end(), better);
      }
    }
  }
  std::sort(out.begin(), out.end(), better);
}

}  // namespace

int32_t Sampler::sample(std::span<const float> logits) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (opt_.temperature <= 0.0f) {
    const int64_t best = argmax(logits.data(), n);
    check(best >= 0, "sampler: every one of the {} logits is NaN (broken weights or inputs)", n);
    return static_cast<int32_t>(best);
  }
  const int64_t k = opt_.top_k > 0 ? std::min<int64_t>(opt_.top_k, n) : n;
  if (k >= n && opt_.top_p >= 1.0f) return sample_all(logits);
  top_k(logits, k, cand_);
  check(!cand_.empty(), "sampler: every one of the {} logits is NaN (broken weights or inputs)", n);
  for (Candidate& c : cand_) c.first /= opt_.temperature;  // the order stays: temperature > 0
  const float maxv = cand_[0].first;
  double sum = 0;
  for (auto& c : cand_) sum += (c.first = std::exp(c.first - maxv));
  if (opt_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < cand_.size()) {
      cum += cand_[keep++].first / sum;
      if (cum >= opt_.top_p) break;
    }
    cand_.resize(keep);
    sum = 0;
    for (auto& c : cand_) sum += c.first;
  }
  double r = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  for (auto& c : cand_) {
    r -= c.first;
    if (r <= 0) return c.second;
  }
  return cand_.back().second;
}

// The whole distribution (no top-k, no top-p: self-generated calibration
// text): the draw walks the tokens in vocabulary order, so nothing is sorted
// (sorting 49k candidates a token took ~3 ms, as long as SmolLM2's forward
// step on 2 cores; 19 ms at Gemma 3's 262k).
int32_t Sampler::sample_all(std::span<const float> logits) {
  const int64_t n = static_cast<int64_t>(logits.size());
  const int64_t best = argmax(logits.data(), n);
  check(best >= 0, "sampler: every one of the {} logits is NaN (broken weights or inputs)", n);
  const float inv_t = 1.0f / opt_.temperature;
  const float maxv = logits[best] * inv_t;
  weights_.resize(static_cast<size_t>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = logits[i];
    const float w = std::isnan(v) ? 0.0f : std::exp(v * inv_t - maxv);
    weights_[i] = w;
    sum += w;
  }
  double r = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  for (int64_t i = 0; i < n; ++i) {
    if (weights_[i] == 0.0f) continue;
    r -= weights_[i];
    if (r <= 0) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(best);  // rounding left a crumb of r: the likeliest token
}

}  // namespace optiq
