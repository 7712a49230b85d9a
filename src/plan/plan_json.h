// The plan file written by `optiq plan` / `optiq auto`: PrecisionMap's JSON
// (docs/plan-format.md: "format", "version", "tensors") plus metadata that
// PrecisionMap::from_plan_json ignores:
//   "budget":          the budget as asked, e.g. "--bpw 4.5: 4.213 GB of weights ..."
//   "predicted_kl":    predicted damage of the plan (null when unknown, e.g. baselines)
//   "bits_per_weight": plan_bytes * 8 / all weight parameters (norms included)
//   "bytes":           plan_bytes (weights incl. fp16 norms)
//   "method":          who made it, e.g. "optiq dp+greedy", "Q4_K_M g64", "dynamic ..."
//   "lower_bound_kl", "gap_kl": the solver's certificate, when given.
//   "fallbacks":       module path -> "q4_k→q5_0" for each k-quant stored as
//                      llama.cpp's fallback (rows its 256-blocks do not divide)
//   "calib_kl", "variants": measured selection (plan/select.h): the chosen plan's
//                      mean KL on the calibration windows, and every variant's
//                      name, predicted and measured KL.
//   "memory":          a --fit budget: the plan's weights and what the runtime
//                      holds besides them (plan/memory_fit.h memory_fit_json).
//   "optiq":           how the plan was made (model/provenance.h: version,
//                      command, source files and their SHA-256, options).
#pragma once
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "model/config.h"
#include "model/precision.h"
#include "plan/budget.h"

namespace optiq {

struct PlanMetadata {
  std::string budget;
  std::optional<double> predicted_kl;
  std::string method;
  std::optional<double> lower_bound_kl;
  std::optional<double> gap_kl;
  std::optional<double> calib_kl;
  nlohmann::json* variants = nullptr;  // optional array, copied into the file
  const nlohmann::json* provenance = nullptr;  // "optiq"; null: the version alone
  const Budget* fit = nullptr;  // a --fit budget (with a MemoryBreakdown): "memory"
  const nlohmann::json* decode_speed = nullptr;  // "decode_speed": the speed bound and prediction
};

// Full plan JSON (bytes and bits_per_weight computed from config + map).
nlohmann::json plan_json(const PrecisionMap& map, const ModelConfig& config, const PlanMetadata& meta);
// Writes plan_json atomically (temp file + rename).
void write_plan(const std::string& path, const PrecisionMap& map, const ModelConfig& config, const PlanMetadata& meta);

}  // namespace optiq
