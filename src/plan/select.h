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
// second halves, as in evaluation). The measured best wins, unless it wins
// by less than the windows' noise (choose_measured_variant below).
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
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "model/calibration_stats.h"
#include "model/model.h"
#include "model/quantize_model.h"
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
  std::vector<double> measured_windows;  // each window's mean KL (paired comparisons)
  double bits_spread = 0;   // parameter-weighted standard deviation of the tensors' bits per weight
};

// Sum of the profile's damage over a plan's formats (the additive prediction;
// float tensors count 0). A quantized format the table lacks for a module is
// an error, never 0. `damage`: module -> format name -> KL.
double plan_predicted_damage(const PrecisionMap& map,
                             const std::map<std::string, std::map<std::string, double>>& damage);

// Parameter-weighted standard deviation of the modules' bits per weight
// (module_bytes: a float module counts its float bits): 0 for a plan whose
// modules all have the same bits, large when some sit far below the others.
double plan_bits_spread(const ModelConfig& config, const PrecisionMap& map);

// The variants above for `budget` bytes (duplicates removed; a variant whose
// constraints cannot be met, or that needs a format outside `formats`, is
// skipped). `damage`: module -> format -> KL. With base.max_time > 0,
// time_of gives each candidate's time: the solver variants keep to the bound
// and a baseline that breaks it is left out.
std::vector<PlanVariant> plan_variants(const ModelConfig& config,
                                       const std::map<std::string, std::map<std::string, double>>& damage,
                                       const std::vector<TensorFormat>& formats, int64_t budget,
                                       const SolverOptions& base, bool with_baselines = true,
                                       const CandidateTime& time_of = {});

// Measures plans on calibration windows: during a measurement the model's
// weight matrices are swapped (WeightSwap, model/device_weights.h) for packed
// quantized ones per plan, cached per module, format and rounding so that
// later plans reuse earlier tensors. The Model itself is never changed.
// One measurer serves many budgets (optiq compare, optiq plan with several).
// A module the plan's `methods` name "gptq" is quantized with GPTQ from
// stats.grams, one named "weighted" with the search weighted by stats.importance
// (the statistics the export will use), so what is measured is what ships;
// without its statistics it is rounded plainly, as the export would.
class PlanMeasurer {
 public:
  // recipe: how the plans are quantized; by default the export's for this model.
  PlanMeasurer(const Model& model, const std::vector<std::vector<int32_t>>& windows,
               std::optional<QuantizeRecipe> recipe = std::nullopt, CalibrationStats stats = {});
  PlanMeasurer(const PlanMeasurer&) = delete;
  PlanMeasurer& operator=(const PlanMeasurer&) = delete;
  // Mean KL(model || plan) over the second halves of the windows, and its standard error.
  std::pair<double, double> measure(const PrecisionMap& map);
  // The whole evaluation (perplexity, KL, top-1) of the model quantized per `map`.
  PerplexityResult evaluate(const PrecisionMap& map, bool progress = false);

 private:
  const Model& model_;
  DeviceWeights weights_;
  QuantizeRecipe recipe_;
  int ctx_ = 0, chunks_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<ModuleInfo> modules_;
  CalibrationStats stats_;  // grams and importance (quantize_as_planned)
  std::map<std::pair<std::string, std::string>, Linear> cache_;  // (module, format[+method])
  std::unique_ptr<ReferenceScores> ref_;
};

// Resuming measured selection: `cached(v)` fills v.measured (and its stderr)
// from an earlier run's checkpoint and returns true, or returns false;
// `measured(v)` is called after each variant measured here.
struct MeasureHooks {
  std::function<bool(PlanVariant&)> cached;
  std::function<void(const PlanVariant&)> measured;
};

// The variant measured selection ships: of the variants whose mean KL lies
// within `z` paired standard errors of the lowest (the difference taken window
// by window, on the same windows), the one whose bits spread least, the
// lowest mean among equals. The one-standard-error rule of model selection:
// a plan that wins on the calibration windows by less than their noise is not
// known to be better, and plans that concentrate their damage in a few very
// low-bit tensors generalise worst off the calibration text (Gemma 3 270M at
// 3.5 bits: 0.660 vs 0.666 on C4, 0.704 vs 0.600 on wikitext; BENCHMARKS §9).
// Variants without per-window measurements count as tied only with themselves.
size_t choose_measured_variant(const std::vector<PlanVariant>& variants, double z = 2.0);
// The paired standard error of mean(a - b) over windows (0 when they do not pair).
double paired_stderr(const std::vector<double>& a, const std::vector<double>& b);

// Measures every variant and returns choose_measured_variant's pick.
size_t measure_variants(PlanMeasurer& measurer, std::vector<PlanVariant>& variants, bool progress = true,
                        const MeasureHooks& hooks = {});
// The same with the measurer made on first use: a rerun whose every variant
// its checkpoint holds (hooks.cached) never builds one (with GPTQ that
// collects the Gram sums of half the calibration windows).
size_t measure_variants(const std::function<PlanMeasurer&()>& measurer, std::vector<PlanVariant>& variants,
                        bool progress = true, const MeasureHooks& hooks = {});

}  // namespace optiq
