#include "model/hf_export.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"

namespace optiq {

namespace {

using nlohmann::json;

json rope_scaling_json(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  switch (rs.type) {
    case RopeScalingType::None: return nullptr;
    case RopeScalingType::Linear: return {{"rope_type", "linear"}, {"type", "linear"}, {"factor", rs.factor}};
    case RopeScalingType::Llama3:
      return {{"rope_type", "llama3"},
              {"factor", rs.factor},
              {"low_freq_factor", rs.low_freq_factor},
              {"high_freq_factor", rs.high_freq_factor},
              {"original_max_position_embeddings", rs.original_max_position}};
    case RopeScalingType::LongRope:
      return {{"type", "longrope"}, {"rope_type", "longrope"}, {"short_factor", rs.short_factor},
              {"long_factor", rs.long_factor}};
  }
  return nullptr;
}

json layer_types(const ModelConfig& c) {
  json t = json::array();
  for (int i = 0; i < c.n_layers; ++i) t.push_back(c.window(i) > 0 ? "sliding_attention" : "full_attention");
  return t;
}

}  // namespace

json hf_export_config(const Model& m, bool bf16) {
  const ModelConfig& c = m.config;
  if (!c.rope_freq_factors.empty())
    fail("{}: rope frequency factors from a GGUF (Llama 3.1) cannot be exported to MLX yet", m.path);
  json j = {
      {"hidden_size", c.dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.hidden_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_seq},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tied_embeddings},
      {"hidden_act", "silu"},
      {"attention_bias", c.qkv_bias},
      {"mlp_bias", false},
      {"torch_dtype", bf16 ? "bfloat16" : "float16"},
  };
  if (m.tokenizer->bos() >= 0) j["bos_token_id"] = m.tokenizer->bos();
  if (m.tokenizer->eos() >= 0) j["eos_token_id"] = m.tokenizer->eos();
  if (const json rs = rope_scaling_json(c); !rs.is_null()) j["rope_scaling"] = rs;
  if (c.rot_dim() != c.head_dim) j["partial_rotary_factor"] = static_cast<double>(c.rot_dim()) / c.head_dim;
  const std::string& a = c.arch;
  if (a == "llama" || a == "mistral") {
    j["model_type"] = a;
    j["architectures"] = {a == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"};
    // As the original Mistral config: sliding_window alone. (A layer_types
    // list with no full_attention layer makes mlx-lm's llama.py fail to load.)
    if (c.max_window() > 0) j["sliding_window"] = c.max_window();
  } else if (a == "qwen2" || a == "qwen3") {
    j["model_type"] = a;
    j["architectures"] = {a == "qwen2" ? "Qwen2ForCausalLM" : "Qwen3ForCausalLM"};
    j["use_sliding_window"] = false;
  } else if (a == "phi3") {
    j["model_type"] = "phi3";
    j["architectures"] = {"Phi3ForCausalLM"};
    if (c.rope_scaling.type == RopeScalingType::LongRope)
      j["original_max_position_embeddings"] = c.rope_scaling.original_max_position;
    if (c.max_window() > 0) j["sliding_window"] = c.max_window();
  } else if (a == "gemma3_text" || a == "gemma3") {
    j["model_type"] = "gemma3_text";
    j["architectures"] = {"Gemma3ForCausalLM"};
    j.erase("hidden_act");
    j["hidden_activation"] = "gelu_pytorch_tanh";
    // HF's config class wants an integer; the scale came from one (1/sqrt(q)).
    const double q = 1.0 / (static_cast<double>(c.attention_scale()) * c.attention_scale());
    j["query_pre_attn_scalar"] = std::abs(q - std::round(q)) < 1e-4 * q ? json(std::lround(q)) : json(q);
    j["rope_local_base_freq"] = c.rope_theta_local > 0.0f ? c.rope_theta_local : c.rope_theta;
    j["final_logit_softcapping"] = c.final_softcap > 0.0f ? json(c.final_softcap) : json(nullptr);
    j["attn_logit_softcapping"] = c.attn_softcap > 0.0f ? json(c.attn_softcap) : json(nullptr);
    const int pattern = c.global_layer_period();
    check(pattern > 0, "{}: Gemma 3 sliding-window layers follow no every-N-th-global pattern; mlx-lm cannot load it",
          m.path);
    j["sliding_window"] = std::max(c.max_window(), 1);
    j["sliding_window_pattern"] = pattern;
    j["layer_types"] = layer_types(c);
  } else {
    fail("{}: exporting architecture '{}' is not supported", m.path, a);
  }
  return j;
}

std::vector<std::pair<std::string, std::vector<float>>> hf_export_vectors(const Model& m) {
  const ModelConfig& c = m.config;
  std::vector<std::pair<std::string, std::vector<float>>> out;
  auto norm = [&](std::string name, const std::vector<float>& v) {
    std::vector<float> w = v;
    if (c.norm_offset_one)  // Gemma's HF layout stores multiplier - 1
      for (float& x : w) x -= 1.0f;
    out.emplace_back(std::move(name), std::move(w));
  };
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerWeights& L = m.weights.layers[i];
    const std::string p = fmt::format("model.layers.{}.", i);
    norm(p + "input_layernorm.weight", L.attn_norm);
    if (c.sandwich_norms) {
      norm(p + "post_attention_layernorm.weight", L.post_attn_norm);
      norm(p + "pre_feedforward_layernorm.weight", L.ffn_norm);
      norm(p + "post_feedforward_layernorm.weight", L.post_ffn_norm);
    } else {
      norm(p + "post_attention_layernorm.weight", L.ffn_norm);
    }
    if (c.qk_norm) {
      norm(p + "self_attn.q_norm.weight", L.q_norm);
      norm(p + "self_attn.k_norm.weight", L.k_norm);
    }
    if (c.qkv_bias) {
      out.emplace_back(p + "self_attn.q_proj.bias", L.bq);
      out.emplace_back(p + "self_attn.k_proj.bias", L.bk);
      out.emplace_back(p + "self_attn.v_proj.bias", L.bv);
    }
  }
  norm("model.norm.weight", m.weights.final_norm);
  return out;
}

}  // namespace optiq
