// Internal to src/profile: the table helpers profile_model.cpp shares with
// sensitivity.cpp (not part of the library's interface).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "profile/sensitivity.h"

namespace optiq::profile_detail {

// Anchor format of a module: among fitting candidates with >= 3 bits, the fewest
// bits, then the group size closest to 64; with none >= 3 bits, the most bits.
std::string pick_anchor(const std::vector<TensorFormat>& fits);
// The candidates whose group size divides `cols`.
// The candidates module m can take, the candidate `source` resolved to m's
// source type (and left out where m has none).
std::vector<TensorFormat> fitting(const std::vector<TensorFormat>& cands, const ModuleInfo& m);
// A table with every module of `c` and no measurements yet.
SensitivityTable empty_table(const ModelConfig& c, const std::vector<TensorFormat>& candidates);

}  // namespace optiq::profile_detail
