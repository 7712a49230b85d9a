// 7-8B-shaped models with random weights built in memory (no file, no
// download), for the GPU benchmarks: the Llama-3-8B and Qwen2.5-7B shapes in
// bf16, uniform affine or a per-module mix of the shape optiq's plans take.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace optiq::bench {

// "llama3-8b" or "qwen2.5-7b"; throws on other names.
ModelConfig shape(const std::string& name);
// Every matrix in the preset's formats: bf16; q8 / q4 (uniform affine, groups
// of 64, fp16 scales and biases); mixed4.5 / mixed3.5 (3..8-bit per module,
// averaging the named bits over what a decode step reads); q4_k_m (GGUF
// Q4_K with Q6_K where llama.cpp's Q4_K_M puts it). Random codes and
// scales of a realistic size (weights ~ 0.02), deterministic.
Model random_model(const ModelConfig& c, const std::string& preset);
// "1,2,3" -> {1, 2, 3}; "a,b" -> {"a", "b"}.
std::vector<int64_t> parse_list(const std::string& s);
std::vector<std::string> parse_names(const std::string& s);

}  // namespace optiq::bench
