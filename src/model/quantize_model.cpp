#include "model/quantize_model.h"

#include <optional>

#include <fmt/format.h>

#include "backend/backend.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "model/gguf_matrix.h"

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

namespace {

// Min/max rounding of a borrowed fp32/fp16/bf16 matrix fused from its words
// (quant/quantizer.h quantize_minmax: the same bits as the row blocks below,
// without widening rows to fp32), a block of rows at a time with the next
// block's pages asked for ahead. Returns nullopt for other storage.
std::optional<QuantizedMatrix> quantize_minmax_fused(const TensorFormat& f, const Linear& lin, bool bf16_scales,
                                                     int64_t block_bytes) {
  const AffineFormat* af = f.affine();
  if (!af) return std::nullopt;
  const void* words = nullptr;
  SourceWords type = SourceWords::F32;
  int elem = 4;
  if (const auto* h = lin.view().as<HalfWeights>()) {
    words = h->data;
    type = h->bf16 ? SourceWords::BF16 : SourceWords::F16;
    elem = 2;
  } else if (const auto* w = lin.view().as<F32Weights>()) {
    words = w->data;
  } else {
    return std::nullopt;
  }
  const int64_t rows = lin.rows(), cols = lin.cols();
  check_affine_shape(*af, rows, cols);
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = *af;
  m.bf16_scales = bf16_scales;
  m.packed.resize(rows * affine_words_per_row(*af, cols));
  m.scales.resize(rows * affine_groups_per_row(*af, cols));
  m.biases.resize(m.scales.size());
  const int64_t block = std::max<int64_t>(1, block_bytes / (elem * cols));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t r1 = std::min(rows, r0 + block);
    if (r1 < rows) lin.prefetch_rows(r1, std::min(rows, r1 + block));
    parallel_for_range(r1 - r0, grain, [&](int64_t a, int64_t b) {
      quantize_minmax_rows(words, type, cols, r0 + a, r0 + b, *af, bf16_scales, m.packed.data(), m.scales.data(),
                           m.biases.data());
    });
  }
  return QuantizedMatrix{f, rows, cols, std::move(m), {}};
}

}  // namespace

ModuleQuantizer::ModuleQuantizer(const Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt)
    : model_(model), map_(map), opt_(opt) {}

TensorFormat ModuleQuantizer::format(const ModuleInfo& mod) const {
  return map_.format_of(mod.path);
}

// `source`: the loaded matrix itself, which holds the source's blocks (k-quants
// as they are, the 32-weight types re-laid losslessly), so the GGUF writer
// stores exactly the source's bytes (model/gguf_matrix.h); fake quantization
// of it is its own values.
Linear ModuleQuantizer::kept_source(const ModuleInfo& m, const Linear& lin) const {
  const DType want = map_.format_of(m.path).ggml()->type;
  std::string have = lin.format();
  if (lin.is_kquant() || lin.is_affine()) {
    try {
      const GgufMatrix g = gguf_matrix_type(lin, m.path, false);
      if (g.type == want && !g.requantized) return lin;
      have = std::string(dtype_name(g.type)) + (g.requantized ? " (not exactly)" : "");
    } catch (const Error&) {
    }
  }
  fail("{}: {}: the plan keeps the tensor in its source's {} blocks, but the loaded matrix is {}: quantize the GGUF "
       "the plan was made for, as loaded (not dequantized or transformed)",
       model_.path, m.path, dtype_name(want), have);
}

