// config.json (Hugging Face) -> ModelConfig, one small function per family.
// Every key that changes the computation is either handled or refused with
// an error naming the file, the key and its value: a model never runs with a
// quirk silently ignored.
#include <cmath>
#include <cstdint>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "core/json_number.h"
#include "model/config.h"

namespace optiq {

namespace {

using nlohmann::json;

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

int int_value(const json& j, const char* key, const std::string& source) {
  return json_int(j.at(key), source, key);
}

int int_or(const json& j, const char* key, int def, const std::string& source) {
  return json_int_or(j, key, def, source);
}

// `key` must be absent, null or equal `expected`.
void require_value(const json& j, const char* key, const json& expected, const std::string& source,
                   const std::string& arch) {
  if (present(j, key) && j[key] != expected)
    fail("{}: {} = {} is not supported for {} (optiq handles {})", source, key, j[key].dump(), arch, expected.dump());
}

std::vector<float> float_list(const json& j, const char* key, const std::string& source) {
  check(j.contains(key) && j[key].is_array(), "{}: rope_scaling.{} must be a list of numbers", source, key);
  return j[key].get<std::vector<float>>();
}

RopeScaling rope_scaling_from_json(const json& root, const json& rs, const ModelConfig& c, const std::string& source) {
  RopeScaling out;
  if (rs.is_null()) return out;
  check(rs.is_object(), "{}: rope_scaling must be an object or null", source);
  std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
  if (type == "default") return out;
  out.factor = rs.value("factor", 1.0f);
  if (type == "llama3") {
    out.type = RopeScalingType::Llama3;
    out.low_freq_factor = rs.value("low_freq_factor", 1.0f);
    out.high_freq_factor = rs.value("high_freq_factor", 4.0f);
    out.original_max_position = int_or(rs, "original_max_position_embeddings", 8192, source);
  } else if (type == "linear") {
    out.type = RopeScalingType::Linear;
  } else if (type == "longrope" || type == "su") {
    out.type = RopeScalingType::LongRope;
    out.short_factor = float_list(rs, "short_factor", source);
    out.long_factor = float_list(rs, "long_factor", source);
    out.original_max_position = int_or(root, "original_max_position_embeddings",
                                       int_or(rs, "original_max_position_embeddings", c.max_seq, source), source);
    // HF (and mlx-lm): cos/sin are multiplied by sqrt(1 + ln(s)/ln(orig)),
    // s = max_position / original_max_position, unless the config gives it.
    const double s = static_cast<double>(c.max_seq) / out.original_max_position;
    out.factor = static_cast<float>(s);
    out.attn_factor = present(rs, "attention_factor") ? rs["attention_factor"].get<float>()
                      : s <= 1.0 ? 1.0f
                                 : static_cast<float>(std::sqrt(1.0 + std::log(s) / std::log(out.original_max_position)));
    for (const char* k : {"short_mscale", "long_mscale"})
      if (present(rs, k)) fail("{}: rope_scaling.{} is not supported", source, k);
  } else {
    fail("{}: rope_scaling type '{}' is not supported (supported: default, linear, llama3, longrope/su)", source, type);
  }
  return out;
}

// Keys every family reads the same way.
void read_common(const json& j, ModelConfig& c, const std::string& source) {
  c.name = j.value("_name_or_path", std::string());
  c.dim = int_value(j, "hidden_size", source);
  c.n_layers = int_value(j, "num_hidden_layers", source);
  // Checked now, not only in validate(): the family readers size per-layer lists by it.
  check(c.n_layers > 0 && c.n_layers <= ModelConfig::kMaxLayers, "{}: num_hidden_layers = {} is not a layer count (1 to {})",
        source, c.n_layers, ModelConfig::kMaxLayers);
  c.n_heads = int_value(j, "num_attention_heads", source);
  c.n_kv_heads = int_or(j, "num_key_value_heads", c.n_heads, source);
  c.head_dim = int_or(j, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0, source);
  c.hidden_dim = int_value(j, "intermediate_size", source);
  c.vocab_size = int_value(j, "vocab_size", source);
  c.max_seq = int_or(j, "max_position_embeddings", 2048, source);
  c.norm_eps = j.value("rms_norm_eps", 1e-5f);
  c.rope_theta = j.value("rope_theta", 10000.0f);
  c.tied_embeddings = j.value("tie_word_embeddings", false);
  // transformers >= 5 nests the RoPE base and scaling under rope_parameters.
  if (present(j, "rope_parameters")) {
    const json& rp = j["rope_parameters"];
    check(rp.is_object(), "{}: rope_parameters must be an object", source);
    c.rope_theta = rp.value("rope_theta", c.rope_theta);
    c.rope_scaling = rope_scaling_from_json(j, rp, c, source);
  } else if (present(j, "rope_scaling")) {
    c.rope_scaling = rope_scaling_from_json(j, j["rope_scaling"], c, source);
  }
  require_value(j, "mlp_bias", false, source, c.arch);
  require_value(j, "attn_logit_softcapping", nullptr, source, c.arch);
  require_value(j, "final_logit_softcapping", nullptr, source, c.arch);
  if (present(j, "partial_rotary_factor")) {
    const double f = j["partial_rotary_factor"].get<double>();
    const double rd = f * c.head_dim;
    check(f > 0.0 && f <= 1.0 && std::abs(rd - std::round(rd)) < 1e-9,
          "{}: partial_rotary_factor = {} does not give a whole number of the {} head dims", source, f, c.head_dim);
    if (f != 1.0) c.rotary_dim = static_cast<int>(std::round(rd));
  }
}

void require_silu(const json& j, const char* key, const std::string& source, const std::string& arch) {
  if (present(j, key) && j[key] != "silu")
    fail("{}: {} = '{}' is not supported for {} (expected silu)", source, key, j[key].get<std::string>(), arch);
}

// Windows per layer from `layer_types` (newer configs) or one window for all.
std::vector<int> windows_from(const json& j, int n_layers, int window, const std::string& source) {
  std::vector<int> w(n_layers, window);
  if (!present(j, "layer_types")) return w;
  const json& lt = j["layer_types"];
  check(lt.is_array() && static_cast<int>(lt.size()) == n_layers, "{}: layer_types must list {} layers", source,
        n_layers);
  for (int i = 0; i < n_layers; ++i) {
    const std::string t = lt[i].get<std::string>();
    if (t == "full_attention") w[i] = 0;
    else if (t != "sliding_attention")
      fail("{}: layer_types[{}] = '{}' is not supported (full_attention or sliding_attention)", source, i, t);
  }
  return w;
}

// Llama and Mistral: the plain architecture, Mistral with an optional window.
void read_llama(const json& j, ModelConfig& c, const std::string& source) {
  c.family = c.arch == "mistral" ? "Mistral" : "Llama";
  read_common(j, c, source);
  require_value(j, "attention_bias", false, source, c.arch);
  require_silu(j, "hidden_act", source, c.arch);
  if (present(j, "sliding_window")) {
    const int64_t w = json_integer(j["sliding_window"], source, "sliding_window", INT64_MIN, INT64_MAX);
    if (w < c.max_seq) {
      check(w > 0, "{}: sliding_window = {} is not a positive window", source, w);
      c.layer_window = windows_from(j, c.n_layers, static_cast<int>(w), source);
    }
  }
}

// Qwen2/2.5: q/k/v biases. Qwen3: per-head q/k RMSNorm, no bias.
void read_qwen(const json& j, ModelConfig& c, const std::string& source) {
  read_common(j, c, source);
  require_silu(j, "hidden_act", source, c.arch);
  if (c.arch == "qwen2") {
    c.family = "Qwen2";
    c.qkv_bias = true;
  } else {
    c.family = "Qwen3";
    c.qk_norm = true;
    c.qkv_bias = j.value("attention_bias", false);
  }
  // Qwen configs carry a sliding_window that only applies when enabled.
  if (j.value("use_sliding_window", false))
    fail("{}: use_sliding_window = true is not supported for {} (max_window_layers layering)", source, c.arch);
}

void read_phi3(const json& j, ModelConfig& c, const std::string& source) {
  c.family = "Phi-3";
  read_common(j, c, source);
  require_silu(j, "hidden_act", source, c.arch);
  require_value(j, "attention_bias", false, source, c.arch);
  c.fused_qkv = true;
  if (present(j, "sliding_window")) {
    const int64_t w = json_integer(j["sliding_window"], source, "sliding_window", INT64_MIN, INT64_MAX);
    if (w > 0 && w < c.max_seq) c.layer_window = windows_from(j, c.n_layers, static_cast<int>(w), source);
  }
}

void read_gemma3(const json& j, ModelConfig& c, const std::string& source) {
  c.family = "Gemma 3";
  // Gemma defaults (transformers' Gemma3TextConfig) where the file is silent.
  json d = j;
  auto def = [&](const char* k, json v) { if (!present(d, k)) d[k] = std::move(v); };
  def("head_dim", 256);
  def("rms_norm_eps", 1e-6);
  def("rope_theta", 1000000.0);
  def("max_position_embeddings", 131072);
  def("tie_word_embeddings", true);
  const json softcaps = {{"attn", d.value("attn_logit_softcapping", json())}, {"final", d.value("final_logit_softcapping", json())}};
  d.erase("attn_logit_softcapping");
  d.erase("final_logit_softcapping");
  // transformers >= 5: rope_parameters per layer type.
  if (present(d, "rope_parameters") && d["rope_parameters"].contains("full_attention")) {
    const json rp = d["rope_parameters"];
    d["rope_parameters"] = rp["full_attention"];
    if (rp.contains("sliding_attention")) {
      const json& local = rp["sliding_attention"];
      if (local.value("rope_type", std::string("default")) != "default")
        fail("{}: rope_parameters.sliding_attention.rope_type = '{}' is not supported", source,
             local.value("rope_type", std::string()));
      d["rope_local_base_freq"] = local.value("rope_theta", 10000.0);
    }
  }
  read_common(d, c, source);
  const std::string act = d.value("hidden_activation", d.value("hidden_act", std::string("gelu_pytorch_tanh")));
  if (act != "gelu_pytorch_tanh" && act != "gelu_tanh")
    fail("{}: hidden_activation = '{}' is not supported for {} (expected gelu_pytorch_tanh)", source, act, c.arch);
  require_value(d, "attention_bias", false, source, c.arch);
  require_value(d, "use_bidirectional_attention", false, source, c.arch);
  c.activation = Activation::GeluTanh;
  c.qk_norm = true;
  c.sandwich_norms = true;
  c.prefers_bf16 = true;
  c.norm_offset_one = true;
  // HF and mlx-lm round sqrt(hidden_size) to bfloat16 before scaling.
  c.embed_scale = bf16_to_f32(f32_to_bf16(std::sqrt(static_cast<float>(c.dim))));
  auto num = [&](const char* k, double def) { return present(d, k) ? d[k].get<double>() : def; };
  c.attn_scale = static_cast<float>(1.0 / std::sqrt(num("query_pre_attn_scalar", 256.0)));
  if (!softcaps["attn"].is_null()) c.attn_softcap = softcaps["attn"].get<float>();
  if (!softcaps["final"].is_null()) c.final_softcap = softcaps["final"].get<float>();
  c.rope_theta_local = static_cast<float>(num("rope_local_base_freq", 10000.0));
  const int window = int_or(d, "sliding_window", 4096, source);
  check(window > 0, "{}: sliding_window = {} is not a positive window", source, window);
  if (present(d, "layer_types")) {
    c.layer_window = windows_from(d, c.n_layers, window, source);
  } else {
    const int pattern = int_or(d, "sliding_window_pattern", 6, source);
    check(pattern > 0, "{}: sliding_window_pattern = {} must be positive", source, pattern);
    c.layer_window.assign(c.n_layers, window);
    for (int i = 0; i < c.n_layers; ++i)
      if ((i + 1) % pattern == 0) c.layer_window[i] = 0;  // every pattern-th layer is global
  }
  // (A window wider than the context masks nothing, but the layer stays
  // local: it keeps its own RoPE base.)
  if (c.rope_scaling.type != RopeScalingType::None && c.rope_scaling.type != RopeScalingType::Linear)
    fail("{}: rope_scaling = {} is not supported for {} (linear only)", source,
         (present(d, "rope_parameters") ? d["rope_parameters"] : d["rope_scaling"]).dump(), c.arch);
}

}  // namespace

ModelConfig config_from_hf(const json& root, const std::string& source) {
  ModelConfig c;
  try {
    c.arch = root.value("model_type", std::string("llama"));
    const json* j = &root;
    // Multimodal Gemma 3 checkpoints nest the language model's config.
    if (c.arch == "gemma3") {
      check(root.contains("text_config") && root["text_config"].is_object(),
            "{}: model_type gemma3 without a text_config", source);
      j = &root["text_config"];
    }
    if (c.arch == "llama" || c.arch == "mistral") read_llama(*j, c, source);
    else if (c.arch == "qwen2" || c.arch == "qwen3") read_qwen(*j, c, source);
    else if (c.arch == "phi3") read_phi3(*j, c, source);
    else if (c.arch == "gemma3_text" || c.arch == "gemma3") read_gemma3(*j, c, source);
    else fail("{}: model_type '{}' is not supported (supported: {})", source, c.arch, supported_hf_model_types());
    if (c.arch == "gemma3") c.arch = "gemma3_text";
  } catch (const json::exception& e) {
    fail("{}: bad config.json: {}", source, e.what());
  }
  c.validate(source);
  return c;
}

}  // namespace optiq
