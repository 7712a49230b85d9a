#include "model/calibration_stats.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "backend/backend.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/progress.h"
#include "model/device_weights.h"
#include "model/transformer.h"

namespace optiq {

namespace {

int longest(const std::vector<std::vector<int32_t>>& windows) {
  int max_len = 1;
  for (const auto& w : windows) max_len = std::max<int>(max_len, static_cast<int>(w.size()));
  return max_len;
}

// Every window through the float model from an empty cache, under `obs`.
// Last-token logits keep the lm_head input observed too.
void observe_windows(const Model& model, const std::vector<std::vector<int32_t>>& windows, ActivationObserver& obs,
                     bool progress) {
  Transformer tf(model, longest(windows));
  tf.set_observer(&obs);
  std::optional<Progress> p;
  if (progress) p.emplace("calibrate", static_cast<int64_t>(windows.size()), "windows");
  std::vector<float> logits(static_cast<size_t>(model.config.vocab_size));
  for (size_t i = 0; i < windows.size(); ++i) {
    tf.reset();
    tf.forward(windows[i], logits.data(), static_cast<int64_t>(windows[i].size()) - 1);
    if (p) p->update(static_cast<int64_t>(i + 1));
  }
  if (p) p->finish();
}

}  // namespace

namespace {

// Sums x^2 per input channel at the four per-layer input sites (AttnIn, OIn,
// MlpIn, DownIn) and the head input, then maps sites to modules. Other sites
// (LayerIn, the residual stream profiling caches) are not matrix inputs and
// are ignored.
class ImportanceCollector : public ActivationObserver {
 public:
  static constexpr int kLayerSites = kLayerInputSites;
  explicit ImportanceCollector(const ModelConfig& c) : c_(c) {
    sums_.resize(static_cast<size_t>(c.n_layers) * kLayerSites + 1);
    counts_.assign(sums_.size(), 0);
  }
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    size_t idx;
    if (site == Site::HeadIn) {
      idx = head_slot();
    } else if (static_cast<int>(site) < kLayerSites && layer >= 0 && layer < c_.n_layers) {
      idx = static_cast<size_t>(layer) * kLayerSites + static_cast<size_t>(site);
    } else {
      return;  // LayerIn: the residual stream, no matrix reads it directly
    }
    auto& s = sums_[idx];
    if (s.empty()) s.assign(cols, 0.0);
    check(static_cast<int64_t>(s.size()) == cols, "importance: layer {} site {}: {} columns, then {}", layer,
          static_cast<int>(site), s.size(), cols);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < cols; ++j) s[j] += static_cast<double>(x[i * cols + j]) * x[i * cols + j];
    counts_[idx] += n;
  }
  ImportanceMap result() const {
    ImportanceMap out;
    auto mean = [&](size_t idx) {
      std::vector<float> v(sums_[idx].size());
      for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>(sums_[idx][j] / std::max<int64_t>(1, counts_[idx]));
      return v;
    };
    for (const auto& m : quantizable_modules(c_)) {
      // The site whose activations the module multiplies (Phi-3's fused
      // qkv_proj and gate_up_proj read the attention and MLP inputs).
      const auto site = module_kind_info(m.kind).input;
      if (!site) continue;  // the embedding, a lookup: rows matter by token frequency, not x^2
      const size_t idx = *site == Site::HeadIn ? head_slot()
                                               : static_cast<size_t>(m.layer) * kLayerSites + static_cast<size_t>(*site);
      if (!sums_[idx].empty() && static_cast<int64_t>(sums_[idx].size()) == m.cols) out[m.path] = mean(idx);
    }
    if (c_.tied_embeddings && !sums_[head_slot()].empty()) out["model.embed_tokens"] = mean(head_slot());
    return out;
  }

 private:
  size_t head_slot() const { return sums_.size() - 1; }
  const ModelConfig& c_;
  std::vector<std::vector<double>> sums_;
  std::vector<int64_t> counts_;
};

}  // namespace

ImportanceMap collect_importance(const Model& model, const std::vector<std::vector<int32_t>>& windows, bool progress) {
  ImportanceCollector col(model.config);
  observe_windows(model, windows, col, progress);
  return col.result();
}

