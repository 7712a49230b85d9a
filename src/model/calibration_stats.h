// Statistics of a model's matrix inputs over calibration windows, what the
// activation-weighted rounding (--calib), GPTQ and AWQ work from: per input
// channel mean x^2 (ImportanceMap) and Gram sums x x^T (GramMap). Either of
// the float model, or (collect_sequential) of the model as it is being
// quantized, layer by layer.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "model/quantize_model.h"

namespace optiq {

// Collects mean x^2 per input channel of every module over calibration token
// windows (each window run from an empty cache).
ImportanceMap collect_importance(const Model& model, const std::vector<std::vector<int32_t>>& windows,
                                 bool progress = true);

// Gram sums of every layer matrix's inputs over calibration windows (the
// float model's activations, each window from an empty cache), and of the
// head's inputs (the final norm's output) for the lm_head, or for a tied
// embedding: GPTQ of its head role (its lookup role has no inputs to weigh).
// Fails with a clear message when they would not fit in memory.
GramMap collect_grams(const Model& model, const std::vector<std::vector<int32_t>>& windows, bool progress = true);

struct CalibrationStats {
  GramMap grams;            // every layer matrix, the lm_head (and a tied embedding)
  ImportanceMap importance; // every layer matrix, the lm_head (and a tied embedding)
  GramMap cross;            // asymmetric: sum x x~^T, float inputs x against the quantized model's x~
};

// Points `opt` at the statistics of `s` that it holds, applied per tensor as
// the map's methods say ("weighted": the energies, "gptq": the Gram sums):
// how a plan is quantized as its profile measured it.
void quantize_as_planned(QuantizeModelOptions& opt, const CalibrationStats& s);

// GPTQ's sequential mode ("true sequential", as AutoGPTQ runs it by
// default): each matrix's statistics come from the calibration windows run
// through every matrix before it already quantized as `map` and `opt` say
// (GPTQ from these same statistics, fake-quantized): the layers before, and
// within its layer q/k/v before o before gate/up before down. So each error
// feedback works on the inputs the quantized model will give it, the errors
// of what came before included. An untied embedding is quantized first (it has no input
// statistics); a tied one stays float during the pass (its rounding is
// weighted by the lm_head's inputs, known only at the end). The head's
// energies and Gram sums (the lm_head's, a tied embedding's) come from the
// quantized model's last hidden state (asymmetric: no cross sum there, so
// the head's GPTQ is the plain one). Quantizing with
// the result (opt.grams and opt.importance pointing at it) reproduces the
// pass's matrices exactly.
// asymmetric: GPTQ aims each matrix at the float model's outputs instead,
// min ||W x - W^ x~||^2 (gptq_asymmetric_target): the float model runs beside
// the pass for its own inputs x, and `cross` holds sum x x~^T, which
// quantizing needs too (opt.cross). Twice the passes.
// Runs on the default backend; opt.grams, opt.cross, opt.importance and
// opt.fake are ignored. Fails like collect_grams when the sums would not fit.
CalibrationStats collect_sequential(const Model& model, const PrecisionMap& map,
                                    const std::vector<std::vector<int32_t>>& windows, const QuantizeModelOptions& opt,
                                    bool asymmetric = false, bool progress = true);

}  // namespace optiq
