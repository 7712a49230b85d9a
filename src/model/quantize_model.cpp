#include "model/quantize_model.h"

#include <optional>

#include <fmt/format.h>

#include "backend/backend.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/progress.h"

namespace optiq {

namespace {

template <typename Weights>
auto& module_linear_of(Weights& w, const ModuleInfo& m) {
  if (m.kind == ModuleKind::Embed) return w.embed;
  if (m.kind == ModuleKind::LmHead) return w.lm_head;
  check(m.layer >= 0 && m.layer < static_cast<int>(w.layers.size()), "module {}: no layer {}", m.path, m.layer);
  return w.layers[m.layer].*module_kind_info(m.kind).member;
}

}  // namespace

Linear& module_linear(ModelWeights& w, const ModuleInfo& m) { return module_linear_of(w, m); }
const Linear& module_linear(const ModelWeights& w, const ModuleInfo& m) { return module_linear_of(w, m); }

QuantizeRecipe QuantizeRecipe::for_model(const ModelConfig& c, QuantMethod method, const std::string& dtype) {
  check(dtype == "auto" || dtype == "f16" || dtype == "bf16", "scale type '{}': expected auto, f16 or bf16", dtype);
  return {method, dtype == "bf16" || (dtype == "auto" && c.prefers_bf16)};
}

QuantizeOptions QuantizeRecipe::options(const float* importance) const {
  QuantizeOptions o;
  o.method = method;
  o.bf16_scales = bf16_scales;
  o.importance = importance;
  return o;
}

QuantizedMatrix quantize_in_row_blocks(const TensorFormat& f, const Linear& lin, const QuantizeOptions& opt,
                                       int64_t block_bytes) {
  const int64_t rows = lin.rows(), cols = lin.cols();
  const int64_t block = std::max<int64_t>(1, block_bytes / (4 * cols));
  QuantizedMatrix q;
  std::vector<float> w;
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t n = std::min(block, rows - r0);
    if (r0 + n < rows) lin.prefetch_rows(r0 + n, std::min(rows, r0 + n + block));
    w.resize(static_cast<size_t>(n * cols));
    parallel_for(n, [&](int64_t r) { lin.row(r0 + r, &w[r * cols]); }, 16);
    append_rows(q, quantize_matrix(f, w.data(), n, cols, opt), rows);
  }
  return q;
}

ModuleQuantizer::ModuleQuantizer(const Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt)
    : model_(model), map_(map), opt_(opt) {}

TensorFormat ModuleQuantizer::format(const ModuleInfo& mod) const {
  return map_.format_of(mod.path);
}

Linear ModuleQuantizer::quantize(const ModuleInfo& m, const Linear& lin) {
  const TensorFormat fmt = format(m);
  if (!fmt) {
    // Planned as float: a source that arrived packed (GGUF Q4_1, Q4_K, ...) is
    // stored as its dequantized values, not silently kept in its old format.
    return lin.is_affine() || lin.is_kquant() ? Linear::from_f32(lin.to_f32(), m.rows, m.cols) : lin;
  }
  check(format_fits(fmt, m.cols), "{}: {} cannot use {}: {} inputs are not a multiple of the group size", model_.path,
        m.path, tensor_format_short(fmt), m.cols);
  const float* importance = nullptr;
  if (opt_.importance) {
    auto imp = opt_.importance->find(m.path);
    if (imp != opt_.importance->end() && static_cast<int64_t>(imp->second.size()) == m.cols)
      importance = imp->second.data();
  }
  const std::vector<float>* gram = nullptr;
  auto method = map_.methods.find(m.path);
  const bool wants_gptq = opt_.gptq_all || (method != map_.methods.end() && method->second == "gptq");
  if (opt_.grams && wants_gptq) {
    auto g = opt_.grams->find(m.path);
    if (g != opt_.grams->end() && static_cast<int64_t>(g->second->size()) == m.cols * m.cols) gram = g->second.get();
  }
  QuantizedMatrix q;
  if (gram) {
    std::vector<float> w = lin.to_f32();
    const bool act_order = gptq_uses_act_order(fmt, opt_.gptq);
    if (!hessian_ || hessian_key_ != std::pair{gram, act_order}) {
      hessian_.reset();  // the previous one's memory first
      hessian_.emplace(gptq_prepare(gram->data(), m.cols, act_order, opt_.gptq.damp));
      hessian_key_ = {gram, act_order};
    }
    GptqResult r = gptq_quantize(fmt, w.data(), m.rows, m.cols, *hessian_, opt_.recipe.options(importance));
    if (r.fallback)
      warn("{}: {}: its inputs' second moments are not positive definite even dampened; rounded without GPTQ",
           model_.path, m.path);
    q = std::move(r.q);
  } else {
    q = quantize_in_row_blocks(fmt, lin, opt_.recipe.options(importance), opt_.row_block_bytes);
  }
  return opt_.fake ? Linear::from_f32(dequantize_matrix(q), m.rows, m.cols) : Linear::from_quantized(std::move(q));
}

