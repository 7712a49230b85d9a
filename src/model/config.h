// Architecture hyper-parameters, read from HF config.json, GGUF metadata or a
// llama2.c header into one struct, so that the forward pass never looks at a
// file format. Family quirks (Qwen's q/k/v bias, Gemma's sandwich norms, ...)
// are plain fields here: the forward pass switches on what a model does, not
// on which family it belongs to.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/tensor.h"

namespace optiq {

class GgufFile;
struct Llama2cHeader;

enum class RopeScalingType { None, Linear, Llama3, LongRope };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;    // llama3
  float high_freq_factor = 4.0f;   // llama3
  int original_max_position = 8192;  // llama3, longrope
  // longrope (Phi-3 "su"): per-frequency divisors for short and long contexts,
  // and the factor cos/sin are multiplied by.
  std::vector<float> short_factor, long_factor;
  float attn_factor = 1.0f;
};

enum class Activation { SiLU, GeluTanh };  // of the gate in gate(x) * up(x)

struct ModelConfig {
  std::string arch = "llama";  // HF model_type / GGUF general.architecture
  std::string family = "Llama";  // human-readable family name
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

  // --- family quirks ---
  Activation activation = Activation::SiLU;
  bool qkv_bias = false;        // Qwen2: q/k/v projections have biases
  bool qk_norm = false;         // Qwen3, Gemma 3: RMSNorm over each q/k head before RoPE
  bool fused_qkv = false;       // Phi-3: one qkv_proj and one gate_up_proj matrix
  bool sandwich_norms = false;  // Gemma 3: RMSNorm after attention and MLP as well as before
  // The family's HF layout stores RMSNorm weights as w for a (1 + w)
  // multiplier (Gemma). optiq keeps the multiplier itself in memory: HF
  // loading adds 1, MLX export subtracts it. (llama.cpp's converter already
  // stores 1 + w in GGUF files, so GGUF loading adds nothing.)
  bool norm_offset_one = false;
  // Gemma: activations outgrow fp16's range, so MLX exports store scales and
  // float tensors in bf16 by default (mlx-lm computes in the stored type).
  bool prefers_bf16 = false;
  int rotary_dim = 0;           // rotated dims per head (partial rotary); 0 = head_dim
  float embed_scale = 1.0f;     // embedding rows are multiplied by this (Gemma: sqrt(dim))
  float attn_scale = 0.0f;      // q.k multiplier; 0 = 1/sqrt(head_dim)
  float attn_softcap = 0.0f;    // scores -> cap*tanh(s/cap) when > 0
  float final_softcap = 0.0f;   // logits -> cap*tanh(l/cap) when > 0
  // Sliding-window attention: per layer, 0 = attends to the whole context,
  // w > 0 = attends to the last w positions (itself included). Empty = none.
  std::vector<int> layer_window;
  float rope_theta_local = 0.0f;  // RoPE base of sliding-window layers; 0 = rope_theta
  // GGUF only: q/k rows interleave the rotary halves (llama.cpp "norm" rope).
  bool gguf_interleaved_rope = true;
  // GGUF only: the type each 2-D tensor is stored in, by GGUF tensor name
  // ("blk.0.attn_q.weight" -> Q4_K): what the candidate `source` keeps
  // (ModuleInfo::source_type). Empty for other sources.
  std::map<std::string, DType> gguf_types;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int rot_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
  int window(int layer) const { return layer_window.empty() ? 0 : layer_window[layer]; }
  // Sliding-window layers use their own RoPE base (and no long-context scaling).
  bool local_rope(int layer) const { return rope_theta_local > 0.0f && window(layer) > 0; }
  float attention_scale() const;
  // The widest sliding window (0: none).
  int max_window() const;
  // Gemma 3's period of windowed and global layers: layer i is global when
  // i % p == p - 1 (llama.cpp's set_swa_pattern); 0 when no period fits.
  int global_layer_period() const;
  // validate()'s bound on n_layers; readers check it before they size per-layer lists.
  static constexpr int kMaxLayers = 4096;
  // Throws "<source>: <what is inconsistent>" for shapes the forward pass cannot run.
  void validate(const std::string& source) const;
  // Short description of detected quirks, e.g. "llama3 rope scaling x8".
  std::vector<std::string> quirks() const;
};

ModelConfig config_from_hf(const nlohmann::json& config, const std::string& source);
ModelConfig config_from_gguf(const GgufFile& gguf);
ModelConfig config_from_llama2c(const Llama2cHeader& header);

// Supported HF model_type values / GGUF architectures (for error messages).
const char* supported_hf_model_types();
const char* supported_gguf_architectures();

}  // namespace optiq
