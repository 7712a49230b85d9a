// The forward pass of the Llama-style decoder families (Llama, Mistral,
// Qwen2/3, Phi-3, Gemma 3) with a KV cache; family quirks come from
// ModelConfig fields. One call runs a batch
// of consecutive tokens (prefill) or a single token (decode); both share the
// same code, so batched and token-by-token logits agree.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/module_kind.h"

namespace optiq {

// Sees the inputs of every matrix product (calibration statistics, profiling).
class ActivationObserver {
 public:
  // q/k/v, o_proj, gate/up, down_proj and lm_head inputs; LayerIn is the
  // residual stream entering a layer (what profiling caches).
  using Site = ActivationSite;  // model/module_kind.h
  virtual ~ActivationObserver() = default;
  // x is n rows of `cols` floats; layer is -1 for HeadIn.
  virtual void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) = 0;
};

class Transformer {
 public:
  // max_ctx <= 0: the model's context length, capped at 4096.
  explicit Transformer(const Model& model, int max_ctx = 0);

  // Runs `tokens` at positions pos()..pos()+n-1 and advances pos(). Writes the
  // logits of tokens [logits_from, n) to `logits` ((n - logits_from) x vocab);
  // logits_from == n computes none (pure prefill). Throws if the context is full.
  void forward(std::span<const int32_t> tokens, float* logits, int64_t logits_from);
  // Rows per pass of a long forward() (without an observer).
  static constexpr int64_t kMicroBatch = 512;
  // Profiling: runs layers first_layer.. on `hidden` (n x dim), the residual
  // stream entering first_layer for tokens at positions 0..n-1 (pos() must be
  // 0). Layers before first_layer are skipped; logits as in forward().
  void forward_from_layer(int first_layer, const float* hidden, int64_t n, float* logits, int64_t logits_from);
  // Convenience: logits of the last token only.
  std::vector<float> forward_last(std::span<const int32_t> tokens);

  void reset() { pos_ = 0; }
  void set_observer(ActivationObserver* o) { observer_ = o; }
  int pos() const { return pos_; }
  int max_ctx() const { return max_ctx_; }
  const Model& model() const { return model_; }
  size_t kv_cache_bytes() const { return (k_cache_.size() + v_cache_.size()) * sizeof(float); }

 private:
  void attention(int layer, int64_t n, const float* q, float* out);
  // q_, k_, v_ of the n normed rows in xn_ (projections, biases, q/k norm).
  void project_qkv(const LayerWeights& L, int64_t n);
  // gate_ = act(gate(xn_)) * up(xn_).
  void mlp_hidden(const LayerWeights& L, int64_t n);
  // Layers first_layer.. and the head on x_ (n rows); advances pos_.
  void run_layers(int first_layer, int64_t n, float* logits, int64_t logits_from);
  void ensure_scratch(int64_t n);

  const Model& model_;
  ActivationObserver* observer_ = nullptr;
  int max_ctx_;
  int pos_ = 0;
  std::vector<float> inv_freq_;             // rot_dim/2 RoPE frequencies (global layers)
  std::vector<float> inv_freq_local_;       // of sliding-window layers with their own base
  float rope_mscale_ = 1.0f;                // longrope attention factor on cos/sin
  std::vector<float> k_cache_, v_cache_;    // [layer][max_ctx][kv_dim]
  // Scratch sized for the largest batch seen so far.
  int64_t scratch_n_ = 0;
  std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, fused_;
};

// Rotary frequencies for a config (handles llama3/linear scaling and
// file-given factors); `ctx` picks longrope's short or long factors (long
// when the context exceeds the original one, as HF and llama.cpp do).
std::vector<float> rope_inv_freq(const ModelConfig& c, int ctx = 0);
// Frequencies of sliding-window layers that have their own base (Gemma 3): no scaling.
std::vector<float> rope_inv_freq_local(const ModelConfig& c);

}  // namespace optiq
