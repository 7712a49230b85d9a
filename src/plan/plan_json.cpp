#include "plan/plan_json.h"

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "model/provenance.h"
#include "plan/budget.h"
#include "plan/memory_fit.h"

namespace optiq {

nlohmann::json plan_json(const PrecisionMap& map, const ModelConfig& config, const PlanMetadata& meta) {
  nlohmann::json j = map.to_plan_json();
  const int64_t bytes = plan_bytes(config, map);
  j["budget"] = meta.budget;
  j["predicted_kl"] = meta.predicted_kl ? nlohmann::json(*meta.predicted_kl) : nlohmann::json(nullptr);
  j["bits_per_weight"] = double(bytes) * 8.0 / double(total_weight_params(config));
  j["bytes"] = bytes;
  j["method"] = meta.method;
  if (meta.lower_bound_kl) j["lower_bound_kl"] = *meta.lower_bound_kl;
  if (meta.gap_kl) j["gap_kl"] = *meta.gap_kl;
  if (meta.calib_kl) j["calib_kl"] = *meta.calib_kl;
  if (meta.variants) j["variants"] = *meta.variants;
  if (meta.fit && meta.fit->memory) j["memory"] = memory_fit_json(*meta.fit, config, map.formats);
  if (meta.decode_speed) j["decode_speed"] = *meta.decode_speed;
  j["optiq"] = provenance_or_version(meta.provenance ? *meta.provenance : nlohmann::json());
  // Where a k-quant's blocks do not divide a row the file holds llama.cpp's
  // fallback type: say so per tensor ("q4_k→q5_0").
  nlohmann::json fallbacks = nlohmann::json::object();
  for (const auto& m : quantizable_modules(config)) {
    auto it = map.formats.find(m.path);
    if (it != map.formats.end() && !(format_for_shape(it->second, m.cols) == it->second))
      fallbacks[m.path] = tensor_format_label(it->second, m.cols);
  }
  if (!fallbacks.empty()) j["fallbacks"] = fallbacks;
  return j;
}

void write_plan(const std::string& path, const PrecisionMap& map, const ModelConfig& config, const PlanMetadata& meta) {
  const std::string text = plan_json(map, config, meta).dump(2) + "\n";
  write_file_atomic(path, text);
}

}  // namespace optiq