namespace {

// Gram sums at the four per-layer input sites and the head's input (the
// final norm's output, which the lm_head, or a tied embedding in its head
// role, multiplies), on the host (CPU backend).
class GramCollector : public ActivationObserver {
 public:
  // device: sum on that backend, from the rows where it keeps them (a GPU:
  // no copy of every site's rows to the host, no host GEMMs); result()
  // brings the sums to the host. Null: on the host.
  explicit GramCollector(const ModelConfig& c, Backend* device = nullptr)
      : c_(c), sums_(static_cast<size_t>(c.n_layers) * kLayerInputSites + 1), device_(device) {
    if (device_) device_sums_.resize(sums_.size());
  }
  bool backend_rows() const override { return device_ != nullptr; }
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    const size_t slot = site_slot(layer, site, cols);
    if (slot == kNone) return;
    if (!device_) return cpu_backend().gram_add(x, n, cols, sums_[slot]->data());
    Buffer& d = device_sums_[slot];
    if (d.size() == 0) {
      d = device_->alloc(cols * cols);
      device_->fill_zero(d.data(), cols * cols);
    }
    device_->gram_add(x, n, cols, d.data());
  }
  // The cross sum a^T b of two n x cols row sets (GPTQ's asymmetric target:
  // the float model's inputs a against the quantized model's b).
  void add_cross(int layer, Site site, const float* a, const float* b, int64_t n, int64_t cols) {
    float* g = sum_of(layer, site, cols);
    if (!g) return;
    std::vector<float> at(static_cast<size_t>(n * cols)), bt(at.size()), y(static_cast<size_t>(cols * cols));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < cols; ++j) at[j * n + t] = a[t * cols + j], bt[j * n + t] = b[t * cols + j];
    Backend& cpu = cpu_backend();
    const auto bh = cpu.upload(WeightView{cols, n, F32Weights{bt.data()}});
    cpu.matmul(*bh, at.data(), cols, y.data());  // y = a^T (b^T)^T
    for (size_t i = 0; i < y.size(); ++i) g[i] += y[i];
  }
  GramMap result() {
    if (device_)
      for (size_t i = 0; i < sums_.size(); ++i)
        if (device_sums_[i].size() > 0) device_->to_host(device_sums_[i].data(), device_sums_[i].size(), sums_[i]->data());
    GramMap out;
    for (const auto& m : quantizable_modules(c_)) {
      const size_t slot = slot_of(m);
      if (slot >= sums_.size()) continue;
      const auto& g = sums_[slot];
      if (g && static_cast<int64_t>(g->size()) == m.cols * m.cols) out[m.path] = g;
    }
    return out;
  }

 private:
  size_t head_slot() const { return sums_.size() - 1; }
  // The slot of the inputs module m multiplies: a tied embedding's are its
  // head role's (its lookup role has none); an untied one reads no slot.
  size_t slot_of(const ModuleInfo& m) const {
    if (m.kind == ModuleKind::Embed) return c_.tied_embeddings ? head_slot() : sums_.size();
    const auto site = module_kind_info(m.kind).input;
    if (site && *site == Site::HeadIn) return head_slot();
    if (!site || static_cast<int>(*site) >= kLayerInputSites || m.layer < 0) return sums_.size();
    return static_cast<size_t>(m.layer) * kLayerInputSites + static_cast<size_t>(*site);
  }
  static constexpr size_t kNone = ~size_t{0};
  // The slot of a site's sums (made, zero, on first use), or kNone for
  // sites that are no matrix's inputs.
  size_t site_slot(int layer, Site site, int64_t cols) {
    if (site != Site::HeadIn && (static_cast<int>(site) >= kLayerInputSites || layer < 0 || layer >= c_.n_layers))
      return kNone;
    const size_t slot = site == Site::HeadIn ? head_slot()
                                             : static_cast<size_t>(layer) * kLayerInputSites + static_cast<size_t>(site);
    auto& g = sums_[slot];
    if (!g) g = std::make_shared<std::vector<float>>(static_cast<size_t>(cols * cols), 0.0f);
    check(static_cast<int64_t>(g->size()) == cols * cols, "gram: layer {} site {}: {} columns, then {}", layer,
          static_cast<int>(site), g->size(), cols);
    return slot;
  }
  float* sum_of(int layer, Site site, int64_t cols) {
    const size_t slot = site_slot(layer, site, cols);
    return slot == kNone ? nullptr : sums_[slot]->data();
  }
  const ModelConfig& c_;
  std::vector<std::shared_ptr<std::vector<float>>> sums_;  // host (with a device: filled by result())
  Backend* device_ = nullptr;
  std::vector<Buffer> device_sums_;
};

}  // namespace

