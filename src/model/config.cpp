#include "model/config.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/llama2c.h"

namespace optiq {

namespace {

// Architectures whose forward pass is the plain Llama one (issue: families).
bool is_llama_like(const std::string& arch) { return arch == "llama" || arch == "mistral"; }

RopeScaling rope_scaling_from_json(const nlohmann::json& rs, const std::string& source) {
  RopeScaling out;
  if (rs.is_null()) return out;
  std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
  if (type == "default") return out;
  out.factor = rs.value("factor", 1.0f);
  if (type == "llama3") {
    out.type = RopeScalingType::Llama3;
    out.low_freq_factor = rs.value("low_freq_factor", 1.0f);
    out.high_freq_factor = rs.value("high_freq_factor", 4.0f);
    out.original_max_position = rs.value("original_max_position_embeddings", 8192);
  } else if (type == "linear") {
    out.type = RopeScalingType::Linear;
  } else {
    fail("{}: rope_scaling type '{}' is not supported (supported: default, linear, llama3)", source, type);
  }
  return out;
}

}  // namespace

void ModelConfig::validate(const std::string& source) const {
  check(dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && hidden_dim > 0 &&
            vocab_size > 0,
        "{}: invalid hyper-parameters (dim {}, layers {}, heads {}, kv heads {}, head dim {}, hidden {}, vocab {})",
        source, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size);
  check(n_heads % n_kv_heads == 0, "{}: {} attention heads is not a multiple of {} KV heads", source, n_heads,
        n_kv_heads);
  check(head_dim % 2 == 0, "{}: head dim {} must be even for RoPE", source, head_dim);
  check(dim <= (1 << 20) && n_layers <= 4096 && vocab_size <= (1 << 24) && hidden_dim <= (1 << 22) &&
            n_heads <= 4096,
        "{}: absurd hyper-parameters (dim {}, layers {}, vocab {}, hidden {})", source, dim, n_layers, vocab_size,
        hidden_dim);
}

std::vector<std::string> ModelConfig::quirks() const {
  std::vector<std::string> q;
  if (n_kv_heads != n_heads) q.push_back(fmt::format("grouped-query attention ({} query heads per KV head)", n_heads / n_kv_heads));
  if (tied_embeddings) q.push_back("tied embeddings");
  if (rope_scaling.type == RopeScalingType::Llama3) q.push_back(fmt::format("llama3 rope scaling x{:g}", rope_scaling.factor));
  if (!rope_freq_factors.empty()) q.push_back("rope frequency factors from the file (llama3-style scaling)");
  if (rope_scaling.type == RopeScalingType::Linear) q.push_back(fmt::format("linear rope scaling x{:g}", rope_scaling.factor));
  return q;
}

ModelConfig config_from_hf(const nlohmann::json& j, const std::string& source) {
  ModelConfig c;
  try {
    c.arch = j.value("model_type", std::string("llama"));
    if (!is_llama_like(c.arch))
      fail("{}: model_type '{}' is not supported (supported: llama, mistral)", source, c.arch);
    c.name = j.value("_name_or_path", std::string());
    c.dim = j.at("hidden_size").get<int>();
    c.n_layers = j.at("num_hidden_layers").get<int>();
    c.n_heads = j.at("num_attention_heads").get<int>();
    c.n_kv_heads = j.value("num_key_value_heads", c.n_heads);
    c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? j["head_dim"].get<int>()
                                                                     : (c.n_heads > 0 ? c.dim / c.n_heads : 0);
    c.hidden_dim = j.at("intermediate_size").get<int>();
    c.vocab_size = j.at("vocab_size").get<int>();
    c.max_seq = j.value("max_position_embeddings", 2048);
    c.norm_eps = j.value("rms_norm_eps", 1e-5f);
    c.rope_theta = j.value("rope_theta", 10000.0f);
    c.tied_embeddings = j.value("tie_word_embeddings", false);
    if (j.contains("rope_scaling")) c.rope_scaling = rope_scaling_from_json(j["rope_scaling"], source);
    if (j.value("attention_bias", false)) fail("{}: attention_bias=true is not supported for {}", source, c.arch);
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
      fail("{}: hidden_act '{}' is not supported for {} (expected silu)", source, j["hidden_act"].get<std::string>(), c.arch);
    if (j.contains("sliding_window") && !j["sliding_window"].is_null() &&
        j["sliding_window"].get<int64_t>() < c.max_seq)
      fail("{}: sliding_window {} is not supported yet", source, j["sliding_window"].get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad config.json: {}", source, e.what());
  }
  c.validate(source);
  return c;
}

ModelConfig config_from_gguf(const GgufFile& g) {
  ModelConfig c;
  c.arch = g.get_string("general.architecture");
  if (!is_llama_like(c.arch))
    fail("{}: architecture '{}' is not supported (supported: llama, mistral)", g.path(), c.arch);
  const std::string a = c.arch + ".";
  if (g.has("general.name")) c.name = g.get_string("general.name");
  c.dim = static_cast<int>(g.get_int(a + "embedding_length"));
  c.n_layers = static_cast<int>(g.get_int(a + "block_count"));
  c.n_heads = static_cast<int>(g.get_int(a + "attention.head_count"));
  c.n_kv_heads = static_cast<int>(g.get_int_or(a + "attention.head_count_kv", c.n_heads));
  c.head_dim = static_cast<int>(g.get_int_or(a + "attention.key_length", c.n_heads > 0 ? c.dim / c.n_heads : 0));
  c.hidden_dim = static_cast<int>(g.get_int(a + "feed_forward_length"));
  c.max_seq = static_cast<int>(g.get_int_or(a + "context_length", 2048));
  c.norm_eps = static_cast<float>(g.get_float_or(a + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = static_cast<float>(g.get_float_or(a + "rope.freq_base", 10000.0));
  const TensorView* emb = g.find_tensor("token_embd.weight");
  check(emb != nullptr && emb->shape.size() == 2, "{}: tensor token_embd.weight is missing or not 2-D", g.path());
  c.vocab_size = static_cast<int>(g.get_int_or(a + "vocab_size", emb->shape[0]));
  c.tied_embeddings = g.find_tensor("output.weight") == nullptr;
  if (g.has(a + "rope.scaling.type")) {
    std::string t = g.get_string(a + "rope.scaling.type");
    if (t == "linear") {
      c.rope_scaling.type = RopeScalingType::Linear;
      c.rope_scaling.factor = static_cast<float>(g.get_float_or(a + "rope.scaling.factor", 1.0));
    } else if (t != "none") {
      fail("{}: rope scaling type '{}' is not supported", g.path(), t);
    }
  }
  // Llama 3.1 GGUFs carry their scaled RoPE frequencies as divisors in a
  // rope_freqs tensor; using it directly matches llama.cpp exactly.
  if (const TensorView* rf = g.find_tensor("rope_freqs.weight")) {
    check(rf->dtype == DType::F32 && rf->numel() == c.head_dim / 2, "{}: rope_freqs.weight must be F32 with {} values",
          g.path(), c.head_dim / 2);
    const float* f = static_cast<const float*>(rf->data);
    c.rope_freq_factors.assign(f, f + rf->numel());
  }
  c.validate(g.path());
  return c;
}

ModelConfig config_from_llama2c(const Llama2cHeader& h) {
  ModelConfig c;
  c.arch = "llama";
  c.name = "llama2.c checkpoint";
  c.dim = h.dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = h.n_heads > 0 ? h.dim / h.n_heads : 0;
  c.hidden_dim = h.hidden_dim;
  c.vocab_size = h.vocab_size;
  c.max_seq = h.seq_len;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tied_embeddings = h.shared_classifier;
  c.validate("llama2.c checkpoint");
  return c;
}

}  // namespace optiq
