// The forward pass of the Llama-style decoder families (Llama, Mistral,
// Qwen2/3, Phi-3, Gemma 3) with a KV cache; family quirks come from
// ModelConfig fields. One call runs a batch of consecutive tokens (prefill)
// or a single token (decode); both share the same code, so batched and
// token-by-token logits agree.
//
// The Transformer says what to compute; every operation runs on a Backend
// (backend/backend.h) over the model's uploaded weights (DeviceWeights), a
// KVCache and an Activations scratch, all in that backend's memory.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/device_weights.h"
#include "model/model.h"
#include "model/module_kind.h"

namespace optiq {

// Sees the inputs of every matrix product (calibration statistics, profiling).
// A backend whose memory is not the host's copies the rows out only while an
// observer is attached.
class ActivationObserver {
 public:
  // q/k/v, o_proj, gate/up, down_proj and lm_head inputs; LayerIn is the
  // residual stream entering a layer (what profiling caches).
  using Site = ActivationSite;  // model/module_kind.h
  virtual ~ActivationObserver() = default;
  // x is n rows of `cols` floats (in host memory unless backend_rows());
  // layer is -1 for HeadIn.
  virtual void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) = 0;
  // True: observe() gets the rows where the backend keeps them, with no copy
  // to the host (the observer then works on them with backend operations).
  virtual bool backend_rows() const { return false; }
};

// The per-pass scratch of the forward pass, sized for the largest batch seen.
struct Activations {
  int64_t rows = 0;
  Buffer x;      // residual stream, n x dim
  Buffer xn;     // normed rows / matrix outputs, n x max(dim, q_dim)
  Buffer q, k, v, att;
  Buffer gate, up;
  Buffer fused;  // Phi-3's fused qkv / gate_up outputs
  Buffer logits; // backends without host memory: n x vocab before the copy out
};

class Transformer {
 public:
  // max_ctx <= 0: the model's context length, capped at 4096. This one
  // uploads the model's weights to the default backend itself.
  explicit Transformer(const Model& model, int max_ctx = 0);
  // Runs on weights uploaded already (shared by several Transformers, or
  // swapped by a WeightSwap between calls); `weights` must outlive it.
  explicit Transformer(const DeviceWeights& weights, int max_ctx = 0);

  // Runs `tokens` at positions pos()..pos()+n-1 and advances pos(). Writes the
  // logits of tokens [logits_from, n) to `logits` ((n - logits_from) x vocab,
  // host memory); logits_from == n computes none (pure prefill). Throws if
  // the context is full.
  void forward(std::span<const int32_t> tokens, float* logits, int64_t logits_from);
  // Rows per pass of a long forward() (without an observer) on the CPU;
  // other backends say theirs (Backend::prefill_rows).
  static constexpr int64_t kMicroBatch = 512;
  // Profiling: runs layers first_layer.. on `hidden` (n x dim, host memory),
  // the residual stream entering first_layer for tokens at positions 0..n-1
  // (pos() must be 0). Layers before first_layer are skipped; logits as in forward().
  void forward_from_layer(int first_layer, const float* hidden, int64_t n, float* logits, int64_t logits_from);
  // Layer-major passes (layer-wise profiling): runs layers [first_layer,
  // last_layer) on `hidden` (n x dim, host memory: the residual stream
  // entering first_layer of tokens at positions 0..n-1; pos() must be 0) and
  // writes the residual stream entering last_layer to `out` (host memory; may
  // be `hidden`). No head. The arithmetic of each layer is forward()'s (on
  // the CPU the same bits: its fused steps compose the plain ones).
  void forward_layers(int first_layer, int last_layer, const float* hidden, int64_t n, float* out);
  // The residual stream entering layer 0 of `tokens` (n x dim to `out`, host
  // memory): their embedding rows, scaled as forward() scales them.
  void embed_rows(std::span<const int32_t> tokens, float* out);
  // While held, no pass releases weight pages (see release_weights_): a
  // layer-major caller runs every window through a layer, then releases that
  // layer's pages once (release_pages; -1: the embedding and lm_head).
  void set_hold_pages(bool on) { hold_pages_ = on; }
  void release_pages(int layer) const;
  // Convenience: logits of the last token only.
  std::vector<float> forward_last(std::span<const int32_t> tokens);
  // Greedy decoding: runs one token as forward() does and returns the index
  // of its largest logit (optiq::argmax: the first of equal ones, -1 when
  // every logit is NaN). A GPU picks it on the device and copies out one
  // index instead of the vocabulary's logits (~0.5 MB a step at 128k).
  int32_t forward_greedy(int32_t token);