Linear ModuleQuantizer::quantize(const ModuleInfo& m, const Linear& lin) {
  const TensorFormat fmt = format(m);
  if (!fmt) {
    // Planned as float: a source that arrived packed (GGUF Q4_1, Q4_K, ...) is
    // stored as its dequantized values, not silently kept in its old format.
    return lin.is_affine() || lin.is_kquant() ? Linear::from_f32(lin.to_f32(), m.rows, m.cols) : lin;
  }
  if (fmt.is_source()) return kept_source(m, lin);
  check(format_fits(fmt, m.cols), "{}: {} cannot use {}: {} inputs are not a multiple of the group size", model_.path,
        m.path, tensor_format_short(fmt), m.cols);
  auto method = map_.methods.find(m.path);
  const float* importance = nullptr;
  if (opt_.importance && (opt_.importance_all || (method != map_.methods.end() && method->second == "weighted"))) {
    auto imp = opt_.importance->find(m.path);
    if (imp != opt_.importance->end() && static_cast<int64_t>(imp->second.size()) == m.cols)
      importance = imp->second.data();
  }
  const std::vector<float>* gram = nullptr;
  const bool wants_gptq = opt_.gptq_all || (method != map_.methods.end() && method->second == "gptq");
  if (opt_.grams && wants_gptq) {
    auto g = opt_.grams->find(m.path);
    if (g != opt_.grams->end() && static_cast<int64_t>(g->second->size()) == m.cols * m.cols) gram = g->second.get();
  }
  QuantizedMatrix q;
  if (gram) {
    const bool act_order = gptq_uses_act_order(fmt, opt_.gptq);
    const int passes = gptq_grid_passes(fmt, opt_.gptq);
    if (!hessian_ || hessian_key_ != std::tuple{gram, act_order, passes}) {
      hessian_.reset();  // the previous one's memory first
      // GPTQ on the GPU when the model runs there (the asymmetric target
      // needs the factor on the host).
      Backend& be = default_backend();
      Backend* device = be.host_memory() || opt_.cross ? nullptr : &be;
      hessian_.emplace(gptq_prepare(gram->data(), m.cols, act_order, gptq_damp(opt_.gptq, m), passes, device));
      hessian_key_ = {gram, act_order, passes};
    }
    const std::vector<float>* cross = nullptr;
    if (opt_.cross && hessian_->ok) {
      auto x = opt_.cross->find(m.path);
      if (x != opt_.cross->end() && static_cast<int64_t>(x->second->size()) == m.cols * m.cols)
        cross = x->second.get();
    }
    // GPTQ rounds each row on its own (the error feedback runs along a row's
    // columns), so a block of rows at a time gives the whole matrix's bits
    // with one block's fp32 in memory (a tied embedding: 168M weights).
    const int64_t block = std::max<int64_t>(kGptqRowAlign, opt_.row_block_bytes / (4 * m.cols) / kGptqRowAlign *
                                                                kGptqRowAlign);
    std::vector<float> w, target;
    bool fallback = false;
    for (int64_t r0 = 0; r0 < m.rows; r0 += block) {
      const int64_t n = std::min(block, m.rows - r0);
      if (r0 + n < m.rows) lin.prefetch_rows(r0 + n, std::min(m.rows, r0 + n + block));
      w.resize(static_cast<size_t>(n * m.cols));
      parallel_for(n, [&](int64_t r) { lin.row(r0 + r, &w[r * m.cols]); }, 16);
      if (cross) {
        target.resize(w.size());
        gptq_asymmetric_target(w.data(), n, m.cols, gram->data(), cross->data(), *hessian_, target.data());
        w.swap(target);
      }
      GptqResult r = gptq_quantize(fmt, w.data(), n, m.cols, *hessian_, opt_.recipe.options(importance));
      fallback |= r.fallback;
      append_rows(q, std::move(r.q), m.rows);
    }
    if (fallback)
      warn("{}: {}: its inputs' second moments are not positive definite even dampened; rounded without GPTQ",
           model_.path, m.path);
  } else if (auto fused = opt_.recipe.method == QuantMethod::MinMax
                              ? quantize_minmax_fused(fmt, lin, opt_.recipe.bf16_scales, opt_.row_block_bytes / 2)
                              : std::nullopt) {
    q = std::move(*fused);  // min/max rounding ignores importance: the same bits as below
  } else {
    q = quantize_in_row_blocks(fmt, lin, opt_.recipe.options(importance), opt_.row_block_bytes);
  }
  return opt_.fake ? Linear::from_f32(dequantize_matrix(q), m.rows, m.cols) : Linear::from_quantized(std::move(q));
}

double gptq_damp(const GptqOptions& g, const ModuleInfo& m) {
  return m.kind == ModuleKind::Embed ? g.tied_embed_damp : g.damp;
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

}  // namespace optiq
