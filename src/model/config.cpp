#include "model/config.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "formats/llama2c.h"

namespace optiq {

const char* supported_hf_model_types() { return "llama, mistral, qwen2, qwen3, phi3, gemma3_text, gemma3"; }
const char* supported_gguf_architectures() { return "llama, mistral, qwen2, qwen3, phi3, gemma3"; }

int ModelConfig::max_window() const {
  return layer_window.empty() ? 0 : *std::max_element(layer_window.begin(), layer_window.end());
}

int ModelConfig::global_layer_period() const {
  for (int p = 1; p <= n_layers; ++p) {
    bool ok = true;
    for (int i = 0; i < n_layers && ok; ++i) ok = (window(i) == 0) == (i % p == p - 1);
    if (ok) return p;
  }
  return 0;
}

float ModelConfig::attention_scale() const {
  return attn_scale > 0.0f ? attn_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

void ModelConfig::validate(const std::string& source) const {
  check(dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && hidden_dim > 0 &&
            vocab_size > 0,
        "{}: invalid hyper-parameters (dim {}, layers {}, heads {}, kv heads {}, head dim {}, hidden {}, vocab {})",
        source, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size);
  check(n_heads % n_kv_heads == 0, "{}: {} attention heads is not a multiple of {} KV heads", source, n_heads,
        n_kv_heads);
  check(head_dim % 2 == 0, "{}: head dim {} must be even for RoPE", source, head_dim);
  check(rot_dim() % 2 == 0 && rot_dim() <= head_dim, "{}: rotary dims {} must be even and at most the head dim {}",
        source, rot_dim(), head_dim);
  check(dim <= (1 << 20) && n_layers <= kMaxLayers && vocab_size <= (1 << 24) && hidden_dim <= (1 << 22) &&
            n_heads <= 4096,
        "{}: absurd hyper-parameters (dim {}, layers {}, vocab {}, hidden {})", source, dim, n_layers, vocab_size,
        hidden_dim);
  check(layer_window.empty() || static_cast<int>(layer_window.size()) == n_layers,
        "{}: {} sliding-window entries for {} layers", source, layer_window.size(), n_layers);
  for (int w : layer_window) check(w >= 0, "{}: negative sliding window {}", source, w);
  const RopeScaling& rs = rope_scaling;
  if (rs.type == RopeScalingType::LongRope) {
    const size_t half = static_cast<size_t>(rot_dim() / 2);
    check(rs.short_factor.size() == half && rs.long_factor.size() == half,
          "{}: longrope short_factor/long_factor need {} values each (got {} and {})", source, half,
          rs.short_factor.size(), rs.long_factor.size());
  }
  check(std::isfinite(embed_scale) && std::isfinite(attn_softcap) && std::isfinite(final_softcap) &&
            attn_softcap >= 0.0f && final_softcap >= 0.0f,
        "{}: invalid embedding scale or soft-capping values", source);
}

std::vector<std::string> ModelConfig::quirks() const {
  std::vector<std::string> q;
  if (n_kv_heads != n_heads) q.push_back(fmt::format("grouped-query attention ({} query heads per KV head)", n_heads / n_kv_heads));
  if (tied_embeddings) q.push_back("tied embeddings");
  if (rope_scaling.type == RopeScalingType::Llama3) q.push_back(fmt::format("llama3 rope scaling x{:g}", rope_scaling.factor));
  if (!rope_freq_factors.empty()) q.push_back("rope frequency factors from the file (llama3-style scaling)");
  if (rope_scaling.type == RopeScalingType::Linear) q.push_back(fmt::format("linear rope scaling x{:g}", rope_scaling.factor));
  if (rope_scaling.type == RopeScalingType::LongRope)
    q.push_back(fmt::format("longrope scaling (original context {}, attention factor {:.4g})",
                            rope_scaling.original_max_position, rope_scaling.attn_factor));
  if (rot_dim() != head_dim) q.push_back(fmt::format("partial rotary: {} of {} dims per head", rot_dim(), head_dim));
  if (qkv_bias) q.push_back("qkv bias");
  if (qk_norm) q.push_back("q/k norm (RMSNorm per head before RoPE)");
  if (fused_qkv) q.push_back("fused qkv_proj/gate_up_proj");
  if (activation == Activation::GeluTanh) q.push_back("GeGLU MLP (tanh-approximated GELU)");
  if (sandwich_norms) q.push_back("pre- and post-norms around attention and MLP");
  if (norm_offset_one) q.push_back("RMSNorm multiplier (1 + w) (HF stores w; GGUF stores 1 + w)");
  if (embed_scale != 1.0f) q.push_back(fmt::format("embedding scaled by sqrt({}) = {:.6g}", dim, embed_scale));
  if (attn_scale > 0.0f && std::abs(attn_scale * std::sqrt(static_cast<float>(head_dim)) - 1.0f) > 1e-6f)
    q.push_back(fmt::format("attention scale {:.6g}", attn_scale));
  if (attn_softcap > 0.0f) q.push_back(fmt::format("attention logit softcap {:g}", attn_softcap));
  if (final_softcap > 0.0f) q.push_back(fmt::format("logit softcap {:g}", final_softcap));
  const int n_swa = static_cast<int>(std::count_if(layer_window.begin(), layer_window.end(), [](int w) { return w > 0; }));
  if (n_swa > 0) {
    const int w = *std::max_element(layer_window.begin(), layer_window.end());
    q.push_back(fmt::format("sliding window {} on {} of {} layers", w, n_swa, n_layers));
    if (rope_theta_local > 0.0f)
      q.push_back(fmt::format("rope base {:g} on sliding-window layers, {:g} on global ones", rope_theta_local, rope_theta));
  }
  return q;
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
