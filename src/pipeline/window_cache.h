// The calibration windows a profile was measured on, kept next to its cache
// file (<profile>.windows) so that a later `optiq plan --select measured` in
// another process measures on the same tokens without reading and
// tokenizing the calibration text again (seconds for a large C4 file and a
// 262k vocabulary). The file records what the windows were made from; a
// mismatch (other model vocabulary, other calibration settings, or a
// calibration file changed since) makes it unusable and the text is
// tokenized again.
//
// Layout: "OPTIQWIN" magic, a u32 JSON header length, the JSON header
// ({"calibration": {...}, "vocab", "windows", "seq", "calib_size",
// "calib_mtime"}), then windows x seq int32 tokens, little-endian.
#pragma once
#include <optional>
#include <string>

#include "pipeline/profile_step.h"
#include "profile/sensitivity.h"

namespace optiq {

std::string window_cache_path(const std::string& profile_path);
// Written atomically; windows must all hold `seq` tokens.
void write_window_cache(const std::string& path, const ProfileSource& source, int vocab, const TokenWindows& w);
// nullopt when the file is missing, malformed or made from something else.
std::optional<TokenWindows> read_window_cache(const std::string& path, const ProfileSource& source, int vocab);

}  // namespace optiq