  // Logits left in the backend's memory (profiling computes its statistics
  // there): while on, forward() on a backend without host memory skips the
  // copy out and the call stays one pass; backend_logits() then points at
  // the last call's logits rows (on a host-memory backend, at the array
  // given to forward()).
  void set_logits_in_backend(bool on) { logits_in_backend_ = on; }
  float* backend_logits() const { return last_logits_; }

  void reset() { pos_ = 0; }
  void set_observer(ActivationObserver* o) { observer_ = o; }
  // Single-token steps on a backend that records them (CUDA graphs) are
  // recorded on the second step of a shape and replayed after that (default
  // on; OPTIQ_RECORD_STEPS=0 in the environment starts with it off).
  void set_record_steps(bool on) { record_steps_ = on; }
  int pos() const { return pos_; }
  int max_ctx() const { return max_ctx_; }
  const Model& model() const { return model_; }
  const DeviceWeights& weights() const { return weights_; }
  size_t kv_cache_bytes() const { return cache_.bytes(); }

 private:
  // q, k, v of the n normed rows in xn (projections, biases, q/k norm).
  void hint(const WeightHandle& w);
  void hint_qkv(const DeviceLayer& L);
  void hint_mlp(const DeviceLayer& L);
  void project_qkv(const DeviceLayer& L, int64_t n);
  // gate = act(gate(xn)) * up(xn).
  void mlp_hidden(const DeviceLayer& L, int64_t n);
  // Layers first_layer.. and the head on x (n rows); advances pos_. With
  // last_layer >= 0: layers [first_layer, last_layer) only, no head.
  void run_layers(int first_layer, int64_t n, float* logits, int64_t logits_from, int last_layer = -1);
  void init(int max_ctx);
  // One token without an observer on a backend that records steps.
  void decode_step(std::span<const int32_t> tokens, float* logits, int64_t logits_from);
  void ensure_scratch(int64_t n);
  void observe(int layer, ActivationSite site, const Buffer& b, int64_t n, int64_t cols);

  std::unique_ptr<DeviceWeights> own_weights_;  // when built from a Model
  const DeviceWeights& weights_;
  const Model& model_;
  Backend& backend_;
  ActivationObserver* observer_ = nullptr;
  bool logits_in_backend_ = false;
  float* last_logits_ = nullptr;
  int32_t* greedy_pick_ = nullptr;     // while forward_greedy runs: where the head's pick goes
  std::vector<float> greedy_logits_;   // forward_greedy on a host-memory backend
  int max_ctx_;
  int pos_ = 0;
  Buffer inv_freq_;        // rot_dim/2 RoPE frequencies (global layers)
  Buffer inv_freq_local_;  // of sliding-window layers with their own base
  float rope_mscale_ = 1.0f;  // longrope attention factor on cos/sin
  KVCache cache_;
  Activations act_;
  std::vector<float> host_rows_;  // observer copies (backends without host memory)
  // Layers' weight pages released after use in each pass (a model large next
  // to the memory, run from its mapped file; OPTIQ_RELEASE_WEIGHTS=0/1 overrides).
  bool release_weights_ = false;
  bool hold_pages_ = false;  // set_hold_pages
  std::vector<std::vector<const Linear*>> layer_linears_;
  std::vector<const Linear*> other_linears_;  // embedding, lm_head

  // What a recorded step depends on besides positions and tokens.
  struct StepKey {
    int64_t logits_from = -1;
    uint64_t weights_version = 0;
    int64_t scratch_rows = 0;
    const float* logits = nullptr;  // the device logits buffer (grows with other calls)
    bool greedy = false;            // the output is the pick, not the logits
    bool operator==(const StepKey&) const = default;
  };
  bool record_steps_ = true;
  StepKey warm_key_, step_key_;  // last step run directly; the recorded one
  std::unique_ptr<RecordedStep> step_;
};

// Rotary frequencies for a config (handles llama3/linear scaling and
// file-given factors); `ctx` picks longrope's short or long factors (long
// when the context exceeds the original one, as HF and llama.cpp do).
std::vector<float> rope_inv_freq(const ModelConfig& c, int ctx = 0);
// Frequencies of sliding-window layers that have their own base (Gemma 3): no scaling.
std::vector<float> rope_inv_freq_local(const ModelConfig& c);

}  // namespace optiq
