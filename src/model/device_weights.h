// A model's weights uploaded to a backend: one handle per weight matrix and a
// buffer per norm and bias vector, what the forward pass reads. Building one
// on the CPU backend copies nothing (handles borrow the Model's storage); a
// GPU backend copies each matrix once. The Model must outlive it.
//
// Profiling and measured plan selection try other versions of one matrix
// through a WeightSwap: it uploads the replacement (Backend::upload_for_passes:
// a GPU may keep an fp32 matrix in the precision its batched products use),
// points the module at it and restores the original when it goes out of
// scope (also on exceptions).
// The Model itself is never changed.
#pragma once
#include <array>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"

namespace optiq {

struct DeviceLayer {
  // Per-layer matrices by ModuleKind (null where the family has none, e.g.
  // q/k/v of Phi-3, which keeps them fused).
  std::array<std::unique_ptr<WeightHandle>, kModuleKindCount> matrices;
  Buffer attn_norm, ffn_norm, post_attn_norm, post_ffn_norm, q_norm, k_norm;
  Buffer bq, bk, bv;  // empty when the family has no biases
  const WeightHandle& matrix(ModuleKind k) const;
};

class DeviceWeights {
 public:
  DeviceWeights(const Model& model, Backend& backend);
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  const Model& model() const { return model_; }
  Backend& backend() const { return backend_; }
  const WeightHandle& embed() const { return *embed_; }
  // lm_head, or the embedding when tied.
  const WeightHandle& output() const { return lm_head_ ? *lm_head_ : *embed_; }
  const DeviceLayer& layer(int l) const { return layers_[l]; }
  const Buffer& final_norm() const { return final_norm_; }
  // The handle module `m` multiplies by now.
  const WeightHandle& module(const ModuleInfo& m) const;

  // Points module `m` at `w` and returns the handle it had (WeightSwap's step).
  std::unique_ptr<WeightHandle> exchange(const ModuleInfo& m, std::unique_ptr<WeightHandle> w);
  // Changes with every exchange: a recorded step (backend.h) is only valid
  // for the weights it was recorded with.
  uint64_t version() const { return version_; }

 private:
  std::unique_ptr<WeightHandle>& slot(const ModuleInfo& m);
  const Model& model_;
  Backend& backend_;
  std::unique_ptr<WeightHandle> embed_, lm_head_;
  std::vector<DeviceLayer> layers_;
  Buffer final_norm_;
  uint64_t version_ = 0;
};

// Module `m` of `weights` multiplies by `replacement` while this lives.
class WeightSwap {
 public:
  WeightSwap(DeviceWeights& weights, const ModuleInfo& m, Linear replacement);
  ~WeightSwap();
  WeightSwap(WeightSwap&& o) noexcept;
  WeightSwap(const WeightSwap&) = delete;
  WeightSwap& operator=(const WeightSwap&) = delete;
  WeightSwap& operator=(WeightSwap&&) = delete;

 private:
  DeviceWeights* weights_;
  ModuleInfo module_;
  // The replacement's storage: the uploaded handle may borrow it.
  std::unique_ptr<Linear> replacement_;
  std::unique_ptr<WeightHandle> saved_;
};

}  // namespace optiq