namespace {

void check_gram_memory(const Model& model) {
  int64_t bytes = 0;
  for (const auto& m : quantizable_modules(model.config)) bytes += m.cols * m.cols * 4;
  // q/k/v and gate/up share theirs (a tied embedding and the head's inputs
  // are one; an untied embedding has none): this overcounts, which only
  // makes the check safer.
  check(bytes < available_memory_bytes() / 2,
        "{}: GPTQ's input statistics would take up to {:.1f} GB, more than half the memory available; "
        "use --method search (or a machine with more memory)",
        model.path, bytes / 1e9);
}

}  // namespace

GramMap collect_grams(const Model& model, const std::vector<std::vector<int32_t>>& windows, bool progress) {
  const ModelConfig& c = model.config;
  check_gram_memory(model);
  Backend& be = default_backend();
  GramCollector col(c, be.host_memory() ? nullptr : &be);
  observe_windows(model, windows, col, progress);
  return col.result();
}

namespace {

struct StopPass {};

// One input site of one layer to both collectors; stops the pass there.
class SiteInputs : public ActivationObserver {
 public:
  SiteInputs(int layer, Site site, GramCollector& grams, ImportanceCollector& energy)
      : layer_(layer), site_(site), grams_(grams), energy_(energy) {}
  std::vector<float>* keep = nullptr;  // also a copy of the rows (the asymmetric target's cross sums)
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::HeadIn || (site == Site::LayerIn && layer > layer_)) throw StopPass{};  // (never reached)
    if (layer != layer_ || site != site_) return;
    grams_.observe(layer, site, x, n, cols);
    energy_.observe(layer, site, x, n, cols);
    if (keep) keep->assign(x, x + n * cols);
    throw StopPass{};
  }

 private:
  int layer_;
  Site site_;
  GramCollector& grams_;
  ImportanceCollector& energy_;
};

// The residual stream entering layer `next` (then stops), or with next past
// the last layer, the head's inputs to `energy` and `grams`.
class NextLayerInput : public ActivationObserver {
 public:
  NextLayerInput(int next, ImportanceCollector* energy, GramCollector* grams)
      : next_(next), energy_(energy), grams_(grams) {}
  std::vector<float> rows;
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::HeadIn) {
      if (energy_) energy_->observe(layer, site, x, n, cols);
      if (grams_) grams_->observe(layer, site, x, n, cols);
    }
    if (site != Site::LayerIn || layer != next_) return;
    rows.assign(x, x + n * cols);
    throw StopPass{};
  }

 private:
  int next_;
  ImportanceCollector* energy_;  // null: the head's inputs are not wanted
  GramCollector* grams_;
};

// The rows at one site of one layer (the float model's, beside the
// quantized pass); stops there.
class RowsAt : public ActivationObserver {
 public:
  RowsAt(int layer, Site site) : layer_(layer), site_(site) {}
  std::vector<float> rows;
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (layer != layer_ || site != site_) return;
    rows.assign(x, x + n * cols);
    throw StopPass{};
  }

 private:
  int layer_;
  Site site_;
};

}  // namespace

