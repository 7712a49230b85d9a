#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/elementwise.h"
namespace optiq {

Sampler::Sampler(SamplerOptions opt) : opt_(opt), rng_(opt.seed) {}

int32_t Sampler::sample(std::span<const float> logits) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (opt_.temperature <= 0.0f) {
    const int64_t best = argmax(logits.data(), n);
    check(best >= 0, "sampler: every one of the {} logits is NaN (broken weights or inputs)", n);
    return static_cast<int32_t>(best);
  }
  cand_.resize(n);
  for (int64_t i = 0; i < n; ++i) cand_[i] = {logits[i] / opt_.temperature, static_cast<int32_t>(i)};
  int64_t k = opt_.top_k > 0 ? std::min<int64_t>(opt_.top_k, n) : n;
  std::partial_sort(cand_.begin(), cand_.begin() + k, cand_.end(), [](auto& a, auto& b) { return a.first > b.first; });
  cand_.resize(k);
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

}  // namespace optiq
