// What a plan's formats cost in another runtime's speed, where that was
// measured (BENCHMARKS.md §8): notes for the plan summary, so that the
// planner never picks a slow mix without saying so.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/format.h"

namespace optiq {

// One line per concern (empty when none). Today: a GGUF plan whose weights
// are largely Q5_0/Q5_1 (k-quants stored as llama.cpp's fallback on rows 256
// does not divide), which llama.cpp's CPU decodes slower per byte than its
// own mixes of the same size.
std::vector<std::string> llamacpp_speed_notes(const ModelConfig& config,
                                              const std::map<std::string, TensorFormat>& formats);

}  // namespace optiq
