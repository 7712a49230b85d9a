// Architecture hyper-parameters, read from HF config.json, GGUF metadata or a
// llama2.c header into one struct, so that the forward pass never looks at a
// file format.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace optiq {

class GgufFile;
struct Llama2cHeader;

enum class RopeScalingType { None, Linear, Llama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;    // llama3
  float high_freq_factor = 4.0f;   // llama3
  int original_max_position = 8192;  // llama3
};

struct ModelConfig {
  std::string arch = "llama";  // HF model_type / GGUF general.architecture
  std::string name;            // human-readable, if the file says
  int dim = 0;                 // hidden size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int hidden_dim = 0;          // MLP intermediate size
  int vocab_size = 0;
  int max_seq = 2048;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  std::vector<float> rope_freq_factors;  // GGUF rope_freqs: inv_freq[i] /= factor[i]
  bool tied_embeddings = false;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Throws "<source>: <what is inconsistent>" for shapes the forward pass cannot run.
  void validate(const std::string& source) const;
  // Short description of detected quirks, e.g. "llama3 rope scaling x8".
  std::vector<std::string> quirks() const;
};

ModelConfig config_from_hf(const nlohmann::json& config, const std::string& source);
ModelConfig config_from_gguf(const GgufFile& gguf);
ModelConfig config_from_llama2c(const Llama2cHeader& header);

}  // namespace optiq
