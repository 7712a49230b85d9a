// What an exported Hugging Face / MLX directory holds besides the weight
// matrices: config.json for the model's family, and the small float tensors
// (norms in the family's HF layout, biases) under their HF names.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"

namespace optiq {

// config.json of model `m` (no "quantization" entry); bf16 picks torch_dtype.
// Throws for configs HF/mlx-lm cannot express.
nlohmann::json hf_export_config(const Model& m, bool bf16);

// Norm weights (HF Gemma's w = multiplier - 1) and biases, by HF name.
std::vector<std::pair<std::string, std::vector<float>>> hf_export_vectors(const Model& m);

}  // namespace optiq
