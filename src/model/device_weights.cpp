#include "model/device_weights.h"

#include <utility>

#include "core/error.h"

namespace optiq {

namespace {

std::unique_ptr<WeightHandle> upload_linear(Backend& b, const Linear& l) {
  return l.empty() ? nullptr : b.upload(l.view());
}

Buffer upload_vector(Backend& b, const std::vector<float>& v) {
  return v.empty() ? Buffer{} : b.upload(v.data(), static_cast<int64_t>(v.size()));
}

}  // namespace

const WeightHandle& DeviceLayer::matrix(ModuleKind k) const { return *matrices[static_cast<size_t>(k)]; }

const WeightHandle& DeviceWeights::module(const ModuleInfo& m) const {
  auto& s = const_cast<DeviceWeights*>(this)->slot(m);  // slot() only finds; nothing changes
  check(s != nullptr, "{}: no weights uploaded for it", m.path);
  return *s;
}

DeviceWeights::DeviceWeights(const Model& model, Backend& backend) : model_(model), backend_(backend) {
  const ModelWeights& w = model.weights;
  check(!w.embed.empty(), "{}: the model has no weights loaded", model.path);
  embed_ = upload_linear(backend, w.embed);
  lm_head_ = upload_linear(backend, w.lm_head);
  final_norm_ = upload_vector(backend, w.final_norm);
  layers_.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    DeviceLayer& D = layers_[l];
    for (const ModuleKindInfo& k : module_kinds())
      if (k.per_layer) D.matrices[static_cast<size_t>(k.kind)] = upload_linear(backend, L.*k.member);
    D.attn_norm = upload_vector(backend, L.attn_norm);
    D.ffn_norm = upload_vector(backend, L.ffn_norm);
    D.post_attn_norm = upload_vector(backend, L.post_attn_norm);
    D.post_ffn_norm = upload_vector(backend, L.post_ffn_norm);
    D.q_norm = upload_vector(backend, L.q_norm);
    D.k_norm = upload_vector(backend, L.k_norm);
    D.bq = upload_vector(backend, L.bq);
    D.bk = upload_vector(backend, L.bk);
    D.bv = upload_vector(backend, L.bv);
  }
}

std::unique_ptr<WeightHandle>& DeviceWeights::slot(const ModuleInfo& m) {
  if (m.kind == ModuleKind::Embed) return embed_;
  if (m.kind == ModuleKind::LmHead) return lm_head_;
  check(m.layer >= 0 && m.layer < static_cast<int>(layers_.size()), "module {}: no layer {}", m.path, m.layer);
  return layers_[m.layer].matrices[static_cast<size_t>(m.kind)];
}

std::unique_ptr<WeightHandle> DeviceWeights::exchange(const ModuleInfo& m, std::unique_ptr<WeightHandle> w) {
  std::unique_ptr<WeightHandle>& s = slot(m);
  check(s != nullptr, "{}: module {} is not in this model", model_.path, m.path);
  check(w && w->rows() == s->rows() && w->cols() == s->cols(), "{}: a {}x{} replacement for {} ({}x{})", model_.path,
        w ? w->rows() : 0, w ? w->cols() : 0, m.path, s->rows(), s->cols());
  std::swap(s, w);
  ++version_;
  return w;
}

WeightSwap::WeightSwap(DeviceWeights& weights, const ModuleInfo& m, Linear replacement)
    : weights_(&weights), module_(m), replacement_(std::make_unique<Linear>(std::move(replacement))) {
  // Only the passes multiply by it; an embedding is also looked up row by
  // row, which reads its values as they are stored.
  Backend& be = weights.backend();
  saved_ = weights.exchange(m, m.kind == ModuleKind::Embed ? be.upload(replacement_->view())
                                                           : be.upload_for_passes(replacement_->view()));
}

WeightSwap::WeightSwap(WeightSwap&& o) noexcept
    : weights_(std::exchange(o.weights_, nullptr)),
      module_(std::move(o.module_)),
      replacement_(std::move(o.replacement_)),
      saved_(std::move(o.saved_)) {}

WeightSwap::~WeightSwap() {
  if (weights_) weights_->exchange(module_, std::move(saved_));
}

}  // namespace optiq
