#include "pipeline/profile_step.h"

#include <filesystem>

#include "core/diagnostics.h"
#include "core/error.h"
#include "pipeline/window_cache.h"

namespace optiq {

CalibrationOptions calibration_for(const Model& m, CalibrationOptions co) {
  if (co.seq > m.config.max_seq) {
    note("calibration windows of {} tokens capped at the model's context of {}", co.seq, m.config.max_seq);
    co.seq = m.config.max_seq;
  }
  return co;
}

ProfileStepResult run_profile_step(const Model& m, ProfileStepOptions opt) {
  const CalibrationOptions co = calibration_for(m, opt.calib);
  if (co.source != "self") {
    std::error_code ec;
    check(std::filesystem::is_regular_file(co.source, ec), "{}: calibration file not found", co.source);
  }
  opt.profile.source = make_profile_source(m.path, co);
  ProfileStepResult r;
  r.windows = calibration_windows(m, co);
  r.table = profile_model(m, r.windows, opt.profile);
  if (!opt.profile.cache_path.empty())
    write_window_cache(window_cache_path(opt.profile.cache_path), r.table.source, m.config.vocab_size, r.windows);
  return r;
}

TokenWindows profile_calibration_windows(const Model& m, const SensitivityTable& t, const std::string& profile_path) {
  if (!profile_path.empty())
    if (auto w = read_window_cache(window_cache_path(profile_path), t.source, m.config.vocab_size)) return *w;
  const CalibrationOptions& co = t.source.calib;
  check(!co.source.empty() && co.samples > 0 && co.seq > 0,
        "the profile does not record its calibration text: run `optiq profile` again");
  std::error_code ec;
  check(co.source == "self" || std::filesystem::is_regular_file(co.source, ec),
        "{}: the profile's calibration text is gone; measured selection needs it", co.source);
  return calibration_windows(m, co);
}

}  // namespace optiq
