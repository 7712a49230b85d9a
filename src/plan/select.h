// Choosing a plan by measurement, not by prediction alone.
//
// The solver minimises the SUM of per-tensor KLs, each measured with every
// other tensor exact. At low bits the errors of different tensors compound
// (SmolLM2 at 3.5 bits/weight: 0.91 predicted, 1.32 measured), so the plan
// with the least predicted damage is not always the best one. Here a few
// plans of the same budget are generated from different, equally defensible
// readings of the profile, and each is measured: the model is quantized per
// the plan (packed, with the quantizer the export uses) and its mean KL
// against the unquantized model is taken over the calibration windows (their
// second halves, as in evaluation). The measured best wins.
//
// Variants (all within the budget):
//   optiq              the solver on the profile's damage (additive model)
//   optiq convex       the solver on d^1.5 (scaled to keep units): large single-tensor
//                      damages cost more, so the plan spreads the damage —
//                      compounding errors punish concentrated damage most
//   optiq min3         the solver with no tensor below 3 bits (when the budget allows)
//   optiq concave      the solver on d^0.75: concentrates damage on few tensors
//   baselines          uniform (the largest uniform format that fits), the k-quant
//                      rule and the dynamic rule at this budget: if one of them
//                      measures best, optiq ships it instead of a worse plan
// Quantized tensors are cached per (module, format), so a variant costs one
// pass over the calibration windows plus the tensors no earlier variant used.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/model.h"
#include "plan/solver.h"
#include "quant/quantizer.h"

namespace optiq {

struct PlanVariant {
  std::string name;
  PrecisionMap map;
  double predicted = 0;     // sum of the profile's damage
  int64_t bytes = 0;        // plan_bytes
  double bits_per_weight = 0;
  double measured = -1;     // mean KL on the calibration windows (-1: not measured)
  double measured_stderr = 0;
};

// The variants above for `budget` bytes (duplicates removed; a variant whose
// constraints cannot be met is skipped). `damage`: module -> format -> KL.
std::vector<PlanVariant> plan_variants(const ModelConfig& config,
                                       const std::map<std::string, std::map<std::string, double>>& damage,
                                       const std::vector<TensorFormat>& formats, int64_t budget,
                                       const SolverOptions& base, bool with_baselines = true);

// Measures every variant on `windows` (the model's weights are swapped per
// variant and restored before returning) and returns the index of the best.
size_t measure_variants(Model& model, const std::vector<std::vector<int32_t>>& windows,
                        std::vector<PlanVariant>& variants, QuantMethod method = QuantMethod::Search,
                        bool progress = true);

}  // namespace optiq