void quantize_model(Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt) {
  const auto modules = quantizable_modules(model.config);
  int64_t total = 0;
  for (const auto& m : modules) total += m.numel();
  std::optional<Progress> progress;
  if (opt.progress) progress.emplace("quantize", total / 1000000, "M weights");
  int64_t done = 0;
  ModuleQuantizer quantizer(model, map, opt);
  for (const auto& m : modules) {
    Linear& lin = module_linear(model.weights, m);
    lin = quantizer.quantize(m, lin);
    model.precision.formats[m.path] = quantizer.format(m);
    done += m.numel();
    if (progress) progress->update(done / 1000000);
  }
  if (progress) progress->finish();
}

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
  int max_len = 1;
  for (const auto& w : windows) max_len = std::max<int>(max_len, static_cast<int>(w.size()));
  Transformer tf(model, max_len);
  tf.set_observer(&col);
  Progress p("calibrate", static_cast<int64_t>(windows.size()), "windows");
  std::vector<float> logits(model.config.vocab_size);
  for (size_t i = 0; i < windows.size(); ++i) {
    tf.reset();
    // Last-token logits keep the lm_head input observed too (one row per window).
    tf.forward(windows[i], logits.data(), static_cast<int64_t>(windows[i].size()) - 1);
    p.update(static_cast<int64_t>(i + 1));
  }
  p.finish();
  return col.result();
}

namespace {

// Gram sums at the four per-layer input sites, on the host (CPU backend).
class GramCollector : public ActivationObserver {
 public:
  explicit GramCollector(const ModelConfig& c) : c_(c), sums_(static_cast<size_t>(c.n_layers) * kLayerInputSites) {}
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (static_cast<int>(site) >= kLayerInputSites || layer < 0 || layer >= c_.n_layers) return;
    auto& g = sums_[static_cast<size_t>(layer) * kLayerInputSites + static_cast<size_t>(site)];
    if (!g) g = std::make_shared<std::vector<float>>(static_cast<size_t>(cols * cols), 0.0f);
    check(static_cast<int64_t>(g->size()) == cols * cols, "gram: layer {} site {}: {} columns, then {}", layer,
          static_cast<int>(site), g->size(), cols);
    cpu_backend().gram_add(x, n, cols, g->data());
  }
  GramMap result() const {
    GramMap out;
    for (const auto& m : quantizable_modules(c_)) {
      const auto site = module_kind_info(m.kind).input;
      if (!site || static_cast<int>(*site) >= kLayerInputSites || m.layer < 0) continue;
      const auto& g = sums_[static_cast<size_t>(m.layer) * kLayerInputSites + static_cast<size_t>(*site)];
      if (g && static_cast<int64_t>(g->size()) == m.cols * m.cols) out[m.path] = g;
    }
    return out;
  }

 private:
  const ModelConfig& c_;
  std::vector<std::shared_ptr<std::vector<float>>> sums_;
};

}  // namespace

GramMap collect_grams(const Model& model, const std::vector<std::vector<int32_t>>& windows, bool progress) {
  const ModelConfig& c = model.config;
  int64_t bytes = 0;
  for (const auto& m : quantizable_modules(c))
    if (m.layer >= 0 && m.kind != ModuleKind::Embed && m.kind != ModuleKind::LmHead) bytes += m.cols * m.cols * 4;
  // q/k/v and gate/up share theirs: this overcounts, which only makes the check safer.
  check(bytes < available_memory_bytes() / 2,
        "{}: GPTQ's input statistics would take up to {:.1f} GB, more than half the memory available; "
        "use --method search (or a machine with more memory)",
        model.path, bytes / 1e9);
  GramCollector col(c);
  int max_len = 1;
  for (const auto& w : windows) max_len = std::max<int>(max_len, static_cast<int>(w.size()));
  Transformer tf(model, max_len);
  tf.set_observer(&col);
  std::optional<Progress> p;
  if (progress) p.emplace("calibrate", static_cast<int64_t>(windows.size()), "windows");
  std::vector<float> logits(c.vocab_size);
  for (size_t i = 0; i < windows.size(); ++i) {
    tf.reset();
    tf.forward(windows[i], logits.data(), static_cast<int64_t>(windows[i].size()) - 1);
    if (p) p->update(static_cast<int64_t>(i + 1));
  }
  if (p) p->finish();
  return col.result();
}

}  // namespace optiq
