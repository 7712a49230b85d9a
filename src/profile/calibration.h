// Calibration token windows: deterministic samples of a text corpus (plain
// text, or .jsonl with a "text" field per line), or text the model writes
// itself (`--calib self`) for users with no data.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace optiq {

struct CalibrationOptions {
  std::string source;  // a file, or "self"
  int samples = 128;   // windows
  int seq = 512;       // tokens per window (BOS first when the tokenizer adds one)
  uint64_t seed = 0;
  bool progress = true;
};

// The text of a calibration file: plain text as is; .jsonl joins the "text"
// fields with blank lines. Throws "<path>: ..." on unreadable or malformed input.
std::string read_calibration_text(const std::string& path);

// `samples` windows of `seq` tokens, chosen by `seed` among the non-overlapping
// windows of the tokenized text (all of them, in a seeded order, when the text
// has fewer; a warning goes to the diagnostics sink, core/diagnostics.h). With source "self", the model samples
// its own text (temperature 1) from BOS.
std::vector<std::vector<int32_t>> calibration_windows(const Model& model, const CalibrationOptions& opt);

// True when two paths name the same file (evaluation must not use calibration text).
bool same_file(const std::string& a, const std::string& b);

}  // namespace optiq
