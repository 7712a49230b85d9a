// AWQ-style activation-aware scaling (Lin et al., "AWQ: Activation-aware
// Weight Quantization for LLM Compression and Acceleration", 2023), folded
// into the model so that the export stays a plain MLX / GGUF model.
//
// A matrix W that reads x is stored as Q(W diag(s)) and its input becomes
// x / s; the division is folded into whatever made x, so the float model is
// unchanged. Input channels with large activations get s > 1: their weights
// sit on a finer relative grid, and the rounding error they pass on shrinks.
// Per input site s_c = rms_c^alpha, normalised so that max(s) min(s) = 1
// (rms_c from the Gram matrix's diagonal), with alpha on a grid in [0, 1]
// minimising the summed output error of the matrices that read x:
//   sum_m tr(D_m G D_m^T),  D_m = W_m - Q(W_m diag(s)) diag(1/s),
// G the Gram sum of the calibration inputs. alpha = 0 (s = 1: plain rounding)
// is on the grid, so by that measure the result is never worse than rounding.
//
// Where the division goes (every family optiq runs: Llama, Mistral, Qwen2,
// Qwen3, Phi-3, Gemma 3, llama2.c):
//   q, k, v (or Phi-3's qkv)  <- the attention norm's multiplier
//   gate, up (or gate_up)     <- the MLP norm's multiplier (Gemma: pre-FFN norm)
//   down                      <- the rows of up (act(gate) * up is linear in up)
//   o                         <- the rows of v (and its bias): attention is
//                                linear in V; with grouped-query attention the
//                                query heads of a group share their kv head's
//                                scale (their statistics averaged).
#pragma once
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/quantize_model.h"

namespace optiq {

struct AwqOptions {
  int grid = 10;  // alpha = k / grid, k = 0..grid
  // >= 0: no search; every site with a Gram matrix takes this alpha, its
  // matrices quantized or not (tests of the folding).
  double fixed_alpha = -1;
};

// One matrix reading the site's input, and the format it will be stored in.
struct AwqMatrix {
  const float* w;  // rows x cols, row-major fp32
  int64_t rows;
  TensorFormat fmt;
};

struct AwqSearch {
  std::vector<float> scales;  // s, one per input channel
  double alpha = 0;
  double error = 0;        // the summed tr(D G D^T) at the chosen alpha
  double error_plain = 0;  // at alpha = 0 (plain rounding)
};

// The search above over matrices sharing one input (gram: cols x cols;
// channel_rms: the statistic s is a power of, one per channel). qo's
// importance (optional, per original input channel) is rescaled with the inputs.
AwqSearch awq_search(std::span<const AwqMatrix> ms, int64_t cols, const float* gram,
                     std::span<const float> channel_rms, const QuantizeOptions& qo, const AwqOptions& opt = {});

// What the transform chose at each input site (for logs and tests).
struct AwqSiteReport {
  std::string site;  // "model.layers.3 attention input", ...
  double alpha = 0, error = 0, error_plain = 0;
};

// Scales every layer's four input sites of a float model in place, for the
// formats in `map` (sites whose matrices are all float are left alone).
// grams: collect_grams of this model before the transform. importance
// (optional): collect_importance's map, rescaled in place to the scaled inputs.
std::vector<AwqSiteReport> awq_transform(Model& model, const PrecisionMap& map, const GramMap& grams,
                                         const QuantizeRecipe& recipe, ImportanceMap* importance,
                                         const AwqOptions& opt = {});

}  // namespace optiq
