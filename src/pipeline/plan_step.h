// The plan step of the pipeline (optiq plan, auto, compare): a budget and a
// sensitivity table in, one format per tensor out (written as a plan file,
// docs/plan-format.md). Either the solver's plan (predicted damage), a
// baseline rule of the same budget, or (measured selection) the best of a few
// plans of that budget measured on calibration windows.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/calibration_stats.h"
#include "model/model.h"
#include "pipeline/profile_step.h"
#include "plan/budget.h"
#include "plan/decode_speed.h"
#include "plan/select.h"
#include "plan/solver.h"
#include "profile/sensitivity.h"

namespace optiq {

enum class PlanSelection { Predicted, Measured };
enum class TieGroups { None, Qkv, QkvGateUp };  // formats shared by q/k/v (and gate/up) of a layer

struct PlanStepOptions {
  BudgetOptions budget;
  int min_bits = 0;
  std::vector<Pin> pins;
  TieGroups tie = TieGroups::None;
  DamageSource damage = DamageSource::Auto;
  // Empty: optiq's solver; else a baseline spec (plan/baselines.h):
  // uniform:qBgG | kquant[:MIX] | dynamic[:LOW/HIGH].
  std::string baseline;
  PlanSelection select = PlanSelection::Predicted;
  int select_windows = 16;  // measured selection: the first N calibration windows (0: all)
  // A decode-speed bound (plan/decode_speed.h): < 0 none; else every plan
  // (solver variants and baselines alike) is predicted by `speed` to decode no
  // slower than (1 + max_slowdown) x llama.cpp's own file of the size
  // (llamacpp_speed_reference: its mixes interpolated in bytes). Auto (max_slowdown_auto): 0.05 when every candidate of
  // the profile is a GGUF block type (a plan for llama.cpp), else none.
  double max_slowdown = -1;
  bool max_slowdown_auto = false;
  DecodeSpeedModel speed = llamacpp_cpu_speed_model();
  bool progress = true;
  nlohmann::json provenance{};  // the plan file's "optiq" object (model/provenance.h); null: the version alone
};

struct PlanStepResult {
  Solution solution;
  Budget budget;
  PrecisionMap map;
  double bits_per_weight = 0;
  std::vector<PlanVariant> variants;  // measured selection: all measured, the chosen one first
  // With a decode-speed bound: the reference, the bound and the plan's predicted time.
  std::optional<SpeedReference> speed_reference;
  double max_ns = 0;
  double predicted_ns = 0;
  std::vector<std::string> notes;  // what the user should know about the plan (also in the plan file's summary)
};

std::string_view damage_source_name(DamageSource d);  // "auto", "exact", "fast"
// The plan file's "decode_speed" object of a result made with a speed bound
// (null without one): reference, bound and prediction relative to it.
nlohmann::json decode_speed_json(const PlanStepResult& r, const DecodeSpeedModel& speed);
// A profile's candidate formats plus float: what a plan may choose from.
std::vector<TensorFormat> plan_formats(const SensitivityTable& t);

// The solver's plan or a baseline (measured selection is not done: it needs
// the weights). `out` empty: no plan file.
PlanStepResult run_plan_step(const ModelConfig& config, const SensitivityTable& t, const PlanStepOptions& opt,
                             const std::string& out);

// What measured selection needs besides the model: the calibration windows
// (the profile step's, when it ran in this process; else they are tokenized
// again from what the table records) and optionally a measurer shared by
// several plan steps (its reference pass and quantized tensors are reused).
struct SelectionContext {
  const TokenWindows* windows = nullptr;
  PlanMeasurer* measurer = nullptr;
  std::string profile_path = {};  // without windows: where the profile (and its window cache) is
  // The statistics of the roundings the profile chose, over every
  // calibration window (the export's: profiled_rounding_stats); null:
  // collected here when needed.
  const CalibrationStats* stats = nullptr;
  // Measured selection, resumable (optiq auto: "<plan>.partial"): each
  // variant's measured KL is added to this checkpoint (rewritten atomically)
  // as it is measured; a run with the same source, options and optiq version
  // takes the variants measured there and measures the rest. The caller
  // removes it when its work is done (auto: after the export, so that a run
  // interrupted in the export does not measure again). Empty, or no
  // provenance in the options: none.
  std::string checkpoint = {};
};

// The rounding the profile measured for each chosen format ("gptq" where GPTQ
// gave the smaller proxy) into map.methods, so that export and measurement
// quantize as profiled.
void assign_profiled_methods(PrecisionMap& map, const SensitivityTable& t);
// Whether any (module, format) of the profile was measured with `method`
// ("gptq", "weighted").
bool profile_uses_method(const SensitivityTable& t, const std::string& method);

// The calibration statistics the roundings the profile chose need (Gram sums
// for GPTQ, energies for the weighted search; empty for the plain search),
// over `windows`: what the export and measured selection quantize with.
CalibrationStats profiled_rounding_stats(const Model& model, const SensitivityTable& t, const TokenWindows& windows,
                                         bool progress);

// A measurer for measured selection (shared by several plan steps when the
// caller keeps it): the selection windows, and the statistics of the
// roundings the profile chose (ctx.stats, else collected over the profile's
// calibration windows). With GPTQ among them: split_selection_windows.
std::unique_ptr<PlanMeasurer> make_plan_measurer(const Model& model, const SensitivityTable& t,
                                                 const PlanStepOptions& opt, const SelectionContext& ctx);

// Measured selection of plans with GPTQ'd matrices: the first half of the
// calibration windows (at most select_windows of them; > 0) to measure on,
// the rest to fit GPTQ to, so that no plan is measured on its own fitting data.
std::pair<TokenWindows, TokenWindows> split_selection_windows(const TokenWindows& all, int select_windows);

// As above; with opt.select == Measured (and no baseline) the plan is chosen
// by measurement.
PlanStepResult run_plan_step(const Model& model, const SensitivityTable& t, const PlanStepOptions& opt,
                             const std::string& out, SelectionContext ctx = {});

// The windows measured selection uses: the first opt.select_windows of
// `windows` (or of the profile's recorded ones when null).
TokenWindows selection_windows(const Model& model, const SensitivityTable& t, const PlanStepOptions& opt,
                               const TokenWindows* windows = nullptr, const std::string& profile_path = "");

}  // namespace optiq
