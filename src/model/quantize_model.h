// Quantizes a loaded model's weight matrices per a precision map, in place:
// either to packed affine storage (the runtime path) or to fake-quantized fp32
// (quantize then dequantize: the accuracy path used by profiling). Both use
// the same quantizer, so they give the same numbers up to fp32 summation order.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "model/model.h"
#include "model/transformer.h"
#include "model/gptq.h"
#include "quant/quantizer.h"

namespace optiq {

// Per-input-channel importance (mean x^2 over calibration tokens) for each
// module path; feeds the activation-weighted quantizer (--calib).
using ImportanceMap = std::map<std::string, std::vector<float>>;

// Per module path, the sum over calibration tokens of x x^T of its inputs
// (cols x cols, fp32): GPTQ's Hessian. Modules reading the same activations
// (q, k and v; gate and up) share one matrix.
using GramMap = std::map<std::string, std::shared_ptr<const std::vector<float>>>;

// How a model's matrices are quantized. One recipe serves the export, the
// profile's fake quantization and measured selection, so that each measures
// what ships (e.g. Gemma's bf16 scales, not fp16 ones).
struct QuantizeRecipe {
  QuantMethod method = QuantMethod::Search;
  bool bf16_scales = false;  // scale/bias storage type
  // The export's choice for a model: bf16 scales when it prefers bf16
  // (Gemma 3), else fp16. dtype "f16" / "bf16" overrides it; "auto" keeps it.
  static QuantizeRecipe for_model(const ModelConfig& c, QuantMethod method = QuantMethod::Search,
                                  const std::string& dtype = "auto");
  // The matrix quantizer's options (importance: optional, one weight per input).
  QuantizeOptions options(const float* importance = nullptr) const;
};

struct QuantizeModelOptions {
  QuantizeRecipe recipe{};
  bool fake = false;  // true: keep fp32 weights holding the dequantized values
  // Activation weighting of the search: for every module importance has, or
  // (importance_all false) only those the map's methods name "weighted".
  const ImportanceMap* importance = nullptr;
  bool importance_all = true;
  // With grams: GPTQ for the modules that have one (the lm_head's and a tied
  // embedding's: the head's inputs; an untied embedding has none: plain
  // rounding) — every one with gptq_all, else those the map's methods name
  // "gptq"; the rest are rounded on their own.
  const GramMap* grams = nullptr;
  // With grams: GPTQ aimed at the float model's outputs for the modules that
  // have a cross sum here (collect_sequential's asymmetric mode).
  const GramMap* cross = nullptr;
  bool gptq_all = true;
  GptqOptions gptq{};
  bool progress = true;
  // Matrices are widened to fp32 and rounded in blocks of rows of about this
  // many bytes (GPTQ too: it rounds each row on its own), so memory stays
  // bounded for any matrix size.
  int64_t row_block_bytes = 64 << 20;
};

void quantize_model(Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt = {});

// The dampening GPTQ uses for module m: GptqOptions::tied_embed_damp for an
// embedding (only a tied one has statistics for GPTQ), else damp.
double gptq_damp(const GptqOptions& g, const ModuleInfo& m);

// `lin` quantized to `f`, widened to fp32 in blocks of about `block_bytes`
// of rows (every format rounds rows on their own: the result is the whole
// matrix's), the next block's pages asked for while one is rounded. Bounded
// memory for any matrix size (an 8B model's embedding is 2 GB of fp32).
QuantizedMatrix quantize_in_row_blocks(const TensorFormat& f, const Linear& lin, const QuantizeOptions& opt,
                                       int64_t block_bytes = 64 << 20);

// One module at a time: quantize_model's step, shared with streamed exports
// (model/matrix_source.h), which quantize each matrix just before writing it.
class ModuleQuantizer {
 public:
  // model, map and opt (with what it points to) must outlive this.
  ModuleQuantizer(const Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt);
  // `source` (the module's current matrix) in the module's planned storage:
  // quantized (fake: dequantized to fp32), or as floats when the plan leaves
  // it unquantized (packed sources widened: never kept in their old format).
  Linear quantize(const ModuleInfo& mod, const Linear& source);
  // The planned format of `mod` (nullopt: float).
  TensorFormat format(const ModuleInfo& mod) const;

 private:
  const Model& model_;
  const PrecisionMap& map_;
  const QuantizeModelOptions& opt_;
  Linear kept_source(const ModuleInfo& mod, const Linear& lin) const;
  // GPTQ's factorisation of the last set of shared inputs (q, k and v, or gate
  // and up, come one after another): one kept, not one per layer.
  std::tuple<const std::vector<float>*, bool, int> hessian_key_{nullptr, false, 0};  // gram, act-order, refits
  std::optional<GptqHessian> hessian_;
};

}  // namespace optiq
