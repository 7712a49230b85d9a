// The profile and plan steps, shared by `optiq profile`, `optiq plan` and
// `optiq auto` (which chains them with quantize and eval).
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "model/model.h"
#include "plan/budget.h"
#include "plan/select.h"
#include "plan/solver.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq::cli {

// The one binder of --calib, --calib-samples, --calib-seq and --seed (profile,
// auto, compare, quantize) to CalibrationOptions.
CLI::Option* add_calibration_options(CLI::App& cmd, CalibrationOptions& c, const std::string& calib_help);
// c with its window length capped at the model's context (a note says so).
CalibrationOptions calibration_for(const Model& m, CalibrationOptions c);

struct ProfileStepArgs {
  CalibrationOptions calib;
  std::string method = "fast";
  std::string candidates = "2,3,4,5,6,8x32,64,128";
  std::string anchors = "auto";
  std::string cache;
};
void add_profile_step_options(CLI::App& cmd, ProfileStepArgs& a);
SensitivityTable run_profile_step(const Model& m, const ProfileStepArgs& a);
void print_profile_table(const SensitivityTable& t);

struct PlanStepArgs {
  std::string bpw, size, reduction, fit;
  int64_t ctx = 0;
  int min_bits = 0;
  std::vector<std::string> pins;
  std::string tie;
  std::string use = "auto";
  std::string baseline;  // empty: optiq's solver; else uniform:qBgG | kquant | dynamic
  // "predicted": the solver's plan; "measured": the best of plan/select.h's
  // variants, measured on the profile's calibration windows.
  std::string select = "predicted";
  int select_windows = 16;  // measured selection uses the first N calibration windows of the profile
};
struct PlanStepResult {
  Solution solution;
  Budget budget;
  PrecisionMap map;
  double bits_per_weight = 0;
  std::vector<PlanVariant> variants;  // select == "measured": all measured, chosen first
};
void add_plan_step_options(CLI::App& cmd, PlanStepArgs& a);
// --use auto|exact|fast as a DamageSource.
DamageSource damage_source(const std::string& use);
// A profile's candidate formats plus float: what a plan may choose from.
std::vector<TensorFormat> plan_formats(const SensitivityTable& t);
PlanStepResult run_plan_step(const ModelConfig& config, const SensitivityTable& t, const PlanStepArgs& a,
                             const std::string& out);
// As run_plan_step; with a.select == "measured" (and no --baseline) the plan is
// chosen by measurement on the calibration windows the profile recorded.
// `measurer` (optional) is reused across calls; else one is made for this call.
PlanStepResult run_plan_step(Model& model, const SensitivityTable& t, const PlanStepArgs& a, const std::string& out,
                             bool progress = true, PlanMeasurer* measurer = nullptr);
// The calibration windows a profile was measured on (its recorded source,
// samples, sequence length and seed).
std::vector<std::vector<int32_t>> profile_calibration_windows(const Model& m, const SensitivityTable& t);
// The windows measured selection uses (the first a.select_windows of those).
std::vector<std::vector<int32_t>> selection_windows(const Model& m, const SensitivityTable& t, const PlanStepArgs& a);
void print_plan_summary(const PlanStepResult& r, const std::string& out);

}  // namespace optiq::cli
