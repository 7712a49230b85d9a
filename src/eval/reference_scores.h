// The reference model's side of an evaluation, computed once: for every
// scored position of every window (the protocol of eval/perplexity.h), its
// log-probabilities over the vocabulary, its argmax and the NLL of the target.
// `optiq compare` and the bench scripts evaluate many quantized variants of
// one model on the same text; keeping these halves their cost.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/model.h"

namespace optiq {

class ReferenceScores {
 public:
  // Runs `ref` over `chunks` windows (-1: all) of `tokens`. Log-probabilities
  // are kept in fp32 when they take at most `f32_limit` bytes, else in bf16
  // (KL changes by < 1e-3 relative; see tests/eval).
  static ReferenceScores compute(const Model& ref, std::span<const int32_t> tokens, int ctx, int chunks,
                                 int64_t f32_limit = int64_t{2} << 30, bool progress = true);

  int ctx() const { return ctx_; }
  int chunks() const { return chunks_; }
  int vocab() const { return vocab_; }
  int64_t rows() const { return static_cast<int64_t>(argmax_.size()); }
  // Row r = scored position r in window order.
  void logp(int64_t r, std::vector<double>& out) const;
  int32_t argmax(int64_t r) const { return argmax_[r]; }
  double nll(int64_t r) const { return nll_[r]; }
  size_t bytes() const { return logp_f32_.size() * 4 + logp_bf16_.size() * 2; }

 private:
  int ctx_ = 0, chunks_ = 0, vocab_ = 0;
  std::vector<float> logp_f32_;
  std::vector<uint16_t> logp_bf16_;
  std::vector<int32_t> argmax_;
  std::vector<double> nll_;
};

}  // namespace optiq
