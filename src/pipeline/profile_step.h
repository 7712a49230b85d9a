// The profile step of the pipeline (optiq profile, auto, compare): the
// calibration windows of a model, then its sensitivity table (resumed from
// and written to a cache file). The windows are returned too, so that a plan
// step in the same process measures on them without tokenizing again.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"

namespace optiq {

using TokenWindows = std::vector<std::vector<int32_t>>;

struct ProfileStepOptions {
  CalibrationOptions calib;
  ProfileOptions profile;  // profile.source is filled in by the step
};

struct ProfileStepResult {
  SensitivityTable table;
  TokenWindows windows;  // what the table was measured on
};

// A calibration window longer than the model's context is capped at it (a
// note says so); a missing calibration file is an error naming it.
ProfileStepResult run_profile_step(const Model& model, ProfileStepOptions opt);

// The calibration options capped at the model's context.
CalibrationOptions calibration_for(const Model& model, CalibrationOptions c);

// The windows a profile recorded it was measured on (source, samples,
// sequence length, seed), for a plan step in another process: read from the
// profile's window cache (pipeline/window_cache.h) when `profile_path` names
// a profile that has one, else tokenized again from the calibration text.
// The profile step writes the cache next to its profile file.
TokenWindows profile_calibration_windows(const Model& model, const SensitivityTable& t,
                                         const std::string& profile_path = "");

}  // namespace optiq
