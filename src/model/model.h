// A loaded model: hyper-parameters, weights in runtime storage, tokenizer,
// and the table of tensors as the source file stores them (for `optiq info`).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/precision.h"
#include "tokenizer/tokenizer.h"

namespace optiq {

class HfCheckpoint;

// Norm weights are the multipliers themselves (HF Gemma's stored w is kept
// as 1 + w). Optional pieces are empty when the family has none.
struct LayerWeights {
  std::vector<float> attn_norm;  // before attention (input_layernorm)
  std::vector<float> ffn_norm;   // before the MLP (Llama post_attention_layernorm, Gemma pre_feedforward_layernorm)
  std::vector<float> post_attn_norm, post_ffn_norm;  // after attention / MLP (Gemma 3)
  std::vector<float> q_norm, k_norm;  // per-head RMSNorm, head_dim values (Qwen3, Gemma 3)
  std::vector<float> bq, bk, bv;      // q/k/v biases (Qwen2)
  Linear wq, wk, wv, wo;         // q/k rows in HF (rotate-half) order
  Linear w_gate, w_up, w_down;
  // Phi-3 keeps q/k/v and gate/up fused (rows q, k, v / gate, up): wq..wv
  // and w_gate/w_up are empty then.
  Linear wqkv, w_gate_up;
};

struct ModelWeights {
  Linear embed;  // {vocab, dim}
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;
  Linear lm_head;  // empty when tied: output() is then the embedding
  const Linear& output() const { return lm_head.empty() ? embed : lm_head; }
};

// A tensor as the source file stores it.
struct SourceTensor {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype;
  size_t bytes;
};

enum class SourceFormat { Gguf, HfDir, Llama2c };

struct Model {
  std::string path;
  SourceFormat format = SourceFormat::Gguf;
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<SourceTensor> source_tensors;
  // Formats of the quantizable modules as stored (empty unless the model was
  // quantized by optiq or loaded from an MLX-quantized directory).
  PrecisionMap precision;
  // Reproduce llama.cpp's CPU numerics (LoadOptions::llamacpp_numerics).
  bool llamacpp_numerics = false;
  // Mapped source files that borrowed weight views point into.
  std::shared_ptr<const void> keepalive;
  // An HfDir model's checkpoint (formats/hf_checkpoint.h), held by keepalive:
  // where its borrowed weights lie in which file. nullptr for other sources.
  const HfCheckpoint* hf_checkpoint = nullptr;

  int64_t parameter_count() const;
  size_t source_bytes() const;  // sum of source tensor bytes
};

// The Linear of a quantizable module (model/precision.h).
Linear& module_linear(ModelWeights& w, const ModuleInfo& m);
const Linear& module_linear(const ModelWeights& w, const ModuleInfo& m);

struct LoadOptions {
  std::string tokenizer_path = {};  // llama2.c checkpoints: tokenizer.bin
  bool load_weights = true;    // false: config, tokenizer and tensor table only (fast `info`)
  // GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 matrices run packed (bit-exact re-layout to
  // affine groups) unless this asks for fp32 copies of every weight.
  bool dequantize = false;
  // Round as llama.cpp's CPU backend does: activations to 8-bit blocks before
  // quantized products (Q8_0/Q8_1/Q8_K), fp16 KV cache, fp16 attention inputs.
  // For cross-checks against llama.cpp; optiq's default keeps fp32.
  bool llamacpp_numerics = false;
};

// MODEL is a HF directory, a .gguf file, or a llama2.c .bin (with
// options.tokenizer_path). Throws optiq::Error naming the file and problem.
Model load_model(const std::string& path, const LoadOptions& options = {});

std::string_view format_name(SourceFormat f);

}  // namespace optiq
