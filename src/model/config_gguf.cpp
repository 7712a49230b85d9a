// GGUF metadata -> ModelConfig. Where llama.cpp hard-codes a family's
// constant instead of storing it (Gemma 3's layer pattern and local RoPE
// base), the same constant is used here, so that optiq computes what
// llama.cpp computes on the same file.
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/config.h"

namespace optiq {

namespace {

void read_rope_scaling(const GgufFile& g, const std::string& a, ModelConfig& c) {
  if (!g.has(a + "rope.scaling.type")) return;
  const std::string t = g.get_string(a + "rope.scaling.type");
  if (t == "linear") {
    c.rope_scaling.type = RopeScalingType::Linear;
    c.rope_scaling.factor = static_cast<float>(g.get_float_or(a + "rope.scaling.factor", 1.0));
  } else if (t != "none" && !(t == "longrope" && c.arch == "phi3")) {
    fail("{}: {}rope.scaling.type = '{}' is not supported", g.path(), a, t);
  }
}

// Phi-3's longrope: the factors are tensors, chosen by context length.
void read_phi3_rope(const GgufFile& g, const std::string& a, ModelConfig& c) {
  const TensorView* lf = g.find_tensor("rope_factors_long.weight");
  const TensorView* sf = g.find_tensor("rope_factors_short.weight");
  if (!lf && !sf) return;
  check(lf && sf, "{}: rope_factors_long and rope_factors_short must come together", g.path());
  const size_t half = static_cast<size_t>(c.rot_dim() / 2);
  for (const TensorView* t : {lf, sf})
    check(t->dtype == DType::F32 && static_cast<size_t>(t->numel()) == half, "{}: {} must be F32 with {} values",
          g.path(), t->name, half);
  RopeScaling& rs = c.rope_scaling;
  rs.type = RopeScalingType::LongRope;
  rs.long_factor.assign(static_cast<const float*>(lf->data), static_cast<const float*>(lf->data) + half);
  rs.short_factor.assign(static_cast<const float*>(sf->data), static_cast<const float*>(sf->data) + half);
  rs.original_max_position = static_cast<int>(g.get_int_or(a + "rope.scaling.original_context_length", c.max_seq));
  rs.factor = static_cast<float>(c.max_seq) / rs.original_max_position;
  const double s = rs.factor;
  rs.attn_factor = static_cast<float>(g.get_float_or(
      a + "rope.scaling.attn_factor", s <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(s) / std::log(rs.original_max_position))));
}

void read_gemma3(const GgufFile& g, const std::string& a, ModelConfig& c) {
  c.family = "Gemma 3";
  c.activation = Activation::GeluTanh;
  c.qk_norm = true;
  c.sandwich_norms = true;
  c.prefers_bf16 = true;
  c.norm_offset_one = true;  // the HF layout; the file itself holds 1 + w (see ModelConfig)
  c.embed_scale = std::sqrt(static_cast<float>(c.dim));  // llama.cpp: sqrtf(n_embd) in fp32
  // llama.cpp (after gemma_pytorch): 1/sqrt(head_dim), except the 27B's
  // query_pre_attn_scalar of hidden/heads.
  c.attn_scale = c.n_layers == 62 ? 1.0f / std::sqrt(static_cast<float>(c.dim / c.n_heads))
                                  : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  c.final_softcap = static_cast<float>(g.get_float_or(a + "final_logit_softcapping", 0.0));
  if (g.has(a + "attn_logit_softcapping") && g.get_float_or(a + "attn_logit_softcapping", 0.0) != 0.0)
    fail("{}: {}attn_logit_softcapping is set, which llama.cpp's gemma3 ignores; refusing to guess", g.path(), a);
  const int window = static_cast<int>(g.get_int_or(a + "attention.sliding_window", 0));
  if (window > 0) {
    c.layer_window.assign(c.n_layers, window);
    const std::string pk = a + "attention.sliding_window_pattern";
    const GgufValue* pv = g.find_meta(pk);
    if (pv && pv->type == GgufValue::Type::ARRAY) {
      const std::vector<int64_t> is_swa = g.get_int_array(pk);
      check(static_cast<int>(is_swa.size()) == c.n_layers, "{}: {} has {} entries for {} layers", g.path(), pk,
            is_swa.size(), c.n_layers);
      for (int i = 0; i < c.n_layers; ++i)
        if (!is_swa[i]) c.layer_window[i] = 0;
    } else {
      const int64_t pattern = g.get_int_or(pk, 6);  // llama.cpp's default for gemma3
      check(pattern > 0, "{}: {} = {} must be positive", g.path(), pk, pattern);
      for (int i = 0; i < c.n_layers; ++i)
        if (i % pattern == pattern - 1) c.layer_window[i] = 0;
    }
    c.rope_theta_local = static_cast<float>(g.get_float_or(a + "rope.freq_base_swa", 10000.0));
  }
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& g) {
  ModelConfig c;
  c.arch = g.get_string("general.architecture");
  const std::string& arch = c.arch;
  if (arch != "llama" && arch != "mistral" && arch != "qwen2" && arch != "qwen3" && arch != "phi3" && arch != "gemma3")
    fail("{}: architecture '{}' is not supported (supported: {})", g.path(), arch, supported_gguf_architectures());
  const std::string a = c.arch + ".";
  if (g.has("general.name")) c.name = g.get_string("general.name");
  c.dim = static_cast<int>(g.get_int(a + "embedding_length"));
  const int64_t blocks = g.get_int(a + "block_count");
  // Checked before anything is sized by it (validate() comes last): a negative
  // count sized the per-layer window lists (the same fuzz finding as config.json's).
  check(blocks > 0 && blocks <= ModelConfig::kMaxLayers, "{}: {}block_count = {} is not a layer count (1 to {})",
        g.path(), a, blocks, ModelConfig::kMaxLayers);
  c.n_layers = static_cast<int>(blocks);
  c.n_heads = static_cast<int>(g.get_int(a + "attention.head_count"));
  c.n_kv_heads = static_cast<int>(g.get_int_or(a + "attention.head_count_kv", c.n_heads));
  c.head_dim = static_cast<int>(g.get_int_or(a + "attention.key_length", c.n_heads > 0 ? c.dim / c.n_heads : 0));
  const int64_t vlen = g.get_int_or(a + "attention.value_length", c.head_dim);
  check(vlen == c.head_dim, "{}: {}attention.value_length {} differs from key_length {} (not supported)", g.path(), a,
        vlen, c.head_dim);
  c.hidden_dim = static_cast<int>(g.get_int(a + "feed_forward_length"));
  c.max_seq = static_cast<int>(g.get_int_or(a + "context_length", 2048));
  c.norm_eps = static_cast<float>(g.get_float_or(a + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = static_cast<float>(g.get_float_or(a + "rope.freq_base", 10000.0));
  const int64_t rot = g.get_int_or(a + "rope.dimension_count", c.head_dim);
  if (rot != c.head_dim) c.rotary_dim = static_cast<int>(rot);
  const TensorView* emb = g.find_tensor("token_embd.weight");
  check(emb != nullptr && emb->shape.size() == 2, "{}: tensor token_embd.weight is missing or not 2-D", g.path());
  c.vocab_size = static_cast<int>(g.get_int_or(a + "vocab_size", emb->shape[0]));
  c.tied_embeddings = g.find_tensor("output.weight") == nullptr;
  read_rope_scaling(g, a, c);
  // Only llama.cpp's "norm" RoPE families have their q/k rows permuted by the converter.
  c.gguf_interleaved_rope = arch == "llama" || arch == "mistral";
  if (arch == "llama" || arch == "mistral") {
    c.family = arch == "mistral" ? "Mistral" : "Llama";
    if (g.has(a + "attention.sliding_window") && g.get_int_or(a + "attention.sliding_window", 0) > 0)
      fail("{}: {}attention.sliding_window is not supported for {}", g.path(), a, arch);
  } else if (arch == "qwen2") {
    c.family = "Qwen2";
    c.qkv_bias = true;
  } else if (arch == "qwen3") {
    c.family = "Qwen3";
    c.qk_norm = true;
  } else if (arch == "phi3") {
    c.family = "Phi-3";
    c.fused_qkv = true;
    const int64_t w = g.get_int_or(a + "attention.sliding_window", 0);
    if (w > 0 && w < c.max_seq) c.layer_window.assign(c.n_layers, static_cast<int>(w));
    read_phi3_rope(g, a, c);
  } else if (arch == "gemma3") {
    read_gemma3(g, a, c);
  }
  // Llama 3.1 GGUFs carry their scaled RoPE frequencies as divisors in a
  // rope_freqs tensor; using it directly matches llama.cpp exactly.
  if (const TensorView* rf = g.find_tensor("rope_freqs.weight")) {
    check(rf->dtype == DType::F32 && rf->numel() == c.rot_dim() / 2, "{}: rope_freqs.weight must be F32 with {} values",
          g.path(), c.rot_dim() / 2);
    const float* f = static_cast<const float*>(rf->data);
    c.rope_freq_factors.assign(f, f + rf->numel());
  }
  c.validate(g.path());
  for (const TensorView& t : g.tensors())
    if (t.shape.size() == 2) c.gguf_types[t.name] = t.dtype;
  return c;
}

}  // namespace optiq