CalibrationStats collect_sequential(const Model& model, const PrecisionMap& map,
                                    const std::vector<std::vector<int32_t>>& windows, const QuantizeModelOptions& opt,
                                    bool asymmetric, bool progress) {
  const ModelConfig& c = model.config;
  check(!windows.empty(), "{}: sequential calibration needs at least one window", model.path);
  check_gram_memory(model);
  GramCollector grams(c), cross(c);
  ImportanceCollector energy(c);
  DeviceWeights weights(model, default_backend());
  Transformer tf(weights, longest(windows));
  std::vector<WeightSwap> quantized;  // layers done so far (declared after the weights: undone first)
  // asymmetric: the float model beside it, for its own inputs at every site.
  std::optional<DeviceWeights> float_weights;
  std::optional<Transformer> tf_float;
  if (asymmetric) {
    float_weights.emplace(model, default_backend());
    tf_float.emplace(*float_weights, longest(windows));
  }
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));

  // Runs window w from `layer` on its residual stream `h[w]` (or from the
  // tokens when it is empty) under `obs`, to where obs stops it.
  std::vector<std::vector<float>> h(windows.size()), h_float(windows.size());
  auto run = [&](Transformer& t, std::vector<std::vector<float>>& hs, int layer, ActivationObserver& obs, size_t w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    t.set_observer(&obs);
    t.reset();
    try {
      if (hs[w].empty()) t.forward(windows[w], logits.data(), n - 1);
      else t.forward_from_layer(layer, hs[w].data(), n, logits.data(), n - 1);
    } catch (const StopPass&) {
    }
    t.set_observer(nullptr);
  };

  std::optional<Progress> p;
  if (progress) p.emplace("gptq: sequential statistics", static_cast<int64_t>(c.n_layers), "layers");
  const auto modules = quantizable_modules(c);
  auto quantizer_options = [&](const GramMap* g, const GramMap* x, const ImportanceMap* im) {
    QuantizeModelOptions q = opt;
    q.grams = g;
    q.cross = x;
    q.importance = im;
    q.fake = true;
    q.progress = false;
    return q;
  };
  // An untied embedding is rounded on its own (a lookup: no input
  // statistics), so layer 0 reads its rows as they will ship. A tied one is
  // also the lm_head, weighted by the quantized model's last hidden state,
  // known only at the end: it stays float here.
  if (!c.tied_embeddings) {
    const QuantizeModelOptions q = quantizer_options(nullptr, nullptr, nullptr);
    ModuleQuantizer quantizer(model, map, q);
    for (const auto& m : modules)
      if (m.kind == ModuleKind::Embed)
        quantized.emplace_back(weights, m, quantizer.quantize(m, module_linear(model.weights, m)));
  }
  for (int l = 0; l < c.n_layers; ++l) {
    // Within the layer too, in the order the pass reads them (q/k/v, o,
    // gate/up, down: "true sequential"): each site's statistics with the
    // matrices before it quantized and swapped in.
    for (int site = 0; site < kLayerInputSites; ++site) {
      std::vector<const ModuleInfo*> readers;
      for (const auto& m : modules) {
        const auto in = module_kind_info(m.kind).input;
        if (m.layer == l && in && static_cast<int>(*in) == site) readers.push_back(&m);
      }
      if (readers.empty()) continue;
      const auto at = static_cast<ActivationSite>(site);
      SiteInputs inputs(l, at, grams, energy);
      std::vector<float> mine;
      if (asymmetric) inputs.keep = &mine;
      for (size_t w = 0; w < windows.size(); ++w) {
        run(tf, h, l, inputs, w);
        if (!asymmetric) continue;
        RowsAt theirs(l, at);
        run(*tf_float, h_float, l, theirs, w);
        const int64_t n = static_cast<int64_t>(windows[w].size());
        cross.add_cross(l, at, theirs.rows.data(), mine.data(), n, static_cast<int64_t>(mine.size()) / n);
      }
      const GramMap g = grams.result(), x = cross.result();
      const ImportanceMap im = energy.result();
      const QuantizeModelOptions q = quantizer_options(&g, asymmetric ? &x : nullptr, &im);
      ModuleQuantizer quantizer(model, map, q);
      for (const ModuleInfo* m : readers)
        quantized.emplace_back(weights, *m, quantizer.quantize(*m, module_linear(model.weights, *m)));
    }
    // The next layer's inputs (after the last layer: the lm_head's), of both models.
    NextLayerInput next(l + 1, &energy, &grams), next_float(l + 1, nullptr, nullptr);
    for (size_t w = 0; w < windows.size(); ++w) {
      run(tf, h, l, next, w);
      if (l + 1 < c.n_layers) h[w] = std::move(next.rows);
      if (!asymmetric || l + 1 == c.n_layers) continue;
      run(*tf_float, h_float, l, next_float, w);
      h_float[w] = std::move(next_float.rows);
    }
    if (p) p->update(l + 1);
  }
  if (p) p->finish();
  return {grams.result(), energy.result(), asymmetric ? cross.result() : GramMap{}};
}

void quantize_as_planned(QuantizeModelOptions& opt, const CalibrationStats& s) {
  if (!s.importance.empty()) {
    opt.importance = &s.importance;
    opt.importance_all = false;
  }
  if (!s.grams.empty()) {
    opt.grams = &s.grams;
    opt.gptq_all = false;
  }
}

}  // namespace optiq
