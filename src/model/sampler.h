// Next-token sampling: greedy at temperature 0, else temperature, top-k and
// top-p (nucleus) sampling from a seeded generator, as llama.cpp's defaults.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace optiq {

struct SamplerOptions {
  float temperature = 0.8f;
  int top_k = 40;       // <= 0: no limit
  float top_p = 0.95f;  // >= 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions opt);
  int32_t sample(std::span<const float> logits);

 private:
  int32_t sample_all(std::span<const float> logits);

  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<float> weights_;  // sample_all's unnormalised probabilities
};

}  // namespace optiq
