// The pipeline steps (src/pipeline/) on stories260K: the profile step hands
// back the windows it measured on, and they are the ones the profile records;
// measured selection on those windows picks the same plan as after
// re-tokenizing; notes and warnings go to the diagnostics sink.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/diagnostics.h"
#include "core/error.h"
#include "pipeline/plan_step.h"
#include "pipeline/profile_step.h"
#include "pipeline/window_cache.h"
#include "profile/calibration.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;
std::string text() { return test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt"; }

ProfileStepOptions small_profile(const std::string& cache = "") {
  ProfileStepOptions o;
  o.calib.source = text();
  o.calib.samples = 6;
  o.calib.seq = 64;
  o.calib.progress = false;
  o.profile.candidates = {AffineFormat{2, 32}, AffineFormat{4, 32}, AffineFormat{8, 32}};
  o.profile.progress = false;
  o.profile.cache_path = cache;
  return o;
}

TEST(PipelineProfileStep, KeepsTheWindowsTheProfileRecords) {
  const Model m = load_model(stories());
  const ProfileStepResult r = run_profile_step(m, small_profile());
  ASSERT_EQ(r.windows.size(), 6u);
  EXPECT_EQ(r.windows, profile_calibration_windows(m, r.table));
  EXPECT_EQ(r.windows, calibration_windows(m, small_profile().calib));
  EXPECT_GT(r.table.count_exact(), 0);
}

TEST(PipelineProfileStep, CapsLongWindowsWithANoteAndNamesAMissingFile) {
  const Model m = load_model(stories());
  CalibrationOptions c = small_profile().calib;
  c.seq = m.config.max_seq + 100;
  {
    CollectDiagnostics diag;
    EXPECT_EQ(calibration_for(m, c).seq, m.config.max_seq);
    EXPECT_NE(diag.text().find("note: calibration windows of"), std::string::npos) << diag.text();
  }
  ProfileStepOptions o = small_profile();
  o.calib.source = test::temp_dir() + "/missing.txt";
  try {
    run_profile_step(m, o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt: calibration file not found"), std::string::npos) << e.what();
  }
}

TEST(PipelineProfileStep, FewWindowsWarnThroughTheSink) {
  const Model m = load_model(stories());
  const std::string small = test::temp_dir() + "/small.txt";
  {
    std::ifstream in(text());
    std::string s(3000, '\0');
    in.read(s.data(), static_cast<std::streamsize>(s.size()));
    std::ofstream(small) << s.substr(0, static_cast<size_t>(in.gcount()));
  }
  CalibrationOptions c = small_profile().calib;
  c.source = small;
  c.samples = 1000;
  CollectDiagnostics diag;
  const auto w = calibration_windows(m, c);
  EXPECT_LT(w.size(), 1000u);
  EXPECT_NE(diag.text().find("warning: " + small + " holds only"), std::string::npos) << diag.text();
}

TEST(PipelineProfileStep, WindowCacheServesALaterPlanWithoutTheText) {
  const Model m = load_model(stories());
  const std::string dir = test::temp_dir();
  const std::string calib = dir + "/calib.txt", cache = dir + "/p.profile.json";
  {
    std::ifstream in(text());
    std::ofstream(calib) << in.rdbuf();
  }
  ProfileStepOptions o = small_profile(cache);
  o.calib.source = calib;
  const ProfileStepResult r = run_profile_step(m, o);
  ASSERT_TRUE(test::file_exists(window_cache_path(cache)));
  const SensitivityTable t = SensitivityTable::read(cache, m.config);
  EXPECT_EQ(profile_calibration_windows(m, t, cache), r.windows);
  std::filesystem::remove(calib);  // the text is gone: the cache still serves
  EXPECT_EQ(profile_calibration_windows(m, t, cache), r.windows);
  EXPECT_THROW(profile_calibration_windows(m, t), Error);  // without the cache: needs the text
  // Another vocabulary or calibration: not used.
  EXPECT_FALSE(read_window_cache(window_cache_path(cache), t.source, m.config.vocab_size + 1).has_value());
  ProfileSource other = t.source;
  other.calib.seed += 1;
  EXPECT_FALSE(read_window_cache(window_cache_path(cache), other, m.config.vocab_size).has_value());
  // A changed text: a warning, and the text is tokenized again.
  std::ofstream(calib) << "Once upon a time there was a new text. " << std::string(20000, 'a');
  {
    CollectDiagnostics diag;
    EXPECT_FALSE(read_window_cache(window_cache_path(cache), t.source, m.config.vocab_size).has_value());
    EXPECT_NE(diag.text().find("changed since the profile"), std::string::npos) << diag.text();
  }
  // A header whose integers are out of range (1e22 windows: undefined
  // behaviour through get<int>() before) is ignored, never trusted.
  std::filesystem::remove(calib);  // (no text: the cache is judged on its own)
  ASSERT_TRUE(read_window_cache(window_cache_path(cache), t.source, m.config.vocab_size).has_value());
  {
    std::ifstream in(window_cache_path(cache), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find("\"windows\":");
    ASSERT_NE(at, std::string::npos);
    const size_t end = bytes.find_first_of(",}", at);
    const std::string field = "\"windows\":1e22";
    std::string hostile = bytes.substr(0, at) + field + bytes.substr(end);
    uint32_t len = 0;  // the header length after the 8-byte magic
    std::memcpy(&len, bytes.data() + 8, 4);
    len = static_cast<uint32_t>(len - (end - at) + field.size());
    std::memcpy(hostile.data() + 8, &len, 4);
    std::ofstream(window_cache_path(cache), std::ios::binary | std::ios::trunc) << hostile;
  }
  EXPECT_FALSE(read_window_cache(window_cache_path(cache), t.source, m.config.vocab_size).has_value());
  // A truncated cache is ignored, never trusted.
  std::filesystem::resize_file(window_cache_path(cache), 40);
  EXPECT_FALSE(read_window_cache(window_cache_path(cache), t.source, m.config.vocab_size).has_value());
}

// Measured selection of 8-bit plans on 4 of the profile's windows.
PlanStepOptions measured_at_8_bits() {
  PlanStepOptions o;
  o.budget.bpw = "8";
  o.select = PlanSelection::Measured;
  o.select_windows = 4;
  o.progress = false;
  return o;
}

TEST(PipelinePlanStep, MeasuredSelectionOnTheProfilesWindowsEqualsRetokenized) {
  const Model m = load_model(stories());
  const ProfileStepResult prof = run_profile_step(m, small_profile());
  PlanStepOptions o = measured_at_8_bits();
  const PlanStepResult a = run_plan_step(m, prof.table, o, "", {.windows = &prof.windows});
  const PlanStepResult b = run_plan_step(m, prof.table, o, "");
  ASSERT_FALSE(a.variants.empty());
  EXPECT_EQ(a.map.formats, b.map.formats);
  EXPECT_EQ(a.variants.front().name, b.variants.front().name);
  EXPECT_DOUBLE_EQ(a.variants.front().measured, b.variants.front().measured);
  EXPECT_EQ(selection_windows(m, prof.table, o, &prof.windows).size(), 4u);
  // Every variant uses only the profile's candidates (or float).
  const auto formats = plan_formats(prof.table);
  for (const auto& v : a.variants)
    for (const auto& [path, f] : v.map.formats)
      EXPECT_NE(std::find(formats.begin(), formats.end(), f), formats.end()) << v.name << " " << path;
}

// A rerun whose checkpoint holds every variant's measurement measures nothing
// and so never builds a measurer: here one could not be built (no windows,
// no profile file to take them from), and the rerun still picks the same plan.
TEST(PipelinePlanStep, ResumedSelectionWithEveryPlanMeasuredBuildsNoMeasurer) {
  const Model m = load_model(stories());
  const ProfileStepResult prof = run_profile_step(m, small_profile());
  PlanStepOptions o = measured_at_8_bits();
  o.provenance = {{"source", "stories"}, {"options", nlohmann::json::object()}};
  const std::string ckpt = test::temp_dir() + "/plan.json.partial";
  const PlanStepResult a = run_plan_step(m, prof.table, o, "", {.windows = &prof.windows, .checkpoint = ckpt});
  ASSERT_TRUE(std::filesystem::exists(ckpt));
  // The same profile, its calibration text gone: no windows to measure on.
  SensitivityTable gone = prof.table;
  gone.source.calib.source = test::temp_dir() + "/no-such-text.txt";
  const std::string no_profile = test::temp_dir() + "/no-such-profile.json";
  const PlanStepResult b = run_plan_step(m, gone, o, "", {.profile_path = no_profile, .checkpoint = ckpt});
  EXPECT_EQ(a.map.formats, b.map.formats);
  EXPECT_DOUBLE_EQ(a.variants.front().measured, b.variants.front().measured);
  // Without the checkpoint the same call has to measure, and cannot.
  std::filesystem::remove(ckpt);
  EXPECT_THROW(run_plan_step(m, gone, o, "", {.profile_path = no_profile}), Error);
}

// Plans with GPTQ'd matrices are measured on calibration windows GPTQ was not
// fitted to: the first half (capped by select_windows), GPTQ fitted to the rest.
TEST(PipelinePlanStep, MeasuredSelectionHoldsGptqsFittingWindowsOut) {
  TokenWindows six;
  for (int i = 0; i < 6; ++i) six.push_back({i, i + 1, i + 2});
  auto [sel, fit] = split_selection_windows(six, 16);
  EXPECT_EQ(sel, TokenWindows(six.begin(), six.begin() + 3));
  EXPECT_EQ(fit, TokenWindows(six.begin() + 3, six.end()));
  std::tie(sel, fit) = split_selection_windows(six, 2);
  EXPECT_EQ(sel.size(), 2u);
  EXPECT_EQ(fit, TokenWindows(six.begin() + 2, six.end()));
  std::tie(sel, fit) = split_selection_windows(TokenWindows(six.begin(), six.begin() + 1), 16);
  EXPECT_EQ(sel.size(), 1u);
  EXPECT_TRUE(fit.empty());

  const Model m = load_model(stories());
  ProfileStepOptions po = small_profile();
  po.profile.gptq = true;
  const ProfileStepResult prof = run_profile_step(m, po);
  ASSERT_TRUE(profile_uses_method(prof.table, "gptq"));
  PlanStepOptions o;
  o.budget.bpw = "7";
  o.select = PlanSelection::Measured;
  o.progress = false;
  const PlanStepResult r = run_plan_step(m, prof.table, o, "", {.windows = &prof.windows});
  ASSERT_GE(r.variants.size(), 2u);
  for (const auto& v : r.variants) {
    EXPECT_TRUE(std::isfinite(v.measured)) << v.name;
    EXPECT_GE(v.measured, r.variants.front().measured) << v.name;  // the chosen one first
  }
  // The held-out measurement differs from one on GPTQ's own windows (the
  // export's statistics over every window, as before).
  bool gptq = false;
  for (const auto& [path, method] : r.map.methods) gptq = gptq || method == "gptq";
  ASSERT_TRUE(gptq) << "the chosen plan has no GPTQ'd matrix: nothing to hold out";
  const CalibrationStats all = profiled_rounding_stats(m, prof.table, prof.windows, false);
  PlanStepOptions three = o;
  three.select_windows = 3;
  PlanMeasurer in_sample(m, selection_windows(m, prof.table, three, &prof.windows), std::nullopt, all);
  EXPECT_NE(in_sample.measure(r.map).first, r.variants.front().measured);

  // One window: nothing to hold out, so measured in-sample, but still with
  // GPTQ's Gram sums (the plain search's numbers would be measuring a
  // rounding the export does not ship).
  po.calib.samples = 1;
  const ProfileStepResult one = run_profile_step(m, po);
  ASSERT_EQ(one.windows.size(), 1u);
  o.select_windows = 0;
  const std::unique_ptr<PlanMeasurer> measurer = make_plan_measurer(m, one.table, o, {.windows = &one.windows});
  PlanMeasurer with_grams(m, one.windows, std::nullopt, profiled_rounding_stats(m, one.table, one.windows, false));
  EXPECT_EQ(measurer->measure(r.map).first, with_grams.measure(r.map).first);
  EXPECT_NE(PlanMeasurer(m, one.windows).measure(r.map).first, with_grams.measure(r.map).first);
}

TEST(PipelinePlanStep, PredictedPlanWithinBudgetAndNamesDamageSource) {
  const Model m = load_model(stories(), {.load_weights = false});
  const Model full = load_model(stories());
  const ProfileStepResult prof = run_profile_step(full, small_profile());
  PlanStepOptions o;
  o.budget.bpw = "6";
  o.damage = DamageSource::Fast;
  const std::string out = test::temp_dir() + "/plan.json";
  const PlanStepResult r = run_plan_step(m.config, prof.table, o, out);
  EXPECT_LE(r.solution.bytes, r.budget.weight_bytes);
  EXPECT_TRUE(test::file_exists(out));
  EXPECT_EQ(damage_source_name(DamageSource::Exact), "exact");
  std::ifstream in(out);
  const std::string plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(plan.find("damage fast"), std::string::npos);
}

}  // namespace
}  // namespace optiq
